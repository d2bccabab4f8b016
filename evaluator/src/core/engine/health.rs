//! Health of the connection to the state source: CONNECTING until the first success, SERVING,
//! DEGRADED after 3 consecutive failures; the kill poller's backoff multiplier; and the fast
//! path while the source is down ([`Health::admit`]).
//!
//! Lock-free: evaluations record outcomes on the hot path.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use pbflags_proto::v1::EvaluatorStatus;

use crate::core::clock::Clock;
use crate::metrics::Metrics;

/// Consecutive failures at which status turns DEGRADED.
pub const DEGRADED_AFTER: u32 = 3;

/// While DEGRADED, one source call per this many milliseconds is let through as a probe.
pub const PROBE_INTERVAL_MS: u64 = 500;

const CONNECTING: u32 = EvaluatorStatus::Connecting as u32;
const SERVING: u32 = EvaluatorStatus::Serving as u32;
const DEGRADED: u32 = EvaluatorStatus::Degraded as u32;

/// What a cache miss may do about the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Call it and wait for the answer (the source is not known down).
    Call,
    /// Call it in the background, as this interval's probe, and answer at once.
    Probe,
    /// Answer at once without calling it.
    Refuse,
}

/// Tracks source health.
pub struct Health {
    status: AtomicU32,
    failures: AtomicU32,
    /// Clock millisecond of the last success, plus one (0 = never).
    last_success: AtomicU64,
    /// Clock millisecond of the last probe let through while DEGRADED, plus one (0 = never).
    last_probe: AtomicU64,
    clock: Clock,
    metrics: Option<Metrics>,
}

impl Health {
    /// A tracker in CONNECTING state, timing contact with `clock`; `metrics` mirrors the failure
    /// count if given.
    pub fn new(clock: Clock, metrics: Option<Metrics>) -> Self {
        Self {
            status: AtomicU32::new(CONNECTING),
            failures: AtomicU32::new(0),
            last_success: AtomicU64::new(0),
            last_probe: AtomicU64::new(0),
            clock,
            metrics,
        }
    }

    /// A source call succeeded: SERVING, failures reset.
    pub fn record_success(&self) {
        let ms = self.clock.now_ms().min(u64::MAX - 1);
        self.last_success.store(ms + 1, Ordering::Relaxed);
        // Skip the stores when already healthy: this runs on every fetch.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.status.load(Ordering::Relaxed) != SERVING {
            self.status.store(SERVING, Ordering::Relaxed);
        }
        if let Some(m) = &self.metrics {
            m.consecutive_failures.set(0);
        }
    }

    /// A source call failed: after [`DEGRADED_AFTER`] in a row, DEGRADED (from any state).
    pub fn record_failure(&self) {
        let n = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if n >= DEGRADED_AFTER {
            self.status.store(DEGRADED, Ordering::Relaxed);
            // The next probe waits a full interval from this failure, not from the start of the
            // call that failed (which may have taken the whole fetch timeout).
            let now = self.clock.now_ms().min(u64::MAX - 1) + 1;
            self.last_probe.store(now, Ordering::Relaxed);
        }
        if let Some(m) = &self.metrics {
            m.consecutive_failures.set(i64::from(n));
        }
    }

    /// What a cache miss may do about the source now. While fewer than [`DEGRADED_AFTER`] calls
    /// in a row have failed: [`Admission::Call`]. While DEGRADED, one miss per
    /// [`PROBE_INTERVAL_MS`] after the last failure or probe gets [`Admission::Probe`] (the call
    /// runs in the background) and every other one [`Admission::Refuse`], so no miss waits out
    /// the fetch timeout: each answers at once from last-known values or compiled defaults. A
    /// successful call (a probe, or the kill poller's, which is never held back) ends the fast
    /// path.
    #[inline]
    pub fn admit(&self) -> Admission {
        if self.failures.load(Ordering::Relaxed) < DEGRADED_AFTER {
            return Admission::Call;
        }
        let now = self.clock.now_ms().min(u64::MAX - 1) + 1;
        let last = self.last_probe.load(Ordering::Relaxed);
        let probe = (last == 0 || now.saturating_sub(last) >= PROBE_INTERVAL_MS)
            && self
                .last_probe
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if probe {
            Admission::Probe
        } else {
            Admission::Refuse
        }
    }

    /// The current status.
    pub fn status(&self) -> EvaluatorStatus {
        match self.status.load(Ordering::Relaxed) {
            SERVING => EvaluatorStatus::Serving,
            DEGRADED => EvaluatorStatus::Degraded,
            _ => EvaluatorStatus::Connecting,
        }
    }

    /// Consecutive failures so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Whole seconds since the last success; 0 if there has never been one.
    pub fn seconds_since_contact(&self) -> u64 {
        match self.last_success.load(Ordering::Relaxed) {
            0 => 0,
            t => self.clock.now_ms().saturating_add(1).saturating_sub(t) / 1000,
        }
    }

    /// Multiplier on the kill-poll interval for the current failure count.
    pub fn backoff_multiplier(&self) -> u32 {
        backoff_multiplier(self.consecutive_failures())
    }
}

