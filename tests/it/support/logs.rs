//! Log capture: [`capture_logs`] returns a [`Logs`] that collects the
//! crate's events (debug and up) logged on the calling test's tokio runtime,
//! and reads them back.
//!
//! The `tracing` subscriber is process-wide and installed once, but every
//! test runs on its own runtime: an event is kept only for the capture of
//! the runtime it was logged on (its worker threads and the tasks it
//! spawned), so the other tests' lines never mix in. Captures themselves
//! take turns (a `Logs` holds the turn): two at once lost span lines.

use std::io::Write;
use std::sync::{Mutex, MutexGuard, Once};

use tokio::runtime::{Handle, Id};
use tracing::subscriber::Interest;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{Layer, filter};

/// The runtimes capturing, each with what was logged on it.
static CAPTURES: Mutex<Vec<(Id, Vec<u8>)>> = Mutex::new(Vec::new());

fn captures() -> MutexGuard<'static, Vec<(Id, Vec<u8>)>> {
    CAPTURES.lock().unwrap_or_else(|e| e.into_inner())
}

/// The runtime of the calling thread, if it is capturing.
fn capturing() -> Option<Id> {
    let id = Handle::try_current().ok()?.id();
    captures().iter().any(|(r, _)| *r == id).then_some(id)
}

/// Appends to the capture of the runtime logging.
struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(id) = capturing()
            && let Some((_, log)) = captures().iter_mut().find(|(r, _)| *r == id)
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
/// what is logged on the calling test's runtime. Call it from the test
/// (inside its runtime) and keep the returned [`Logs`].
pub fn capture_logs() -> Logs {
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // The crate's events, debug and up, of capturing runtimes only (the
        // others are not even formatted). Whether a runtime captures changes
        // from event to event: the callsites' interest is `sometimes`.
        let only_capturing = filter::dynamic_filter_fn(|_, _| capturing().is_some())
            .with_callsite_filter(|meta| {
                if meta.target().starts_with("tower_redis_ratelimit")
                    && *meta.level() <= tracing::Level::DEBUG
                {
                    Interest::sometimes()
                } else {
                    Interest::never()
                }
            });
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .with_filter(only_capturing);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
    });
    let runtime = Handle::try_current()
        .expect("capture_logs runs inside the test's tokio runtime")
        .id();
    let mut captures = captures();
    assert!(
        captures.iter().all(|(r, _)| *r != runtime),
        "one capture per test"
    );
    captures.push((runtime, Vec::new()));
    Logs {
        runtime,
        _turn: turn,
    }
}

impl Logs {
    /// Everything captured so far.
    pub fn text(&self) -> String {
        let captures = captures();
        let (_, log) = captures
            .iter()
            .find(|(r, _)| *r == self.runtime)
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
        captures().retain(|(r, _)| *r != self.runtime);
    }
}
