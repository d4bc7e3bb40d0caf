//! Redis Cluster under load while its topology changes (feature `cluster`),
//! with two layers on two backends standing for two application instances:
//!
//! - a master is SIGKILLed: the fail-open window (responses without
//!   rate-limit headers: the failure mode let them through) is measured in
//!   100 ms buckets and bounded; no request waits beyond the deadline; the
//!   keys of the healthy masters stay limited by Redis throughout (but for
//!   the odd deadline miss while redis-rs refreshes its slot map); limits
//!   are exact on every master afterwards;
//! - 700 slots are resharded with `redis-cli --cluster reshard`: no
//!   request fails or goes unlimited, and every admitted request is counted
//!   exactly once across the move.
//!
//! The measured figures are printed (`cargo test --test it under_load::cluster_failover::
//! -- --nocapture`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use tower::{Layer, ServiceExt};
use tower_redis_ratelimit::headers::RATELIMIT;
use tower_redis_ratelimit::key::Header;
use tower_redis_ratelimit::{
    Algorithm, Backend, FailureMode, Key, Policy, Quota, RateLimitLayer, RedisBackend,
};

use crate::support::cluster::{RedisCluster, Shard};

/// The layer's deadline, as in the production report.
const DEADLINE: Duration = Duration::from_millis(50);
/// What a request may take beyond the deadline on a loaded 2-core machine.
const LATENCY_MARGIN: Duration = Duration::from_millis(200);
/// Client tasks per instance; two instances.
const TASKS: usize = 4;
/// Each task sends one request per `PACE`: 2 × 4 × 250 = 2000 req/s at most.
const PACE: Duration = Duration::from_millis(4);
/// No load runs longer than this, whatever happens.
const HARD_STOP: Duration = Duration::from_secs(40);
/// The bound the issue sets on the fail-open window after a master dies.
const MAX_FAIL_OPEN: Duration = Duration::from_secs(15);
/// How long the load goes on once the cluster shows every slot served again:
/// the client side's recovery (a topology refresh, the breaker's probe) and
/// enough decided requests after it to tell recovery from luck.
const AFTER_FAILOVER: Duration = Duration::from_secs(3);
/// Slots moved by the resharding test; identities it loads (about 4 % of
/// them on the moved slots).
const RESHARD_SLOTS: usize = 700;
const RESHARD_IDS: usize = 1800;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// 200 with rate-limit headers: Redis admitted it.
    Admitted,
    /// 429: Redis (or the blocked cache after a Redis denial) refused it.
    Denied,
    /// 200 without rate-limit headers: the failure mode (open) let it pass.
    Unlimited,
    /// Anything else: an error surfaced to the client.
    Error,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    /// When it started, from the load's start.
    at: Duration,
    latency: Duration,
    outcome: Outcome,
    /// The identity's index.
    id: usize,
}

/// The inner service: 200, empty body.
type Inner = tower::util::ServiceFn<
    fn(Request<String>) -> std::future::Ready<Result<Response<String>, Infallible>>,
>;

type Service =
    tower_redis_ratelimit::RateLimitService<Inner, tower_redis_ratelimit::DefaultRejection>;

fn ok(_req: Request<String>) -> std::future::Ready<Result<Response<String>, Infallible>> {
    std::future::ready(Ok(Response::new(String::new())))
}

/// One "application instance": a layer on its own cluster backend.
fn instance(cluster: &RedisCluster, prefix: &str, policy: &Policy) -> (Service, RedisBackend) {
    let backend = RedisBackend::cluster_builder(cluster.urls())
        .prefix(prefix)
        .build()
        .unwrap();
    let layer = RateLimitLayer::builder()
        .backend(backend.clone())
        .default_policy(policy.clone())
        .deadline(DEADLINE)
        .build()
        .unwrap();
    let inner: Inner = tower::service_fn(ok);
    (layer.layer(inner), backend)
}

async fn send(svc: &Service, id: &str) -> Outcome {
    let request = Request::builder()
        .header("x-client", id)
        .body(String::new())
        .unwrap();
    match svc.clone().oneshot(request).await {
        Ok(res) if res.status() == StatusCode::OK && res.headers().contains_key(RATELIMIT) => {
            Outcome::Admitted
        }
        Ok(res) if res.status() == StatusCode::OK => Outcome::Unlimited,
        Ok(res) if res.status() == StatusCode::TOO_MANY_REQUESTS => Outcome::Denied,
        Ok(_) | Err(_) => Outcome::Error,
    }
}

