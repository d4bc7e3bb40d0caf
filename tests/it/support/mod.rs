//! Test support: throwaway `redis-server` processes on free loopback ports.
//!
//! Tests that only need *a* server share one per test process
//! ([`redis_url`], [`shared_redis`]; `REDIS_URL` may name an existing one
//! instead), each under its own key prefix ([`unique_prefix`]). Tests that
//! kill, stop, restart, reconfigure or flush their server, or read its
//! server-wide figures, start their own ([`RedisServer::start`]).
//!
//! Submodules: [`batching`] holds what the batching tests share,
//! [`headers`] checks the rate-limit response headers, [`web`]
//! serves apps on loopback and sends requests to them, [`load`] generates
//! load and measures latency, [`logs`] captures the crate's log lines,
//! [`security`] holds what the `security_*` tests share, and `cluster`
//! (feature `cluster`) starts a throwaway Redis Cluster, `tls` (feature
//! `tls`) a Redis with a TLS port and a test-time CA, `sentinel` (feature
//! `sentinel`) a primary, a replica and a sentinel.
#![allow(dead_code)]

pub mod batching;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod headers;
pub mod load;
pub mod logs;
pub mod scripts;
pub mod security;
#[cfg(feature = "sentinel")]
pub mod sentinel;
#[cfg(feature = "tls")]
pub mod tls;
pub mod web;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Tests that load the machine or measure latency under load take this lock
/// for their whole run, through [`heavy`] (alone) or [`loading`] (beside
/// each other): every test of the binary runs in parallel, and two load
/// phases (or a fault injection and a latency bound) at once would measure
/// each other. Tests that neither load nor measure do not take it. The lock
/// is fair: a test waiting for [`heavy`] is not overtaken by later
/// [`loading`] ones.
static HEAVY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The turn of a test that measures latency or fails on a missed deadline:
/// [`HEAVY`] alone, then a quiet process. The heavy tests sort last
/// (`tests/it/under_load`), so when the first of them starts the light
/// tests have all started, and a few may still run; waiting until this
/// process has been nearly idle for a moment (at most [`QUIET_WAIT`]) lets
/// them finish before any latency is measured.
pub async fn heavy() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    let turn = HEAVY.write().await;
    let started = Instant::now();
    let mut quiet = 0;
    let mut last = cpu_ticks();
    while quiet < 2 && started.elapsed() < QUIET_WAIT {
        tokio::time::sleep(QUIET_SAMPLE).await;
        let now = cpu_ticks();
        // Clock ticks are 1/100 s: under a quarter of a core over the sample.
        let busy = now.saturating_sub(last) as f64 / 100.0 / QUIET_SAMPLE.as_secs_f64();
        quiet = if busy < 0.25 { quiet + 1 } else { 0 };
        last = now;
    }
    turn
}

/// The turn of a test that loads the machine but measures only counts and
/// bytes, no latency and no deadline (the memory attacks, the fleet's
/// shares): beside the other such tests, never beside a [`heavy`] one.
pub async fn loading() -> tokio::sync::RwLockReadGuard<'static, ()> {
    HEAVY.read().await
}

/// The longest [`heavy`] waits for the process to quieten.
const QUIET_WAIT: Duration = Duration::from_secs(20);
/// How long each of [`heavy`]'s samples of the process's CPU time lasts.
const QUIET_SAMPLE: Duration = Duration::from_millis(100);

/// This process's CPU time (user and system, every thread) in clock ticks,
/// from `/proc/self/stat`; 0 where there is no such file.
fn cpu_ticks() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the command name (which may hold spaces, in parentheses):
    // utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// A `redis-server` child process, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free loopback port")
        .local_addr()
        .unwrap()
        .port()
}

