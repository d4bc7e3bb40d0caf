//! Log capture for the fault-injection tests: [`capture_logs`] installs a
//! global `tracing` subscriber that writes the crate's events (debug and up)
//! into a buffer, and [`log_lines`] counts the lines that mention something.
//!
//! The subscriber is process-wide and installed once; each
//! [`capture_logs`] empties the buffer, so tests that read it must not run
//! at the same time.
#![allow(dead_code)]

use std::io::Write;
use std::sync::{Mutex, Once};

/// Everything logged since the last [`capture_logs`].
pub static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Appends to [`LOGS`].
struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber (the first time) and empties the buffer.
pub fn capture_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "tower_redis_ratelimit=debug",
            ))
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
    });
    LOGS.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// How many captured log lines contain `needle`.
pub fn log_lines(needle: &str) -> usize {
    let logs = LOGS.lock().unwrap_or_else(|e| e.into_inner());
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|line| line.contains(needle))
        .count()
}
