//! What the layer recorded through the `metrics` facade.
//!
//! [`Recorded`] reads a `metrics-util` `DebuggingRecorder` installed for the
//! current thread (the tests run on tokio's current-thread runtime, so every
//! poll of the layer's futures happens on the test's thread and reaches it).
//! Its snapshots drain the recorder, so `Recorded` adds them up.
//!
//! [`Prometheus`] is the exporter the axum example uses, installed for the
//! current thread and read back from its text format: unlike the debugging
//! recorder it keeps a gauge's value between reads.
#![allow(dead_code)]

use std::collections::BTreeMap;

use metrics::LocalRecorderGuard;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

pub use crate::scrape::Samples;

/// A debugging recorder for this thread; keep it alive while the test records.
pub struct Recorded {
    snapshotter: Snapshotter,
    counters: BTreeMap<String, u64>,
    gauges: BTreeMap<String, f64>,
    samples: BTreeMap<String, Vec<f64>>,
    _guard: LocalRecorderGuard<'static>,
}

impl Recorded {
    /// Installs a fresh recorder as this thread's (leaked: a few bytes per test).
    pub fn install() -> Self {
        let recorder: &'static DebuggingRecorder = Box::leak(Box::new(DebuggingRecorder::new()));
        Self {
            snapshotter: recorder.snapshotter(),
            counters: BTreeMap::new(),
            gauges: BTreeMap::new(),
            samples: BTreeMap::new(),
            _guard: metrics::set_default_local_recorder(recorder),
        }
    }

    /// Drains the recorder into the running totals. Metrics are named
    /// `name{label=value,...}`, labels in the order they were given.
    fn update(&mut self) {
        for (key, _unit, _description, value) in self.snapshotter.snapshot().into_vec() {
            let labels: Vec<String> = key
                .key()
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let name = format!("{}{{{}}}", key.key().name(), labels.join(","));
            match value {
                DebugValue::Counter(n) => *self.counters.entry(name).or_default() += n,
                // Drained to 0 by every snapshot: only the first read after
                // a set shows it (see `Prometheus` for gauges read twice).
                DebugValue::Gauge(g) => {
                    self.gauges.insert(name, g.into_inner());
                }
                DebugValue::Histogram(values) => self
                    .samples
                    .entry(name)
                    .or_default()
                    .extend(values.iter().map(|v| v.into_inner())),
            }
        }
    }

    /// Every counter registered so far, with its total.
    pub fn counters(&mut self) -> BTreeMap<String, u64> {
        self.update();
        self.counters.clone()
    }

    /// Every gauge registered so far, with the value set since the previous
    /// read (0 if none was).
    pub fn gauges(&mut self) -> BTreeMap<String, f64> {
        self.update();
        self.gauges.clone()
    }

    /// The samples of one histogram so far.
    pub fn samples(&mut self, name: &str) -> Vec<f64> {
        self.update();
        self.samples.get(name).cloned().unwrap_or_default()
    }
}

/// `ratelimit_decisions_total` of one policy and outcome, as [`Recorded`] names it.
pub fn decisions(policy: &str, outcome: &str) -> String {
    format!("ratelimit_decisions_total{{policy={policy},outcome={outcome}}}")
}

/// A map from `(name, value)` pairs, to compare with [`Recorded::counters`].
pub fn expect<const N: usize>(pairs: [(String, u64); N]) -> BTreeMap<String, u64> {
    pairs.into_iter().collect()
}

/// The Prometheus exporter's recorder for this thread.
pub struct Prometheus {
    recorder: &'static PrometheusRecorder,
    _guard: LocalRecorderGuard<'static>,
}

impl Prometheus {
    /// Installs a fresh exporter recorder as this thread's (leaked).
    pub fn install() -> Self {
        let recorder: &'static PrometheusRecorder =
            Box::leak(Box::new(PrometheusBuilder::new().build_recorder()));
        Self {
            recorder,
            _guard: metrics::set_default_local_recorder(recorder),
        }
    }

    /// The samples rendered now.
    pub fn samples(&self) -> Samples {
        Samples::parse(&self.recorder.handle().render())
    }
}
