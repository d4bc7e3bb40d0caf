//! A throwaway Redis Cluster on free loopback ports: 3 masters
//! ([`RedisCluster::start`]), or 3 masters and 3 replicas
//! ([`RedisCluster::start_with_replicas`]) for failover tests.
//!
//! `redis-server --cluster-enabled yes` processes (`cluster-node-timeout`
//! 2000 ms; with replicas, `cluster-require-full-coverage no`), joined with `redis-cli --cluster create ... --cluster-replicas
//! N --cluster-yes`, ready once every node reports `cluster_state:ok` (and
//! every replica is in sync with its master). Killed on drop.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct RedisCluster {
    /// `None` once killed.
    nodes: Vec<Option<Child>>,
    pub ports: Vec<u16>,
    dir: PathBuf,
}

fn free_port() -> u16 {
    // Cluster nodes also listen on port + 10000 (the bus port).
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn binary(name: &str) -> String {
    match Command::new(name).arg("--version").output() {
        Ok(out) if out.status.success() => name.to_owned(),
        _ => panic!(
            "`{name}` was not found: the cluster tests need a real Redis.\n\
             Install it with `sudo apt-get install redis-server redis-tools`."
        ),
    }
}

impl RedisCluster {
    /// Starts three masters and joins them into a cluster.
    pub fn start() -> Self {
        Self::start_nodes(0)
    }

    /// Starts three masters and three replicas (one per master) and joins
    /// them into a cluster.
    pub fn start_with_replicas() -> Self {
        Self::start_nodes(1)
    }

    fn start_nodes(replicas: usize) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "trr-cluster-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let server = binary("redis-server");
        let cli = binary("redis-cli");
        let mut cluster = Self {
            nodes: Vec::new(),
            ports: Vec::new(),
            dir,
        };
        for i in 0..3 * (1 + replicas) {
            let port = free_port();
            let node_dir = cluster.dir.join(i.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let log = std::fs::File::create(node_dir.join("redis.log")).unwrap();
            let child = Command::new(&server)
                .args(["--port", &port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "2000"])
                // With replicas (failover tests): the healthy masters keep
                // serving their slots while a dead master's are uncovered
                // (with the default, `yes`, every node refuses every
                // command, CLUSTERDOWN, until the failover completes).
                .args([
                    "--cluster-require-full-coverage",
                    if replicas > 0 { "no" } else { "yes" },
                ])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .args(["--dir", node_dir.to_str().unwrap()])
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn redis-server");
            cluster.nodes.push(Some(child));
            cluster.ports.push(port);
        }
        for &port in &cluster.ports {
            cluster.wait(port, |info| !info.is_empty(), "PING");
        }
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new(&cli)
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for &port in &cluster.ports {
            cluster.wait(
                port,
                |info| info.contains("cluster_state:ok"),
                "cluster_state:ok",
            );
        }
        // A replica fails over only once it has synced with its master.
        for &port in &cluster.ports {
            cluster.wait_info(port, "replication", |info| {
                info.contains("role:master") || info.contains("master_link_status:up")
            });
        }
        cluster
    }

    fn wait_info(&self, port: u16, section: &str, ok: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        while Instant::now() < deadline {
            if let Ok(mut conn) = client.get_connection()
                && let Ok(info) = redis::cmd("INFO").arg(section).query::<String>(&mut conn)
                && ok(&info)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("cluster node {port} never got ready (INFO {section})");
    }

    fn wait(&self, port: u16, ok: impl Fn(&str) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        while Instant::now() < deadline {
            if let Ok(mut conn) = client.get_connection()
                && let Ok(info) = redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut conn)
                && ok(&info)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("cluster node {port} never reached {what}");
    }

    /// Node URLs, for `RedisBackend::cluster`.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect()
    }

    /// A plain connection to node `i` (which must be alive).
    pub fn node_conn(&self, i: usize) -> redis::Connection {
        redis::Client::open(self.urls()[i].as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

/// One master and the slots it owns, from `CLUSTER SLOTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// The master's port.
    pub port: u16,
    /// Its slot ranges, inclusive.
    pub ranges: Vec<(u16, u16)>,
}

impl Shard {
    /// Whether the master owns `slot`.
    pub fn owns(&self, slot: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&slot))
    }
}

impl RedisCluster {
    /// The index of the node listening on `port`.
    pub fn index_of(&self, port: u16) -> usize {
        self.ports
            .iter()
            .position(|&p| p == port)
            .expect("a node's port")
    }

    /// Whether node `i` is still running.
    pub fn alive(&self, i: usize) -> bool {
        self.nodes[i].is_some()
    }

    /// SIGKILLs node `i` (no shutdown, no goodbye to the cluster).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].take() {
            child.kill().expect("SIGKILL a cluster node");
            let _ = child.wait();
        }
    }

    /// The masters and their slots, as node `i` sees them (`CLUSTER SLOTS`).
    pub fn shards_seen_by(&self, i: usize) -> Vec<Shard> {
        let mut conn = self.node_conn(i);
        let slots: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut conn).unwrap();
        let redis::Value::Array(ranges) = slots else {
            panic!("CLUSTER SLOTS: {slots:?}");
        };
        let mut shards: Vec<Shard> = Vec::new();
        for range in ranges {
            let redis::Value::Array(parts) = range else {
                panic!("CLUSTER SLOTS range: {range:?}");
            };
            let int = |v: &redis::Value| -> i64 { redis::from_redis_value_ref(v).unwrap() };
            let (lo, hi) = (int(&parts[0]) as u16, int(&parts[1]) as u16);
            let redis::Value::Array(master) = &parts[2] else {
                panic!("CLUSTER SLOTS master: {parts:?}");
            };
            let port = int(&master[1]) as u16;
            match shards.iter_mut().find(|s| s.port == port) {
                Some(shard) => shard.ranges.push((lo, hi)),
                None => shards.push(Shard {
                    port,
                    ranges: vec![(lo, hi)],
                }),
            }
        }
        shards.sort_by_key(|s| s.ranges.iter().map(|r| r.0).min());
        shards
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT` on node `i`).
    pub fn keyslot(&self, i: usize, key: &str) -> u16 {
        let mut conn = self.node_conn(i);
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut conn)
            .unwrap()
    }

    /// Moves `slots` slots from the master on port `from` to the one on
    /// port `to` with `redis-cli --cluster reshard` (slot by slot:
    /// `SETSLOT IMPORTING/MIGRATING`, `MIGRATE` of every key, `SETSLOT NODE`).
    pub fn reshard(&self, from: u16, to: u16, slots: usize) -> Duration {
        let id = |port: u16| -> String {
            let mut conn = self.node_conn(self.index_of(port));
            redis::cmd("CLUSTER").arg("MYID").query(&mut conn).unwrap()
        };
        let started = Instant::now();
        let out = Command::new(binary("redis-cli"))
            .arg("--cluster")
            .arg("reshard")
            .arg(format!("127.0.0.1:{from}"))
            .args(["--cluster-from", &id(from)])
            .args(["--cluster-to", &id(to)])
            .args(["--cluster-slots", &slots.to_string()])
            .args(["--cluster-pipeline", "100"])
            .arg("--cluster-yes")
            .output()
            .expect("run redis-cli --cluster reshard");
        assert!(
            out.status.success(),
            "redis-cli --cluster reshard failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        started.elapsed()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in self.nodes.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
