//! A throwaway 3-master Redis Cluster on free loopback ports.
//!
//! Three `redis-server --cluster-enabled yes` processes, joined with
//! `redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes`, ready
//! once every node reports `cluster_state:ok`. Killed on drop.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct RedisCluster {
    nodes: Vec<Child>,
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
        for i in 0..3 {
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
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .args(["--dir", node_dir.to_str().unwrap()])
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn redis-server");
            cluster.nodes.push(child);
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
            .args(["--cluster-replicas", "0", "--cluster-yes"])
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
        cluster
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

    /// A plain connection to node `i`.
    pub fn node_conn(&self, i: usize) -> redis::Connection {
        redis::Client::open(self.urls()[i].as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