/// 1× with no failures, 2× for 1–2, 4× for 3–5, 8× for 6 or more (the cap).
pub fn backoff_multiplier(failures: u32) -> u32 {
    match failures {
        0 => 1,
        1..=2 => 2,
        3..=5 => 4,
        _ => 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_connecting_with_no_failures_and_no_contact() {
        let h = Health::new(Clock::manual(), None);
        assert_eq!(h.status(), EvaluatorStatus::Connecting);
        assert_eq!(h.consecutive_failures(), 0);
        assert_eq!(h.seconds_since_contact(), 0);
        assert_eq!(h.backoff_multiplier(), 1);
    }

    #[test]
    fn success_makes_it_serving() {
        let h = Health::new(Clock::manual(), None);
        h.record_success();
        assert_eq!(h.status(), EvaluatorStatus::Serving);
        assert_eq!(h.seconds_since_contact(), 0);
    }

    #[test]
    fn contact_age_counts_whole_seconds_on_the_clock() {
        let clock = Clock::manual();
        let h = Health::new(clock.clone(), None);
        clock.advance(std::time::Duration::from_secs(7));
        h.record_success();
        clock.advance(std::time::Duration::from_millis(2999));
        assert_eq!(h.seconds_since_contact(), 2);
        clock.advance(std::time::Duration::from_millis(1));
        assert_eq!(h.seconds_since_contact(), 3);
        h.record_success();
        assert_eq!(h.seconds_since_contact(), 0);
    }

    #[test]
    fn one_or_two_failures_keep_serving_and_three_degrade() {
        let h = Health::new(Clock::manual(), None);
        h.record_success();
        h.record_failure();
        h.record_failure();
        assert_eq!(h.status(), EvaluatorStatus::Serving);
        h.record_failure();
        assert_eq!(h.status(), EvaluatorStatus::Degraded);
    }

    #[test]
    fn three_failures_degrade_even_while_connecting() {
        let h = Health::new(Clock::manual(), None);
        for _ in 0..3 {
            h.record_failure();
        }
        assert_eq!(h.status(), EvaluatorStatus::Degraded);
    }

    #[test]
    fn a_single_success_after_five_failures_resets() {
        let m = Metrics::new();
        let h = Health::new(Clock::manual(), Some(m.clone()));
        for _ in 0..5 {
            h.record_failure();
        }
        assert_eq!(m.consecutive_failures.get(), 5);
        h.record_success();
        assert_eq!(
            (h.status(), h.consecutive_failures()),
            (EvaluatorStatus::Serving, 0)
        );
        assert_eq!(m.consecutive_failures.get(), 0);
    }

    #[test]
    fn while_degraded_one_call_per_probe_interval_is_admitted() {
        use Admission::{Call, Probe, Refuse};
        let clock = Clock::manual();
        let h = Health::new(clock.clone(), None);
        h.record_success();
        for _ in 0..DEGRADED_AFTER - 1 {
            h.record_failure();
            assert_eq!(h.admit(), Call, "not yet degraded: every call goes through");
        }
        h.record_failure();
        assert_eq!(
            h.admit(),
            Refuse,
            "a full interval after the failure that degraded it"
        );
        clock.advance(std::time::Duration::from_millis(PROBE_INTERVAL_MS));
        assert_eq!(h.admit(), Probe, "the first probe");
        assert_eq!(
            [h.admit(), h.admit()],
            [Refuse, Refuse],
            "the rest fail fast"
        );
        // The probe fails after a while: the next one is an interval after that failure.
        clock.advance(std::time::Duration::from_millis(PROBE_INTERVAL_MS));
        h.record_failure();
        assert_eq!(h.admit(), Refuse);
        clock.advance(std::time::Duration::from_millis(PROBE_INTERVAL_MS - 1));
        assert_eq!(h.admit(), Refuse);
        clock.advance(std::time::Duration::from_millis(1));
        assert_eq!(h.admit(), Probe, "the next probe");
        assert_eq!(h.admit(), Refuse);
        h.record_success();
        assert_eq!(
            [h.admit(), h.admit()],
            [Call, Call],
            "a success ends the fast path"
        );
    }

    #[test]
    fn backoff_follows_the_v0_6_table() {
        for (f, m) in [
            (0, 1),
            (1, 2),
            (2, 2),
            (3, 4),
            (4, 4),
            (5, 4),
            (6, 8),
            (10, 8),
            (100, 8),
        ] {
            assert_eq!(backoff_multiplier(f), m, "{f} failures");
        }
    }
}
