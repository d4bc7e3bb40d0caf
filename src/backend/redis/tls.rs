//! TLS for `rediss://` connections (feature `tls`): a private CA trusted
//! next to the system's roots, and a client certificate for mutual TLS.
//!
//! redis-rs (rustls) trusts either the system's roots or the root
//! certificates it is given; to trust a private CA *in addition* to the
//! system's roots, both go in the PEM handed to it.

use redis::{Client, ClientTlsConfig, IntoConnectionInfo, RedisResult, TlsCertificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ConfigError;

/// The TLS settings of a builder: PEM text, checked by [`Tls::certificates`].
#[derive(Clone, Default)]
pub(super) struct Tls {
    /// Certificates of the CA(s) to trust, PEM.
    pub ca: Option<Vec<u8>>,
    /// The client's certificate chain and private key, PEM.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

/// Never shows a key: only which settings are present.
impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("ca", &self.ca.as_ref().map(|_| "<pem>"))
            .field("client", &self.client.as_ref().map(|_| "<pem>"))
            .finish()
    }
}

impl Tls {
    /// Whether anything was set.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }

    /// The certificates for redis-rs (`None`: nothing set, the system's
    /// roots only), after checking that the PEM text parses.
    pub fn certificates(&self) -> Result<Option<TlsCertificates>, ConfigError> {
        if !self.is_set() {
            return Ok(None);
        }
        let root_cert = match &self.ca {
            Some(ca) => {
                check_ca(ca)?;
                let mut pem = ca.clone();
                pem.push(b'\n');
                // The system's roots, so that the CA is trusted in addition to them.
                for root in rustls_native_certs::load_native_certs().certs {
                    pem.extend_from_slice(&to_pem(&root));
                }
                Some(pem)
            }
            None => None,
        };
        let client_tls = match &self.client {
            Some((cert, key)) => {
                check_client_cert(cert)?;
                check_client_key(key)?;
                Some(ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                })
            }
            None => None,
        };
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

/// Checks the PEM text of CA certificates (to trust).
pub(crate) fn check_ca(pem: &[u8]) -> Result<(), ConfigError> {
    parse_certs(pem, "CA certificate").map(drop)
}

/// Checks the PEM text of a client certificate chain (mutual TLS).
pub(crate) fn check_client_cert(pem: &[u8]) -> Result<(), ConfigError> {
    parse_certs(pem, "client certificate").map(drop)
}

/// Checks the PEM text of a client's private key (mutual TLS).
pub(crate) fn check_client_key(pem: &[u8]) -> Result<(), ConfigError> {
    PrivateKeyDer::from_pem_slice(pem).map(drop).map_err(|e| {
        ConfigError::Tls(format!(
            "client key: no usable private key in the PEM ({e})"
        ))
    })
}

/// A client for `info`, with `certs` if given.
pub(super) fn client<C: IntoConnectionInfo>(
    info: C,
    certs: Option<&TlsCertificates>,
) -> RedisResult<Client> {
    match certs {
        Some(certs) => Client::build_with_tls(info, certs.clone()),
        None => Client::open(info),
    }
}

/// The certificates in `pem`: at least one, every one parsing.
fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::Tls(format!("{what}: invalid PEM ({e})")))?;
    if certs.is_empty() {
        return Err(ConfigError::Tls(format!(
            "{what}: no `BEGIN CERTIFICATE` block in the PEM"
        )));
    }
    Ok(certs)
}

/// A DER certificate as a PEM block.
fn to_pem(der: &[u8]) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]);
            } else {
                b64.push(b'=');
            }
        }
    }
    let mut pem = b"-----BEGIN CERTIFICATE-----\n".to_vec();
    for line in b64.chunks(64) {
        pem.extend_from_slice(line);
        pem.push(b'\n');
    }
    pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_encoding_round_trips() {
        for len in 0..70 {
            let der: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let pem = to_pem(&der);
            let back = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            if len == 0 {
                continue;
            }
            assert_eq!(back.len(), 1, "{len}");
            assert_eq!(back[0].as_ref(), der.as_slice(), "{len}");
        }
    }

    #[test]
    fn bad_pem_is_a_config_error() {
        let bad = Tls {
            ca: Some(b"not a certificate".to_vec()),
            client: None,
        };
        let err = bad.certificates().unwrap_err();
        assert!(err.to_string().contains("CA certificate"), "{err}");
        let bad = Tls {
            ca: None,
            client: Some((b"x".to_vec(), b"y".to_vec())),
        };
        let err = bad.certificates().unwrap_err();
        assert!(err.to_string().contains("client certificate"), "{err}");
        assert!(Tls::default().certificates().unwrap().is_none());
    }
}
