//! The last error of a backend's calls: a module of its own, so that the
//! transport and the Sentinel lookups (which the transport uses) both
//! record into it without depending on each other.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

/// The last error of a backend's calls (or of its background work: a
/// Sentinel lookup), until a call succeeds: what a timed-out decision's log
/// line names as its likely cause.
#[derive(Debug, Default)]
pub(super) struct LastError {
    /// Whether `text` holds an error (read without the lock on every call).
    set: AtomicBool,
    text: Mutex<Option<String>>,
}

impl LastError {
    /// Remembers `error`.
    pub fn record(&self, error: &dyn fmt::Display) {
        let text = error.to_string();
        *self.text.lock().unwrap_or_else(PoisonError::into_inner) = Some(text);
        self.set.store(true, Ordering::Release);
    }

    /// Forgets the error: a call succeeded.
    pub fn clear(&self) {
        if self.set.swap(false, Ordering::AcqRel) {
            *self.text.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }

    /// The error, if no call succeeded since.
    pub fn get(&self) -> Option<String> {
        if !self.set.load(Ordering::Acquire) {
            return None;
        }
        self.text
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
