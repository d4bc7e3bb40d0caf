//! The outcome of one rate-limit check, and the [`Ticket`] that refunds an
//! admitted request.

use std::fmt;
use std::time::{Duration, Instant};

use crate::key::Key;

/// The state of one quota after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaStatus {
    /// Units allowed per window.
    pub limit: u64,
    /// The window length.
    pub window: Duration,
    /// Units still available now (after this request, if it was admitted).
    pub remaining: u64,
    /// Time until the quota is fully restored if no further request arrives
    /// (zero when nothing is counted).
    pub reset_after: Duration,
}

/// The outcome of a check: admitted or denied, with every quota's state.
///
/// An admission by a backend also carries what a later refund needs
/// ([`Decision::ticket`]). Two decisions are equal when they say the same
/// (outcome, quotas, retry-after): the ticket is not compared.
#[derive(Clone)]
pub struct Decision {
    quotas: Statuses,
    denied: Option<(usize, Duration)>,
    /// Set by the backend that admitted the request (cost above zero).
    stamp: Option<Stamp>,
    /// The client the layer checked, kept with a stamped decision (for a
    /// refund after the response).
    client: Option<Key>,
}

/// Leaves the client out (an IP address or an API key: never in logs).
impl fmt::Debug for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decision")
            .field("quotas", &self.quotas())
            .field("denied", &self.denied)
            .field("stamp", &self.stamp)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Decision {
    fn eq(&self, other: &Self) -> bool {
        self.quotas() == other.quotas() && self.denied == other.denied
    }
}

impl Eq for Decision {}

/// Where an admitted request was counted: what a refund needs to find what
/// it took, beside the decision's quota statuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// The units admitted.
    pub cost: u64,
    pub origin: Origin,
}

/// Which kind of backend admitted a request, and how it finds it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The in-process model: the instant (µs on its clock) of the decision.
    Memory { at: u64 },
    /// Redis: the request nonce (sliding log: its entries' members end with
    /// it), and when the decision was received (to find, on Redis' clock,
    /// the fixed window a counter counted it in).
    Redis {
        nonce: Option<Nonce>,
        received: Instant,
    },
}

/// A Redis request nonce (made by the Redis backend: `<instance>.<sequence>`
/// in hex), held in place: two 64-bit numbers in hex and a dot. Kept in a
/// sliding-log admission's ticket, which a refund finds its entry by.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Nonce {
    bytes: [u8; Nonce::MAX],
    len: u8,
}

impl Nonce {
    /// The longest nonce: 16 hex digits, a dot, 16 hex digits.
    const MAX: usize = 33;

    /// No nonce (an empty argument).
    pub(crate) const NONE: Nonce = Nonce {
        bytes: [0; Nonce::MAX],
        len: 0,
    };

    /// The nonce's text.
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).expect("hex digits and a dot")
    }

    /// Appends `n` in lowercase hex, without leading zeros (as `{:x}`).
    pub(crate) fn push_hex(&mut self, n: u64) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digits = (16 - n.leading_zeros() as usize / 4).max(1);
        let at = usize::from(self.len);
        for (i, byte) in self.bytes[at..at + digits].iter_mut().enumerate() {
            let shift = 4 * (digits - 1 - i);
            *byte = HEX[((n >> shift) & 0xf) as usize];
        }
        self.len += digits as u8;
    }

    /// Appends one byte (the dot).
    pub(crate) fn push(&mut self, byte: u8) {
        self.bytes[usize::from(self.len)] = byte;
        self.len += 1;
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// What a refund needs to give back an admitted request's cost
/// ([`Backend::refund`](crate::Backend::refund),
/// [`Admin::refund`](crate::Admin::refund)), from
/// [`Decision::ticket`]. Opaque, small, cheap to keep (e.g. in a request's
/// extensions until its response is known), `Send + Sync + 'static`.
///
/// A ticket belongs to the backend that made its decision: refunded on
/// another kind of backend it gives back nothing (that backend took
/// nothing). Refund each admitted request once: a second refund of one
/// ticket is a no-op for a sliding log in Redis, but gives back again on
/// the counter and GCRA (within the same bounds as the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub(crate) stamp: Stamp,
    /// Each quota's reset (µs) right after the admission, in policy order:
    /// for the counter on Redis, the offset into the fixed window at which
    /// the request was counted (`2 W - reset`).
    pub(crate) resets: Vec<u64>,
}

impl Ticket {
    /// The units the request was admitted for: the most a refund of this
    /// ticket gives back.
    pub fn cost(&self) -> u64 {
        self.stamp.cost
    }
}

