//! A primary/replica deployment watched by Redis Sentinel (feature
//! `sentinel`): the sentinels are asked where the primary is, and the
//! commands go there through a `ConnectionManager`.
//!
//! The primary is looked up again, in the background:
//! - when a call fails with a connection error, or `READONLY` / `MASTERDOWN`
//!   (the node is no longer the primary);
//! - at most every [`REFRESH`] while calls are made, so a failover that
//!   raised no error here is followed too.
//!
//! Requests never wait for a lookup longer than the layer's deadline: the
//! lookup is a task of its own, and a request with no primary known yet
//! waits for the first answer (bounded by the deadline). A failed lookup is
//! remembered as the backend's last error (so it shows in the logs).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ErrorKind, RedisError};
use redis::{RedisResult, ServerErrorKind};
use tokio::sync::watch;

use super::last_error::LastError;
use super::redact::redact_url;

/// How often, at most, the sentinels are asked while calls are made.
pub(super) const REFRESH: Duration = Duration::from_secs(1);

/// After a failed call, the sentinels are asked again at most this often.
const RETRY: Duration = Duration::from_millis(100);

/// What a sentinel deployment needs to find and reach its primary.
pub(super) struct Sentinel {
    /// The sentinels as given, passwords redacted: only shown by `Debug`.
    pub shown: Vec<String>,
    /// The name of the primary, as the sentinels know it.
    pub master: String,
    shared: Arc<Shared>,
}

struct Shared {
    sentinels: Vec<Client>,
    master: String,
    /// The primary's URL settings (TLS, user, password, database); its
    /// address is the one the sentinels give.
    template: ConnectionInfo,
    #[cfg(feature = "tls")]
    certs: Option<redis::TlsCertificates>,
    config: ConnectionManagerConfig,
    /// For the questions to the sentinels.
    lookup_config: AsyncConnectionConfig,
    primary: watch::Sender<Option<Primary>>,
    /// Whether a lookup task is running.
    looking: AtomicBool,
    /// When the last lookup ended (ms since `epoch`).
    looked_at: AtomicU64,
    epoch: Instant,
    last_error: Arc<LastError>,
}

#[derive(Clone)]
struct Primary {
    host: String,
    port: u16,
    conn: ConnectionManager,
}

/// The settings of [`Sentinel::new`].
pub(super) struct Settings<'a> {
    pub sentinels: &'a [String],
    pub master: &'a str,
    pub master_url: &'a str,
    pub connect_timeout: Duration,
    pub config: ConnectionManagerConfig,
    #[cfg(feature = "tls")]
    pub certs: Option<redis::TlsCertificates>,
}

impl Sentinel {
    /// Checks the URLs; connects nothing. Failed lookups are recorded in
    /// `last_error`.
    pub fn new(settings: Settings<'_>, last_error: Arc<LastError>) -> RedisResult<Self> {
        #[cfg(feature = "tls")]
        let client = |url: &str| {
            let tls = url.starts_with("rediss://") || url.starts_with("valkeys://");
            super::tls::client(url, settings.certs.as_ref().filter(|_| tls))
        };
        #[cfg(not(feature = "tls"))]
        let client = |url: &str| Client::open(url);
        let sentinels = settings
            .sentinels
            .iter()
            .map(|url| client(url))
            .collect::<RedisResult<Vec<_>>>()?;
        let template: ConnectionInfo =
            redis::IntoConnectionInfo::into_connection_info(settings.master_url)?;
        let lookup_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(settings.connect_timeout));
        Ok(Self {
            shown: settings
                .sentinels
                .iter()
                .map(|u| redact_url(u).into_owned())
                .collect(),
            master: settings.master.to_owned(),
            shared: Arc::new(Shared {
                sentinels,
                master: settings.master.to_owned(),
                template,
                #[cfg(feature = "tls")]
                certs: settings.certs,
                config: settings.config,
                lookup_config,
                primary: watch::Sender::new(None),
                looking: AtomicBool::new(false),
                looked_at: AtomicU64::new(0),
                epoch: Instant::now(),
                last_error,
            }),
        })
    }

    /// The connection to the primary. Starts a lookup if none was made for
    /// [`REFRESH`]; waits for the first one if no primary is known yet (the
    /// layer's deadline bounds the wait).
    pub async fn connection(&self) -> ConnectionManager {
        let mut rx = self.shared.primary.subscribe();
        if let Some(primary) = rx.borrow().as_ref() {
            self.look_up_after(REFRESH);
            return primary.conn.clone();
        }
        self.look_up_after(Duration::ZERO);
        let primary = rx
            .wait_for(Option::is_some)
            .await
            .expect("the sender lives in the backend");
        primary.as_ref().expect("waited for Some").conn.clone()
    }

    /// Called with every failed call: a lost or refused connection, or a
    /// node that is no longer the primary, starts a lookup at once.
    pub fn failed(&self, error: &RedisError) {
        let moved = matches!(
            error.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        );
        if moved
            || error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_timeout()
        {
            self.look_up_after(RETRY);
        }
    }

    /// Starts a lookup task unless one is running or the last one ended
    /// less than `age` ago.
    fn look_up_after(&self, age: Duration) {
        let shared = &self.shared;
        let now = shared.epoch.elapsed().as_millis() as u64;
        let fresh =
            now.saturating_sub(shared.looked_at.load(Ordering::Relaxed)) < age.as_millis() as u64;
        if fresh || shared.looking.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.shared);
        tokio::spawn(look_up(weak));
    }
}

