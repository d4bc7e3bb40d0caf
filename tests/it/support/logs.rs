//! Log capture: [`capture_logs`] returns a [`Logs`] that collects the
//! crate's events (debug and up) logged on the calling test's tokio runtime,
//! and reads them back; [`capture_all_logs`] collects every target's events
//! at TRACE with span openings and closings.
//!
//! The `tracing` subscriber is process-wide and installed once, but every
//! test runs on its own runtime: an event is kept only for the capture of
//! the runtime it was logged on (its worker threads and the tasks it
//! spawned), so the other tests' lines never mix in. Captures themselves
//! take turns (a `Logs` holds the turn): two at once lost span lines.
//!
//! Tests never install a subscriber of their own: a thread's scoped
//! subscriber beside the global one loses events whenever another test
//! registers a callsite meanwhile (`tracing` caches each callsite's interest
//! and rebuilds it racily), which six tests at a time made routine.

use std::io::Write;
use std::sync::{Mutex, MutexGuard, Once};

use tokio::runtime::{Handle, Id};
use tracing::subscriber::Interest;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{Layer, filter};

/// What a capture keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detail {
    /// The crate's events, debug and up.
    Crate,
    /// Every target's events at TRACE, span openings and closings included.
    Everything,
}

/// The runtimes capturing, each with its detail and what was logged on it.
static CAPTURES: Mutex<Vec<(Id, Detail, Vec<u8>)>> = Mutex::new(Vec::new());

fn captures() -> MutexGuard<'static, Vec<(Id, Detail, Vec<u8>)>> {
    CAPTURES.lock().unwrap_or_else(|e| e.into_inner())
}

/// The runtime of the calling thread, if it captures with `detail`.
fn capturing(detail: Detail) -> Option<Id> {
    let id = Handle::try_current().ok()?.id();
    captures()
        .iter()
        .any(|(r, d, _)| *r == id && *d == detail)
        .then_some(id)
}

/// Appends to the capture of the runtime logging, if it keeps `.0`.
struct LogWriter(Detail);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(id) = capturing(self.0)
            && let Some((_, _, log)) = captures().iter_mut().find(|(r, _, _)| *r == id)
        {
            log.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the crate logged on this test's runtime since [`capture_logs`];
/// the capture ends when it is dropped.
#[must_use = "the capture ends when `Logs` is dropped"]
pub struct Logs {
    runtime: Id,
    /// One capture at a time: two at once lost each other's span lines
    /// (`log_privacy` beside `missing_identity`).
    _turn: MutexGuard<'static, ()>,
}

/// Installs the capturing subscriber (the first time) and starts capturing
/// what the crate logs (debug and up) on the calling test's runtime. Call
/// it from the test (inside its runtime) and keep the returned [`Logs`].
pub fn capture_logs() -> Logs {
    capture(Detail::Crate)
}

/// Like [`capture_logs`], but every target's events at TRACE, with span
/// openings and closings (`FmtSpan::NEW | FmtSpan::CLOSE`).
pub fn capture_all_logs() -> Logs {
    capture(Detail::Everything)
}

fn capture(detail: Detail) -> Logs {
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // One layer per detail, each writing for the runtimes capturing
        // with it only (the others' events are not even formatted). Whether
        // a runtime captures changes from event to event: the callsites'
        // interest is `sometimes`.
        let crate_only = filter::dynamic_filter_fn(|_, _| capturing(Detail::Crate).is_some())
            .with_callsite_filter(|meta| {
                if meta.target().starts_with("tower_redis_ratelimit")
                    && *meta.level() <= tracing::Level::DEBUG
                {
                    Interest::sometimes()
                } else {
                    Interest::never()
                }
            });
        let crate_layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(|| LogWriter(Detail::Crate))
            .with_filter(crate_only);
        let everything = filter::dynamic_filter_fn(|_, _| capturing(Detail::Everything).is_some());
        let everything_layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE)
            .with_writer(|| LogWriter(Detail::Everything))
            .with_filter(everything);
        let subscriber = tracing_subscriber::registry()
            .with(crate_layer)
            .with(everything_layer);
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
    });
    let runtime = Handle::try_current()
        .expect("capture_logs runs inside the test's tokio runtime")
        .id();
    let mut captures = captures();
    assert!(
        captures.iter().all(|(r, _, _)| *r != runtime),
        "one capture per test"
    );
    captures.push((runtime, detail, Vec::new()));
    Logs {
        runtime,
        _turn: turn,
    }
}

impl Logs {
    /// Everything captured so far.
    pub fn text(&self) -> String {
        let captures = captures();
        let (_, _, log) = captures
            .iter()
            .find(|(r, _, _)| *r == self.runtime)
            .expect("capturing");
        String::from_utf8_lossy(log).into_owned()
    }

    /// How many captured lines contain `needle`.
    pub fn lines(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        captures().retain(|(r, _, _)| *r != self.runtime);
    }
}