/// A decision's quota states: in place for the usual single quota (no
/// allocation per decision), else in a vector.
#[derive(Clone)]
pub(crate) enum Statuses {
    One(QuotaStatus),
    Many(Vec<QuotaStatus>),
}

impl Statuses {
    fn as_slice(&self) -> &[QuotaStatus] {
        match self {
            Statuses::One(status) => std::slice::from_ref(status),
            Statuses::Many(statuses) => statuses,
        }
    }
}

/// One status in place, several (or none) in a vector.
impl FromIterator<QuotaStatus> for Statuses {
    fn from_iter<I: IntoIterator<Item = QuotaStatus>>(iter: I) -> Self {
        let mut iter = iter.into_iter();
        let Some(first) = iter.next() else {
            return Statuses::Many(Vec::new());
        };
        match iter.next() {
            None => Statuses::One(first),
            Some(second) => {
                let mut all = Vec::with_capacity(2 + iter.size_hint().0);
                all.extend([first, second]);
                all.extend(iter);
                Statuses::Many(all)
            }
        }
    }
}

impl Decision {
    /// An admitted request.
    pub fn allowed(quotas: Vec<QuotaStatus>) -> Self {
        Self {
            quotas: Statuses::Many(quotas),
            denied: None,
            stamp: None,
            client: None,
        }
    }

    /// A denied request: `quota` is the index of the quota that denied it (the
    /// one with the longest wait) and `retry_after` the time after which the same
    /// request would be admitted if nothing else arrives.
    pub fn denied(quotas: Vec<QuotaStatus>, quota: usize, retry_after: Duration) -> Self {
        Self {
            quotas: Statuses::Many(quotas),
            denied: Some((quota, retry_after)),
            stamp: None,
            client: None,
        }
    }

    /// [`Decision::allowed`] or (`denied`: the quota's index and the
    /// retry-after) [`Decision::denied`], from the backends: a single
    /// quota's status is kept in place.
    pub(crate) fn new(quotas: Statuses, denied: Option<(usize, Duration)>) -> Self {
        Self {
            quotas,
            denied,
            stamp: None,
            client: None,
        }
    }

    /// This decision, marked as the admission of `cost` units by the
    /// backend of `origin` (nothing to mark for a denial or a cost of 0).
    pub(crate) fn stamped(mut self, cost: u64, origin: Origin) -> Self {
        if self.is_allowed() && cost > 0 {
            self.stamp = Some(Stamp { cost, origin });
        }
        self
    }

    /// This decision with the client it was made for, kept if it has a
    /// ticket (else dropped): what a refund by the layer needs besides.
    pub(crate) fn with_client(mut self, key: Key) -> Self {
        if self.stamp.is_some() {
            self.client = Some(key);
        }
        self
    }

    /// This decision with the client it was made for, kept whatever it
    /// took: what a charge after the response needs.
    pub(crate) fn keep_client(mut self, key: Key) -> Self {
        self.client = Some(key);
        self
    }

    /// The client kept by [`Decision::with_client`] or
    /// [`Decision::keep_client`].
    pub(crate) fn client(&self) -> Option<&Key> {
        self.client.as_ref()
    }

    /// What a refund of this admitted request needs
    /// ([`Backend::refund`](crate::Backend::refund)): `Some` for a request
    /// that a backend admitted with a cost above zero, `None` for a denial,
    /// a request of cost 0 (it took nothing), or a decision made otherwise
    /// (`Decision::allowed` in a custom backend, a test).
    pub fn ticket(&self) -> Option<Ticket> {
        let stamp = self.stamp.clone()?;
        let resets = self
            .quotas()
            .iter()
            .map(|q| u64::try_from(q.reset_after.as_micros()).unwrap_or(u64::MAX))
            .collect();
        Some(Ticket { stamp, resets })
    }

    /// Whether the request was admitted.
    pub fn is_allowed(&self) -> bool {
        self.denied.is_none()
    }

    /// Every quota's state, in policy order.
    pub fn quotas(&self) -> &[QuotaStatus] {
        self.quotas.as_slice()
    }

    /// The index of the quota that denied the request.
    pub fn denied_by(&self) -> Option<usize> {
        self.denied.map(|(i, _)| i)
    }

    /// How long to wait before retrying, when denied.
    pub fn retry_after(&self) -> Option<Duration> {
        self.denied.map(|(_, d)| d)
    }

    /// The quota closest to exhaustion: the denying one, else the one with the
    /// fewest remaining units (ties: the longest reset).
    pub fn tightest(&self) -> Option<&QuotaStatus> {
        if let Some(i) = self.denied_by() {
            return self.quotas().get(i);
        }
        self.quotas().iter().min_by(|a, b| {
            a.remaining
                .cmp(&b.remaining)
                .then(b.reset_after.cmp(&a.reset_after))
        })
    }
}

