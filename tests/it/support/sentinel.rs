//! A throwaway Redis Sentinel deployment (feature `sentinel`): a primary, a
//! replica and one sentinel (quorum 1, `down-after-milliseconds` 1000), on
//! free loopback ports; every process killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::RedisServer;

/// The name the sentinel knows the primary by.
pub const MASTER: &str = "mymaster";

pub struct SentinelSetup {
    pub primary: RedisServer,
    pub replica: RedisServer,
    sentinel: Child,
    pub sentinel_port: u16,
    dir: PathBuf,
}

impl SentinelSetup {
    /// Starts the three processes and waits until the sentinel monitors the
    /// primary and knows its replica, in sync.
    pub fn start() -> Self {
        let primary = RedisServer::start();
        let replica = RedisServer::start();
        let _: () = redis::cmd("REPLICAOF")
            .arg("127.0.0.1")
            .arg(primary.port)
            .query(&mut replica.conn())
            .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "trr-sentinel-{}-{}",
            std::process::id(),
            primary.port
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for _ in 0..20 {
            let port = super::free_port();
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {MASTER} 127.0.0.1 {primary} 1\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 3000\n\
                     sentinel parallel-syncs {MASTER} 1\n",
                    dir = dir.display(),
                    primary = primary.port,
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.join("sentinel.log")).unwrap();
            let mut child = Command::new(super::redis_server_binary())
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn redis-server --sentinel");
            if wait_monitoring(&mut child, port, &dir) {
                return SentinelSetup {
                    primary,
                    replica,
                    sentinel: child,
                    sentinel_port: port,
                    dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start a sentinel on a free port after 20 attempts");
    }

    /// `redis://127.0.0.1:<sentinel port>`.
    pub fn sentinel_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.sentinel_port)
    }

    /// The primary's port as the sentinel names it now.
    pub fn master_port(&self) -> Option<u16> {
        master_addr(self.sentinel_port).map(|(_, port)| port)
    }

    /// The sentinel's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sentinel.log")).unwrap_or_default()
    }
}

fn master_addr(port: u16) -> Option<(String, u16)> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(1))
        .ok()?;
    redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(MASTER)
        .query::<Option<(String, u16)>>(&mut conn)
        .ok()?
}

/// Whether the sentinel on `port` answers, names the primary and lists one
/// replica that is up (false: it exited, the port was taken).
fn wait_monitoring(child: &mut Child, port: u16, dir: &std::path::Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if master_addr(port).is_some() {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
            if let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(1)) {
                let replicas: Vec<std::collections::HashMap<String, String>> =
                    redis::cmd("SENTINEL")
                        .arg("REPLICAS")
                        .arg(MASTER)
                        .query(&mut conn)
                        .unwrap_or_default();
                let up = replicas.iter().any(|r| {
                    r.get("flags").is_some_and(|f| f == "slave")
                        && r.get("master-link-status").is_some_and(|s| s == "ok")
                });
                if up {
                    return true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(dir.join("sentinel.log")).unwrap_or_default();
    panic!("the sentinel did not see the primary and its replica in 20 s:\n{log}");
}

impl Drop for SentinelSetup {
    fn drop(&mut self) {
        let _ = self.sentinel.kill();
        let _ = self.sentinel.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