fn redis_server_binary() -> String {
    let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".to_owned());
    match Command::new(&bin).arg("--version").output() {
        Ok(out) if out.status.success() => bin,
        _ => panic!(
            "`{bin}` was not found: these tests need a real Redis server.\n\
             Install it with `sudo apt-get install redis-server` (Debian/Ubuntu) or \
             `brew install redis` (macOS), or set REDIS_SERVER_BIN to its path."
        ),
    }
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "trr-redis-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            child: None,
            port: 0,
            dir,
        };
        // A port found free can be taken by a parallel test before our server
        // binds it: then try another one.
        for _ in 0..20 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
            server.kill();
        }
        panic!("could not start redis-server on a free port after 20 attempts");
    }

    /// Spawns the server on `self.port`; false if another process holds the port.
    fn spawn(&mut self) -> bool {
        let log = std::fs::File::create(self.dir.join("redis.log")).unwrap();
        let child = Command::new(redis_server_binary())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", self.dir.to_str().unwrap()])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        self.wait_ready()
    }

    /// Waits until *our* server answers (its `process_id` is our child's).
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = self.child.as_ref().unwrap().id();
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.as_mut().unwrap().try_wait() {
                return false; // exited: the port was taken
            }
            if let Ok(mut conn) = self.client().get_connection()
                && let Ok(info) = redis::cmd("INFO").arg("server").query::<String>(&mut conn)
            {
                let ours = info
                    .lines()
                    .find_map(|l| l.strip_prefix("process_id:"))
                    .is_some_and(|p| p.trim() == pid.to_string());
                if ours {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        panic!("redis-server on port {} did not start:\n{log}", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap()
    }

    /// A plain synchronous connection for inspecting state.
    pub fn conn(&self) -> redis::Connection {
        self.client().get_connection().unwrap()
    }

    /// SIGKILLs the server (no shutdown, connections drop).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty dataset).
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "port {} was taken by another process while the server was down",
            self.port
        );
    }

    /// Spawns a watchdog that waits for process `pid` to end, then kills
    /// the server and removes its directory. The watchdog outlives `pid`, and
    /// so is never waited for.
    #[allow(clippy::zombie_processes)]
    fn reap_after(&self, pid: u32) {
        let server = self.child.as_ref().expect("server is running").id();
        Command::new("sh")
            .arg("-c")
            .arg(r#"while kill -0 "$1" 2>/dev/null; do sleep 0.2; done; kill -9 "$2"; rm -rf "$3""#)
            .arg("redis-watchdog")
            .args([pid.to_string(), server.to_string()])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the shared server's watchdog");
    }

    /// Sends a signal to the server process (e.g. "STOP", "CONT").
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("server is running").id();
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {pid}");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            // SIGKILL works on a stopped process too; continuing it first lets
            // the kernel reap it without delay.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis URL for tests that only need *a* server: `REDIS_URL` if set, else
/// [`shared_redis`]. Tests on it keep to keys under their own
/// [`unique_prefix`], and never kill, stop, restart, reconfigure or flush it,
/// nor read server-wide figures (`INFO` stats, `SLOWLOG`, `DBSIZE`, `KEYS *`):
/// tests that do start their own [`RedisServer`].
pub fn redis_url() -> String {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => shared_redis().url(),
    }
}

/// One `redis-server` for the whole test process, started by the first test
/// that asks. A static is never dropped, so a watchdog process kills the
/// server (and removes its directory) once this process has exited: no
/// server outlives `cargo test`, whichever way the process ends.
pub fn shared_redis() -> &'static RedisServer {
    static SHARED: OnceLock<RedisServer> = OnceLock::new();
    SHARED.get_or_init(|| {
        let server = RedisServer::start();
        server.reap_after(std::process::id());
        server
    })
}

/// A key prefix unique to one test, so tests sharing a `REDIS_URL` server do
/// not see each other's keys.
pub fn unique_prefix(test: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}-{}-{test}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A memory backend on a [`FakeClock`](tower_redis_ratelimit::clock::FakeClock)
/// that never moves: no window boundary falls between two requests of a test,
/// so counts and waits are exact. For the tests of layer logic, where the
/// storage and the time are not what is tested.
pub fn still_memory() -> tower_redis_ratelimit::MemoryBackend {
    // 2023-11-14T22:13:20Z, in microseconds.
    let clock = tower_redis_ratelimit::clock::FakeClock::new(1_700_000_000_000_000);
    tower_redis_ratelimit::MemoryBackend::with_clock(clock)
}

/// A loopback port with nothing listening on it.
pub fn dead_port() -> u16 {
    free_port()
}

/// A `RedisBackend` on `url` under a key prefix unique to `test` (see
/// [`unique_prefix`]). Building never connects, so `url` may be down.
pub fn redis_backend(url: &str, test: &str) -> tower_redis_ratelimit::RedisBackend {
    tower_redis_ratelimit::RedisBackend::builder(url)
        .prefix(unique_prefix(test))
        .build()
        .expect("a valid URL builds without connecting")
}

/// `target/<profile>`, from this test binary's path (`target/<profile>/deps/..`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// Builds every example once (all features, so the tonic one too) and returns
/// the directory holding them.
pub fn examples_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let profile = profile_dir();
            let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cargo
                .args(["build", "--quiet", "--examples", "--all-features"])
                .arg("--manifest-path")
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
                .arg("--target-dir")
                .arg(profile.parent().unwrap());
            if profile.file_name().is_some_and(|n| n == "release") {
                cargo.arg("--release");
            }
            // Not the variables cargo sets for this test process: build
            // scripts (ring's) rerun when one of theirs changed, and the
            // crates above them would be rebuilt, for nothing, both here
            // and again by the next `cargo test`.
            for (name, _) in std::env::vars_os() {
                let name = name.to_string_lossy();
                if name.starts_with("CARGO_PKG_")
                    || name.starts_with("CARGO_BIN_")
                    || matches!(
                        &*name,
                        "CARGO_MANIFEST_DIR"
                            | "CARGO_MANIFEST_PATH"
                            | "CARGO_CRATE_NAME"
                            | "CARGO_PRIMARY_PACKAGE"
                            | "CARGO_TARGET_TMPDIR"
                            | "OUT_DIR"
                    )
                {
                    cargo.env_remove(&*name);
                }
            }
            let out = cargo.output().expect("run cargo");
            assert!(
                out.status.success(),
                "cargo build --examples failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            profile.join("examples")
        })
        .clone()
}

/// A request's cost as the `x-cost` header states it (1 without one): the
/// cost function of the tests that vary costs per request.
pub fn cost_header(parts: &http::request::Parts) -> u64 {
    parts
        .headers
        .get("x-cost")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(1)
}