/// Why a request is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// A quota is exhausted (HTTP 429, gRPC `RESOURCE_EXHAUSTED`).
    Limited,
    /// The backend could not decide and the policy fails closed
    /// (HTTP 503, gRPC `UNAVAILABLE`).
    Unavailable,
    /// The request has no key and the policy denies keyless requests
    /// (HTTP 403, gRPC `PERMISSION_DENIED`).
    MissingKey,
    /// The request costs more than the policy's
    /// [max cost](crate::Policy::max_cost) allows: it can never be admitted,
    /// so it is refused without asking the backend (HTTP 413, gRPC
    /// `INVALID_ARGUMENT`, no retry time).
    CostTooHigh {
        /// The request's cost, as the policy's cost function computed it.
        cost: u64,
        /// The largest cost the policy admits for one request.
        max_cost: u64,
    },
    /// The client is on the policy's [deny-list](crate::Policy::deny):
    /// refused without asking the backend (HTTP 403, gRPC
    /// `PERMISSION_DENIED`, no retry time: waiting does not help).
    DenyListed,
}

/// A policy of one layer: its index in the layer's compiled policy list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PolicyId(pub(crate) usize);

/// What the layer does with one request: the single result of the decision
/// pipeline (see `limiter.rs`).
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Call the inner service; add this decision's rate-limit headers.
    Allow(PolicyId, Decision),
    /// Call the inner service without rate-limit headers: the request is not
    /// limited (exempt, no policy) or the backend failed open.
    AllowUnlimited,
    /// Answer with a rejection instead of calling the inner service.
    Deny(PolicyId, RejectReason, Option<Decision>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_come_with_admissions_and_debug_never_shows_the_client() {
        let status = QuotaStatus {
            limit: 5,
            window: Duration::from_secs(60),
            remaining: 4,
            reset_after: Duration::from_secs(60),
        };
        let admitted = Decision::allowed(vec![status]).stamped(1, Origin::Memory { at: 7 });
        let ticket = admitted.ticket().unwrap();
        assert_eq!(ticket.cost(), 1);
        assert_eq!(ticket.resets, [60_000_000]);
        let kept = admitted.clone().with_client(Key::new("203.0.113.9"));
        assert_eq!(kept.client(), Some(&Key::new("203.0.113.9")));
        assert!(!format!("{kept:?}").contains("203.0.113.9"), "{kept:?}");
        // Equal decisions say the same, whatever their tickets.
        assert_eq!(kept, Decision::allowed(vec![status]));
        // Nothing taken, nothing to refund, no client kept.
        for decision in [
            Decision::allowed(vec![status]).stamped(0, Origin::Memory { at: 7 }),
            Decision::denied(vec![status], 0, Duration::from_secs(1))
                .stamped(1, Origin::Memory { at: 7 }),
            Decision::allowed(vec![status]),
        ] {
            assert!(decision.ticket().is_none());
            assert!(decision.with_client(Key::new("x")).client().is_none());
        }
    }

    fn status(remaining: u64) -> QuotaStatus {
        QuotaStatus {
            limit: 10,
            window: Duration::from_secs(1),
            remaining,
            reset_after: Duration::from_millis(remaining),
        }
    }

    /// A decision whose statuses are kept in place is the one made from a
    /// vector: equal, printed alike.
    #[test]
    fn statuses_in_place_or_in_a_vector_are_one_decision() {
        let retry = Some((1, Duration::from_secs(2)));
        for n in 0..4u64 {
            let statuses: Vec<QuotaStatus> = (0..n).map(status).collect();
            let in_place: Statuses = statuses.iter().copied().collect();
            assert_eq!(matches!(in_place, Statuses::One(_)), n == 1);
            let made = Decision::new(in_place.clone(), None);
            let allowed = Decision::allowed(statuses.clone());
            assert_eq!(made, allowed);
            assert_eq!(format!("{made:?}"), format!("{allowed:?}"));
            assert_eq!(made.quotas(), statuses);
            let made = Decision::new(in_place, retry);
            let denied = Decision::denied(statuses, 1, Duration::from_secs(2));
            assert_eq!(made, denied);
            assert_eq!(format!("{made:?}"), format!("{denied:?}"));
            assert_eq!(made.tightest(), denied.tightest());
        }
        assert_eq!(
            format!("{:?}", Decision::allowed(vec![status(3)])),
            "Decision { quotas: [QuotaStatus { limit: 10, window: 1s, remaining: 3, \
             reset_after: 3ms }], denied: None, stamp: None, .. }"
        );
    }
}