/// Paced load from every instance over `ids` (each task takes every
/// `TASKS * instances`-th identity in turn) until `stop`.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
    started: Instant,
}

impl Load {
    fn start(instances: &[Service], ids: &Arc<Vec<String>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let total = TASKS * instances.len();
        let mut tasks = Vec::new();
        for (n, svc) in instances.iter().enumerate() {
            for t in 0..TASKS {
                let (svc, ids, stop) = (svc.clone(), Arc::clone(ids), Arc::clone(&stop));
                let mut next_id = n * TASKS + t;
                tasks.push(tokio::spawn(async move {
                    let mut samples = Vec::new();
                    let mut next = tokio::time::Instant::now();
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < HARD_STOP {
                        let id = next_id % ids.len();
                        next_id += total;
                        let start = Instant::now();
                        let outcome = send(&svc, &ids[id]).await;
                        samples.push(Sample {
                            at: start - started,
                            latency: start.elapsed(),
                            outcome,
                            id,
                        });
                        next += PACE;
                        tokio::time::sleep_until(next.max(tokio::time::Instant::now())).await;
                    }
                    samples
                }));
            }
        }
        Self {
            stop,
            tasks,
            started,
        }
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.unwrap());
        }
        all.sort_by_key(|s| s.at);
        all
    }
}

/// The hash slot of each identity's keys under `policy` (`CLUSTER KEYSLOT`,
/// one pipelined round trip).
fn keyslots(cluster: &RedisCluster, node: usize, policy: &str, ids: &[String]) -> Vec<u16> {
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(format!("{{{policy}:{id}}}"));
    }
    let mut conn = cluster.node_conn(node);
    pipe.query(&mut conn).unwrap()
}

/// The 256-slot groups the breaker keeps apart (see `Backend::partitions`).
fn group(slot: u16) -> u16 {
    slot / 256
}

