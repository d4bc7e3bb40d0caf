//! Throwaway Redis Clusters on free loopback ports: 3 masters
//! ([`RedisCluster::start`]), or 3 masters and 3 replicas
//! ([`RedisCluster::start_with_replicas`]) for failover tests; and one
//! 3-master cluster per test process ([`shared_cluster`]) for the tests that
//! only read and write their own keys, and another one lent to one test at
//! a time ([`exclusive_cluster`]) for those that count node-wide figures or
//! flush the scripts.
//!
//! `redis-server --cluster-enabled yes` processes (`cluster-node-timeout`
//! 2000 ms; with replicas, `cluster-require-full-coverage no`), joined by
//! hand (`CLUSTER SET-CONFIG-EPOCH`, `ADDSLOTS`, `MEET`, `REPLICATE`: what
//! `redis-cli --cluster create` does, without its one-second pauses), ready
//! once every node knows every other one, reports `cluster_state:ok` and
//! (with replicas) every replica is in sync with its master. Killed on drop.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Cluster hash slots.
const SLOTS: usize = 16_384;
/// Masters per cluster.
const MASTERS: usize = 3;
/// How long a node may take to get to any stage of the start.
const READY_WITHIN: Duration = Duration::from_secs(20);

pub struct RedisCluster {
    /// `None` once killed.
    nodes: Vec<Option<Child>>,
    pub ports: Vec<u16>,
    dir: PathBuf,
}

/// One Redis Cluster (3 masters, no replica) for the whole test process,
/// started by the first test that asks; a watchdog process kills its nodes
/// (and removes their directory) once this process has exited, as for
/// [`super::shared_redis`].
///
/// Tests run on it side by side, so each test keeps to keys under its own
/// prefix ([`super::unique_prefix`]; the one exception is
/// `inspect_example`'s cluster test, which uses the default prefix `rl`
/// as the example does: no other test may), and never kills, stops,
/// reshards, reconfigures or flushes a node (data or scripts), nor reads
/// node-wide figures (`INFO` stats, `CONFIG RESETSTAT`, `DBSIZE`, `KEYS *`,
/// the script cache): tests that do take [`exclusive_cluster`] or start
/// their own [`RedisCluster`].
pub fn shared_cluster() -> &'static RedisCluster {
    static SHARED: OnceLock<RedisCluster> = OnceLock::new();
    SHARED.get_or_init(|| {
        let cluster = RedisCluster::start();
        cluster.reap_after(std::process::id());
        cluster
    })
}

/// Another 3-master cluster per test process, lent to one test at a time
/// (the guard is the loan): for tests that read node-wide figures (`INFO
/// commandstats` after `CONFIG RESETSTAT`, the script cache) or flush the
/// scripts, which must not be disturbed by, or disturb, tests beside them.
/// Each starts from what it finds: it resets the statistics or flushes
/// the scripts it counts first, and keeps to keys under its own prefix.
/// Tests that kill, stop, reshard or reconfigure nodes start their own
/// [`RedisCluster`]. Started by the first test that asks; reaped as
/// [`shared_cluster`] is.
pub async fn exclusive_cluster() -> tokio::sync::MutexGuard<'static, RedisCluster> {
    static EXCLUSIVE: OnceLock<tokio::sync::Mutex<RedisCluster>> = OnceLock::new();
    EXCLUSIVE
        .get_or_init(|| {
            let cluster = RedisCluster::start();
            cluster.reap_after(std::process::id());
            tokio::sync::Mutex::new(cluster)
        })
        .lock()
        .await
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