/// Asks the sentinels until one answers (with back-off, while no primary
/// is known) or once (when one is); switches to the primary they name.
async fn look_up(shared: Weak<Shared>) {
    let mut delay = Duration::from_millis(50);
    loop {
        let Some(s) = shared.upgrade() else { return };
        let result = s.ask().await;
        let done = match result {
            Ok((host, port)) => {
                s.switch(host, port);
                true
            }
            Err(error) => {
                s.last_error.record(&format!(
                    "no sentinel named the primary of `{}`: {error}",
                    s.master
                ));
                tracing::debug!(%error, master = %s.master, "redis sentinel lookup failed");
                s.primary.borrow().is_some()
            }
        };
        if done {
            let now = s.epoch.elapsed().as_millis() as u64;
            s.looked_at.store(now, Ordering::Relaxed);
            s.looking.store(false, Ordering::Release);
            return;
        }
        drop(s);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

impl Shared {
    /// The primary's address, from the first sentinel that knows it.
    async fn ask(&self) -> RedisResult<(String, u16)> {
        let mut last = None;
        for sentinel in &self.sentinels {
            let answer = async {
                let mut conn = sentinel
                    .get_multiplexed_async_connection_with_config(&self.lookup_config)
                    .await?;
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(&self.master)
                    .query_async::<Option<(String, u16)>>(&mut conn)
                    .await
            };
            match answer.await {
                Ok(Some(addr)) => return Ok(addr),
                Ok(None) => {
                    last = Some(RedisError::from((
                        ErrorKind::Client,
                        "the sentinel does not know this master name",
                    )));
                }
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| RedisError::from((ErrorKind::Client, "no sentinel given"))))
    }

    /// Uses the primary at `host:port` from now on, unless it already does.
    fn switch(&self, host: String, port: u16) {
        let same = self
            .primary
            .borrow()
            .as_ref()
            .is_some_and(|p| p.host == host && p.port == port);
        if same {
            return;
        }
        match self
            .client(&host, port)
            .and_then(|client| ConnectionManager::new_lazy_with_config(client, self.config.clone()))
        {
            Ok(conn) => {
                tracing::info!(master = %self.master, %host, port, "redis sentinel: using this primary");
                self.primary
                    .send_replace(Some(Primary { host, port, conn }));
            }
            Err(error) => self.last_error.record(&format!(
                "the primary of `{}` at {host}:{port}: {error}",
                self.master
            )),
        }
    }

    /// A client for the primary at `host:port`, with the template's settings.
    fn client(&self, host: &str, port: u16) -> RedisResult<Client> {
        let addr = match self.template.addr() {
            ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        let info = self.template.clone().set_addr(addr);
        #[cfg(feature = "tls")]
        if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
            return super::tls::client(info, self.certs.as_ref());
        }
        Client::open(info)
    }
}
