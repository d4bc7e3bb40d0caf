//! TLS test support (feature `tls`): a test-time PKI made with `rcgen` (no
//! openssl needed) and a `redis-server` with a TLS port, an ACL file and a
//! plain admin port for the default user.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

/// The limiter's ACL user and password.
pub const USER: &str = "limiter";
pub const PASSWORD: &str = "s3cret-limiter";

/// The minimal ACL rules of a limiter user whose key prefix is `rl`: its
/// keys only, no channels, and exactly the commands the limiter sends
/// (`EVALSHA`, `EVALSHA_RO`, `SCRIPT LOAD`, `DEL`) and those its scripts
/// run. (`AUTH` needs no rule; on Redis 7.2 and later, add
/// `+client|setinfo`, which redis-rs sends on connect: [`limiter_acl`].)
pub const LIMITER_ACL: &str = "~rl:* resetchannels -@all +evalsha +evalsha_ro +script|load \
     +del +time +get +set +pexpire +zadd +zcard +zrange +zrangebyscore \
     +zremrangebyscore";

/// [`LIMITER_ACL`] for the installed server: with `+client|setinfo` from
/// Redis 7.2 on (7.0 has no such subcommand, and refuses the rule).
pub fn limiter_acl() -> String {
    let out = Command::new(super::redis_server_binary())
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let version: Vec<u32> = text
        .split("v=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("0")
        .split('.')
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    if version.as_slice() >= [7, 2].as_slice() {
        format!("{LIMITER_ACL} +client|setinfo")
    } else {
        LIMITER_ACL.to_owned()
    }
}

/// A CA, a server certificate for `127.0.0.1`/`localhost` and a client
/// certificate, all PEM files in a directory of their own.
pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl Pki {
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tower-redis-ratelimit test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();

        let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                    .unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf("redis", ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert, client_key) = leaf("limiter", ExtendedKeyUsagePurpose::ClientAuth);
        let pki = Pki {
            dir: dir.to_owned(),
            ca_pem: ca.pem(),
            client_cert_pem: client_cert,
            client_key_pem: client_key,
        };
        for (file, text) in [
            ("ca.crt", pki.ca_pem.as_str()),
            ("server.crt", &server_cert),
            ("server.key", &server_key),
            ("client.crt", &pki.client_cert_pem),
            ("client.key", &pki.client_key_pem),
        ] {
            std::fs::write(dir.join(file), text).unwrap();
        }
        pki
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

/// A `redis-server` with a TLS port (`tls_port`), the limiter's ACL user,
/// and a plain port (`admin_port`) for the default user; killed on drop.
pub struct TlsRedis {
    child: Child,
    pub tls_port: u16,
    pub admin_port: u16,
    pub pki: Pki,
    dir: PathBuf,
}

impl TlsRedis {
    /// Starts one; `client_certs`: whether clients must present a
    /// certificate signed by the CA (`tls-auth-clients yes`).
    pub fn start(client_certs: bool) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "trr-tls-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let pki = Pki::new(&dir);
        let acl = format!(
            "user default on nopass ~* &* +@all\nuser {USER} on >{PASSWORD} {}\n",
            limiter_acl()
        );
        std::fs::write(dir.join("users.acl"), acl).unwrap();
        for _ in 0..20 {
            let (tls_port, admin_port) = (super::free_port(), super::free_port());
            let log = std::fs::File::create(dir.join("redis.log")).unwrap();
            let p = |f: &str| pki.path(f).to_str().unwrap().to_owned();
            let child = Command::new(super::redis_server_binary())
                .args(["--port", &admin_port.to_string()])
                .args(["--tls-port", &tls_port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--tls-cert-file", &p("server.crt")])
                .args(["--tls-key-file", &p("server.key")])
                .args(["--tls-ca-cert-file", &p("ca.crt")])
                .args([
                    "--tls-auth-clients",
                    if client_certs { "yes" } else { "no" },
                ])
                .args(["--aclfile", dir.join("users.acl").to_str().unwrap()])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .args(["--dir", dir.to_str().unwrap()])
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn redis-server");
            let mut child = child;
            if wait_ready(&mut child, admin_port, &dir) {
                return TlsRedis {
                    child,
                    tls_port,
                    admin_port,
                    pki,
                    dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start redis-server with TLS on free ports after 20 attempts");
    }

    /// `rediss://user:password@127.0.0.1:<tls port>/`.
    pub fn url(&self, user: &str, password: &str) -> String {
        format!("rediss://{user}:{password}@127.0.0.1:{}/", self.tls_port)
    }

    /// A plain connection as the default user, on the admin port.
    pub fn admin(&self) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.admin_port))
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// The commands and keys the ACL refused since the start (`ACL LOG`),
    /// as `<reason> <object> <username>` lines.
    pub fn acl_denials(&self) -> Vec<String> {
        let log: Vec<redis::Value> = redis::cmd("ACL")
            .arg("LOG")
            .query(&mut self.admin())
            .unwrap();
        log.into_iter()
            .map(|entry| {
                let map: std::collections::HashMap<String, redis::Value> =
                    redis::FromRedisValue::from_redis_value(entry).unwrap();
                let text = |k: &str| match map.get(k) {
                    Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    other => format!("{other:?}"),
                };
                format!("{} {} {}", text("reason"), text("object"), text("username"))
            })
            .collect()
    }
}

/// Whether our server answers on the admin port (false: it exited, a
/// port was taken).
fn wait_ready(child: &mut Child, admin_port: u16, dir: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = child.id().to_string();
    let url = format!("redis://127.0.0.1:{}/", admin_port);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(mut conn) = redis::Client::open(url.as_str()).unwrap().get_connection()
            && let Ok(info) = redis::cmd("INFO").arg("server").query::<String>(&mut conn)
            && info
                .lines()
                .find_map(|l| l.strip_prefix("process_id:"))
                .is_some_and(|p| p.trim() == pid)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
    panic!("redis-server with TLS did not start:\n{log}");
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