/// Polls `ready` every 20 ms until it holds; panics with `what` (and the
/// last thing `ready` said) after [`READY_WITHIN`].
fn wait_for(what: &str, mut ready: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        let last = match ready() {
            Ok(()) => return,
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            panic!("{what}: not within {READY_WITHIN:?} ({last})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One line of `CLUSTER NODES`: id, flags (`myself,master`, `slave`, ...)
/// and the id of the master it replicates (`-` for a master).
struct NodeLine {
    id: String,
    flags: Vec<String>,
    master: String,
}

fn cluster_nodes(conn: &mut redis::Connection) -> redis::RedisResult<Vec<NodeLine>> {
    let text: String = redis::cmd("CLUSTER").arg("NODES").query(conn)?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // <id> <ip:port@cport> <flags> <master> ...
            Some(NodeLine {
                id: fields.first()?.to_string(),
                flags: fields.get(2)?.split(',').map(str::to_owned).collect(),
                master: fields.get(3)?.to_string(),
            })
        })
        .collect())
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
        let mut cluster = Self {
            nodes: Vec::new(),
            ports: Vec::new(),
            dir,
        };
        for i in 0..MASTERS * (1 + replicas) {
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
                // A replica's first sync starts at once (the default waits
                // 5 s for more replicas to share the transfer).
                .args(["--repl-diskless-sync-delay", "0"])
                .args(["--dir", node_dir.to_str().unwrap()])
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn redis-server");
            cluster.nodes.push(Some(child));
            cluster.ports.push(port);
        }
        cluster.join();
        cluster
    }

    /// Panics with its log if node `i` has exited (its port was taken).
    fn exited(&mut self, i: usize) {
        if let Some(Ok(Some(status))) = self.nodes[i].as_mut().map(Child::try_wait) {
            let log = self.dir.join(i.to_string()).join("redis.log");
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("cluster node {} exited ({status}):\n{log}", self.ports[i]);
        }
    }

    /// A connection to node `i`, or why there is none yet.
    fn try_conn(&self, i: usize) -> Result<redis::Connection, String> {
        redis::Client::open(self.urls()[i].as_str())
            .and_then(|client| client.get_connection())
            .map_err(|e| e.to_string())
    }

    /// Joins the fresh nodes: the first [`MASTERS`] share the slots, each
    /// further one replicates master `i % MASTERS`; returns once the
    /// cluster is ready (see the module's documentation).
    fn join(&mut self) {
        let n = self.ports.len();
        let mut conns: Vec<redis::Connection> = Vec::with_capacity(n);
        for i in 0..n {
            let deadline = Instant::now() + READY_WITHIN;
            let conn = loop {
                self.exited(i);
                if let Ok(mut conn) = self.try_conn(i)
                    && redis::cmd("PING").query::<String>(&mut conn).is_ok()
                {
                    break conn;
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster node {} never answered",
                    self.ports[i]
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            conns.push(conn);
        }
        let ids: Vec<String> = conns
            .iter_mut()
            .map(|c| redis::cmd("CLUSTER").arg("MYID").query(c).unwrap())
            .collect();
        // Distinct config epochs up front: no epoch collision to settle.
        for (i, conn) in conns.iter_mut().enumerate() {
            let () = redis::cmd("CLUSTER")
                .arg("SET-CONFIG-EPOCH")
                .arg(i + 1)
                .query(conn)
                .unwrap();
        }
        for (m, conn) in conns.iter_mut().take(MASTERS).enumerate() {
            let slots = (m * SLOTS / MASTERS)..((m + 1) * SLOTS / MASTERS);
            let () = redis::cmd("CLUSTER")
                .arg("ADDSLOTS")
                .arg(slots.collect::<Vec<_>>())
                .query(conn)
                .unwrap();
        }
        for &port in &self.ports[1..] {
            let () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(port)
                .query(&mut conns[0])
                .unwrap();
        }
        // A replica can only follow a master it knows (out of handshake).
        let knows_everyone = |conn: &mut redis::Connection| -> Result<(), String> {
            let nodes = cluster_nodes(conn).map_err(|e| e.to_string())?;
            let known = nodes
                .iter()
                .filter(|node| !node.flags.iter().any(|f| f == "handshake" || f == "noaddr"))
                .count();
            if known == n {
                Ok(())
            } else {
                Err(format!("{known} of {n} nodes known"))
            }
        };
        for (i, conn) in conns.iter_mut().enumerate() {
            wait_for(
                &format!("cluster node {} meets every node", self.ports[i]),
                || knows_everyone(conn),
            );
        }
        for (i, conn) in conns.iter_mut().enumerate().skip(MASTERS) {
            let () = redis::cmd("CLUSTER")
                .arg("REPLICATE")
                .arg(&ids[i % MASTERS])
                .query(conn)
                .unwrap();
        }
        // Ready: every node sees every slot covered and every replica as
        // the replica of its master (masters vote on failovers of replicas
        // they know), and every replica has synced (it fails over only
        // then).
        for (i, conn) in conns.iter_mut().enumerate() {
            wait_for(&format!("cluster node {} is ready", self.ports[i]), || {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(conn)
                    .map_err(|e| e.to_string())?;
                if !info.contains("cluster_state:ok") {
                    return Err("cluster_state is not ok".to_owned());
                }
                let nodes = cluster_nodes(conn).map_err(|e| e.to_string())?;
                for r in MASTERS..n {
                    let follows = nodes.iter().any(|node| {
                        node.id == ids[r]
                            && node.flags.iter().any(|f| f == "slave")
                            && node.master == ids[r % MASTERS]
                    });
                    if !follows {
                        return Err(format!(
                            "node {} is not yet seen as a replica",
                            self.ports[r]
                        ));
                    }
                }
                if i >= MASTERS {
                    let replication: String = redis::cmd("INFO")
                        .arg("replication")
                        .query(conn)
                        .map_err(|e| e.to_string())?;
                    if !replication.contains("master_link_status:up") {
                        return Err("not in sync with its master".to_owned());
                    }
                }
                Ok(())
            });
        }
    }

    /// Spawns a watchdog that waits for process `pid` to end, then kills
    /// every node and removes the cluster's directory. The watchdog outlives
    /// `pid`, and so is never waited for.
    #[allow(clippy::zombie_processes)]
    fn reap_after(&self, pid: u32) {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .flatten()
            .map(|child| child.id().to_string())
            .collect();
        Command::new("sh")
            .arg("-c")
            .arg(
                r#"dir=$1; pid=$2; shift 2
                while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
                kill -9 "$@"; rm -rf "$dir""#,
            )
            .arg("redis-cluster-watchdog")
            .arg(&self.dir)
            .arg(pid.to_string())
            .args(nodes)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the shared cluster's watchdog");
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