/// Waits (bounded) until each instance has connected and Redis decides.
async fn warm_up(instances: &[Service]) {
    for (n, svc) in instances.iter().enumerate() {
        let mut tries = 0;
        while send(svc, &format!("warm-up-{n}")).await != Outcome::Admitted {
            tries += 1;
            assert!(tries < 100, "instance {n} never connected to the cluster");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_under_load_fails_open_briefly_and_only_for_its_keys() {
    let _heavy = crate::support::heavy().await;
    let mut cluster = RedisCluster::start_with_replicas();
    let policy = Policy::new("fo")
        .quota(Quota::per_minute(100))
        .algorithm(Algorithm::SlidingLog)
        .key(Header::new("x-client"))
        .failure_mode(FailureMode::Open);
    let instances: Vec<(Service, RedisBackend)> =
        (0..2).map(|_| instance(&cluster, "fo", &policy)).collect();
    assert_eq!(instances[0].1.partitions(), 256 / 4, "64 slot groups");
    let services: Vec<Service> = instances.iter().map(|(s, _)| s.clone()).collect();

    // 5000 identities; which master owns each, and whether its slot group
    // lies wholly on that master.
    let ids: Arc<Vec<String>> = Arc::new((0..5000).map(|i| format!("c{i}")).collect());
    let shards = cluster.shards_seen_by(0);
    assert_eq!(shards.len(), 3, "{shards:?}");
    let victim = shards[1].clone();
    let slots = keyslots(&cluster, 0, "fo", &ids);
    let owner = |slot: u16| shards.iter().position(|s| s.owns(slot)).unwrap();
    let whole_group = |slot: u16| {
        let g = group(slot);
        let first = g * 256;
        (first..first + 256).all(|s| owner(s) == owner(slot))
    };
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
    enum Class {
        Dead,
        Healthy,
        /// On a healthy master, in a slot group shared with the dead one.
        Straddling,
    }
    let class: Vec<Class> = slots
        .iter()
        .map(|&slot| match (owner(slot) == 1, whole_group(slot)) {
            (true, _) => Class::Dead,
            (false, true) => Class::Healthy,
            (false, false) => Class::Straddling,
        })
        .collect();
    let count = |c: Class| class.iter().filter(|&&x| x == c).count();
    eprintln!(
        "identities: {} on the killed master, {} on healthy masters, {} straddling",
        count(Class::Dead),
        count(Class::Healthy),
        count(Class::Straddling)
    );

    warm_up(&services).await;
    let load = Load::start(&services, &ids);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let victim_index = cluster.index_of(victim.port);
    let killed_at = load.started.elapsed();
    cluster.kill(victim_index);
    // The cluster's own failover: until a surviving node shows every slot
    // served by a live master again.
    let survivor = (0..cluster.ports.len())
        .find(|&i| cluster.alive(i))
        .unwrap();
    let cluster = Arc::new(cluster);
    let watch = {
        let cluster = Arc::clone(&cluster);
        let started = load.started;
        let dead = victim.port;
        tokio::task::spawn_blocking(move || {
            while started.elapsed() < HARD_STOP {
                let shards = cluster.shards_seen_by(survivor);
                let covered: usize = shards
                    .iter()
                    .flat_map(|s| &s.ranges)
                    .map(|&(lo, hi)| usize::from(hi - lo) + 1)
                    .sum();
                if covered == 16_384 && shards.iter().all(|s| s.port != dead) {
                    return started.elapsed();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            panic!("the cluster never failed over");
        })
    };
    // The load goes on until the cluster has failed over and then for
    // `AFTER_FAILOVER` more, so the end of the fail-open window is seen
    // (and is at most `MAX_FAIL_OPEN` after the kill).
    let failed_over_at = watch.await.unwrap();
    let failed_over = failed_over_at - killed_at;
    assert!(
        failed_over <= MAX_FAIL_OPEN,
        "the cluster took {} ms to fail over",
        ms(failed_over)
    );
    tokio::time::sleep(AFTER_FAILOVER).await;
    let samples = load.finish().await;
    let load_end = samples.last().unwrap().at;

    // Every request: no error, none waiting beyond the deadline.
    let errors = samples
        .iter()
        .filter(|s| s.outcome == Outcome::Error)
        .count();
    let slowest = samples.iter().map(|s| s.latency).max().unwrap();
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= killed_at).collect();
    let total_s = samples.last().unwrap().at.as_secs_f64();
    eprintln!(
        "{} requests ({:.0}/s), {} after the kill; slowest {:?}; cluster failover took {} ms",
        samples.len(),
        samples.len() as f64 / total_s,
        after.len(),
        slowest,
        ms(failed_over)
    );
    assert_eq!(errors, 0, "errors surfaced to clients");
    assert!(
        slowest <= DEADLINE + LATENCY_MARGIN,
        "a request waited {slowest:?} (deadline {DEADLINE:?})"
    );
    // A healthy cluster decides (nearly) everything: a rare deadline miss
    // is the loaded test machine's scheduling, not Redis.
    let before = samples.iter().filter(|s| s.at < killed_at).count();
    let before_unlimited = samples
        .iter()
        .filter(|s| s.at < killed_at && s.outcome == Outcome::Unlimited)
        .count();
    eprintln!("before the kill: {before_unlimited} of {before} unlimited");
    assert!(
        before_unlimited * 200 <= before,
        "{before_unlimited} of {before} unlimited before the kill"
    );

    // Fail-open outcomes per 100 ms bucket after the kill, per class.
    let mut buckets: HashMap<(u128, Class), (usize, usize)> = HashMap::new();
    for s in &after {
        let bucket = ms(s.at - killed_at) / 100;
        let entry = buckets.entry((bucket, class[s.id])).or_default();
        entry.0 += 1;
        if s.outcome == Outcome::Unlimited {
            entry.1 += 1;
        }
    }
    let last_bucket = buckets.keys().map(|k| k.0).max().unwrap();
    for (c, name) in [(Class::Dead, "killed"), (Class::Healthy, "healthy")] {
        let mut timeline = String::new();
        for b in 0..=last_bucket {
            let (n, open) = buckets.get(&(b, c)).copied().unwrap_or_default();
            if open > 0 || b % 10 == 0 {
                timeline.push_str(&format!(" {}ms:{open}/{n}", b * 100));
            }
        }
        eprintln!("{name} masters' keys, unlimited/requests per 100 ms bucket:{timeline}");
    }
    let unlimited = |c: Class| {
        after
            .iter()
            .filter(|s| class[s.id] == c && s.outcome == Outcome::Unlimited)
            .count()
    };
    // The outage, as the clients of the killed master's keys saw it: until
    // the end of the last 100 ms bucket in which more than a tenth of their
    // requests went unlimited. Afterwards only the machine's rare deadline
    // misses remain (bounded below).
    let last_open_bucket = (0..=last_bucket)
        .filter(|&b| {
            let (n, open) = buckets.get(&(b, Class::Dead)).copied().unwrap_or_default();
            open * 10 > n
        })
        .max()
        .expect("the killed master's keys failed open at first");
    let fail_open_end = Duration::from_millis(100 * (last_open_bucket as u64 + 1));
    let fail_open_start = after
        .iter()
        .filter(|s| s.outcome == Outcome::Unlimited)
        .map(|s| s.at - killed_at)
        .min()
        .unwrap_or_default();
    let healthy_during = after
        .iter()
        .filter(|s| class[s.id] == Class::Healthy && s.at - killed_at <= fail_open_end)
        .count();
    let healthy_unlimited = after
        .iter()
        .filter(|s| {
            class[s.id] == Class::Healthy
                && s.at - killed_at <= fail_open_end
                && s.outcome == Outcome::Unlimited
        })
        .count();
    let (later, later_unlimited) = after
        .iter()
        .filter(|s| s.at - killed_at > fail_open_end)
        .fold((0, 0), |(n, u), s| {
            (n + 1, u + usize::from(s.outcome == Outcome::Unlimited))
        });
    eprintln!(
        "fail-open window for the killed master's keys: {} ms to {} ms after the kill \
         ({} of their requests unlimited, {} straddling); meanwhile {healthy_unlimited} of \
         {healthy_during} requests on the healthy masters' keys unlimited; afterwards \
         {later_unlimited} of {later} (deadline misses)",
        ms(fail_open_start),
        ms(fail_open_end),
        unlimited(Class::Dead),
        unlimited(Class::Straddling),
    );
    assert!(
        fail_open_end <= MAX_FAIL_OPEN,
        "still failing open {} ms after the kill",
        ms(fail_open_end)
    );
    // The window closed while the load ran: at least a second of decided
    // requests follows it (else the load stopped inside the outage).
    assert!(
        killed_at + fail_open_end + Duration::from_secs(1) <= load_end,
        "the fail-open window ({} ms after the kill) did not end a second before the load \
         ({} ms after the kill)",
        ms(fail_open_end),
        ms(load_end - killed_at)
    );
    assert!(
        later_unlimited * 200 <= later,
        "after recovery {later_unlimited} of {later} requests unlimited"
    );
    // Limiting really resumed for the dead master's keys: Redis decided
    // every one of them after the window, and there were some.
    let resumed = after
        .iter()
        .filter(|s| class[s.id] == Class::Dead && s.at - killed_at > fail_open_end)
        .count();
    assert!(resumed > 100, "only {resumed} requests after recovery");
    // The healthy masters' keys were decided by Redis throughout, where the
    // whole layer failed open (nearly all of them) when one breaker covered
    // every shard. Not quite all: while redis-rs reconnects to the dead node
    // and refreshes the slot map, it holds back calls to every node for a
    // few milliseconds at a time (redis-rs issue #2092), and a call caught
    // behind that may miss the 50 ms deadline. CI saw 0.75 %; at most 5 %.
    assert!(
        healthy_unlimited * 20 <= healthy_during,
        "healthy masters' keys went unlimited during the outage: \
         {healthy_unlimited} of {healthy_during}"
    );
    assert!(healthy_during > 100, "{healthy_during} healthy requests");

    // Limits exact on every master now (the promoted replica included):
    // fresh identities, both instances alternately, exactly 100 admitted.
    let shards_now = cluster.shards_seen_by(survivor);
    assert_eq!(shards_now.len(), 3, "{shards_now:?}");
    for shard in &shards_now {
        let fresh: Vec<String> = (0..200)
            .map(|i| format!("fresh-{}-{i}", shard.port))
            .collect();
        let fresh_slots = keyslots(&cluster, survivor, "fo", &fresh);
        let owned: Vec<&String> = fresh
            .iter()
            .zip(&fresh_slots)
            .filter(|&(_, &slot)| shard.owns(slot))
            .map(|(id, _)| id)
            .take(2)
            .collect();
        assert_eq!(owned.len(), 2, "fresh identities on {shard:?}");
        for id in owned {
            let mut admitted = 0;
            for i in 0..110 {
                match send(&services[i % 2], id).await {
                    Outcome::Admitted => admitted += 1,
                    Outcome::Denied => {}
                    other => panic!("{id} on master {}: {other:?}", shard.port),
                }
            }
            assert_eq!(admitted, 100, "{id} on master {}", shard.port);
        }
    }
    let promoted = shards_now
        .iter()
        .find(|s| s.owns(shards[1].ranges[0].0))
        .unwrap();
    eprintln!(
        "after recovery: exactly 100 of 110 admitted on every master (killed {}, promoted {})",
        victim.port, promoted.port
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resharding_under_load_fails_nothing_and_counts_exactly() {
    let _heavy = crate::support::heavy().await;
    let cluster = RedisCluster::start();
    let limit = 10_000;
    let policy = Policy::new("rs")
        .quota(Quota::per_hour(limit))
        .algorithm(Algorithm::SlidingLog)
        .key(Header::new("x-client"))
        .failure_mode(FailureMode::Open);
    let instances: Vec<(Service, RedisBackend)> =
        (0..2).map(|_| instance(&cluster, "rs", &policy)).collect();
    let services: Vec<Service> = instances.iter().map(|(s, _)| s.clone()).collect();
    let ids: Arc<Vec<String>> = Arc::new((0..RESHARD_IDS).map(|i| format!("r{i}")).collect());
    let before = cluster.shards_seen_by(0);
    let slots = keyslots(&cluster, 0, "rs", &ids);

    warm_up(&services).await;
    warm_up(&services).await;
    let load = Load::start(&services, &ids);
    // A baseline without topology changes first: on a loaded machine a rare
    // decision misses the 50 ms deadline whatever Redis does.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (from, to) = (before[0].port, before[1].port);
    let reshard_at = load.started.elapsed();
    let took = tokio::task::block_in_place(|| cluster.reshard(from, to, RESHARD_SLOTS));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let samples = load.finish().await;

    let after = cluster.shards_seen_by(0);
    let owner = |shards: &[Shard], slot: u16| shards.iter().find(|s| s.owns(slot)).unwrap().port;
    let moved: Vec<usize> = (0..ids.len())
        .filter(|&i| owner(&before, slots[i]) != owner(&after, slots[i]))
        .collect();
    let moved_slots: usize = (0..16_384u16)
        .filter(|&s| owner(&before, s) != owner(&after, s))
        .count();
    let errors = samples
        .iter()
        .filter(|s| s.outcome == Outcome::Error)
        .count();
    let (baseline, during): (Vec<&Sample>, Vec<&Sample>) =
        samples.iter().partition(|s| s.at < reshard_at);
    let unlimited = |part: &[&Sample]| {
        part.iter()
            .filter(|s| s.outcome == Outcome::Unlimited)
            .count()
    };
    let slowest = samples.iter().map(|s| s.latency).max().unwrap();
    eprintln!(
        "reshard of {moved_slots} slots took {} ms under load ({:.0} req/s): {} requests \
         during it, {errors} errors, {} unlimited (deadline misses; baseline before it: {} of \
         {}), slowest {slowest:?}; {} of {} identities moved",
        ms(took),
        samples.len() as f64 / samples.last().unwrap().at.as_secs_f64(),
        during.len(),
        unlimited(&during),
        unlimited(&baseline),
        baseline.len(),
        moved.len(),
        ids.len()
    );
    assert_eq!(moved_slots, RESHARD_SLOTS);
    assert!(moved.len() > 30, "{} identities moved", moved.len());
    assert_eq!(errors, 0);
    assert!(slowest <= DEADLINE + LATENCY_MARGIN, "{slowest:?}");
    // Redis decided nearly every request across the move. Deadline misses
    // happen on a loaded 2-core machine (redis-cli migrating keys competes
    // for the CPU; 0.1-0.6 % seen here), so allow up to 2 %: a move that
    // failed the moved identities open would show far more (they are about
    // 4 % of the identities, for the whole move).
    assert!(
        unlimited(&during) * 50 <= during.len(),
        "{} of {} requests went unlimited during the reshard",
        unlimited(&during),
        during.len()
    );

    // Exact counts: what Redis holds for each identity is what it admitted.
    // (A decision that missed the deadline still runs to completion in
    // Redis: it may have counted, or not.)
    let mut admitted = vec![0u64; ids.len()];
    let mut missed = vec![0u64; ids.len()];
    for s in &samples {
        match s.outcome {
            Outcome::Admitted => admitted[s.id] += 1,
            Outcome::Unlimited => missed[s.id] += 1,
            other => panic!("{s:?}: {other:?}"),
        }
    }
    let backend = &instances[0].1;
    for (i, id) in ids.iter().enumerate() {
        let peek = backend.peek(&policy, &Key::new(id.as_str())).await.unwrap();
        let counted = limit - peek.quotas()[0].remaining;
        assert!(
            (admitted[i]..=admitted[i] + missed[i]).contains(&counted),
            "{id} (moved: {}): Redis counted {counted}, {} admitted, {} missed",
            moved.contains(&i),
            admitted[i],
            missed[i]
        );
    }
}
