//! The engine's clock: milliseconds since a fixed start. The engine, its caches and its health
//! tracker read time only through this, for every expiry and every age.
//!
//! `Clock::real()` reads the monotonic clock on every call; `Clock::coarse()` returns a clock whose
//! value is advanced by whoever owns it (the server ticks it every few milliseconds), so a cache hit
//! costs one atomic load instead of a system call. TTLs are seconds long; a few milliseconds of
//! staleness in the clock do not matter. `Clock::manual()` moves only when a test advances it, so
//! no test depends on real-time margins.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Milliseconds since the clock's start.
#[derive(Clone, Debug)]
pub struct Clock {
    start: Instant,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Real,
    /// Set to the real time by [`Clock::tick`].
    Coarse(Arc<AtomicU64>),
    /// Set only by [`Clock::advance`].
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// Reads the monotonic clock on every call.
    pub fn real() -> Self {
        Self {
            start: Instant::now(),
            kind: Kind::Real,
        }
    }

    /// A clock that only moves when [`tick`](Self::tick) is called.
    pub fn coarse() -> Self {
        Self {
            start: Instant::now(),
            kind: Kind::Coarse(Arc::new(AtomicU64::new(0))),
        }
    }

    /// A clock at 0 that moves only when [`advance`](Self::advance) is called (tests).
    pub fn manual() -> Self {
        Self {
            start: Instant::now(),
            kind: Kind::Manual(Arc::new(AtomicU64::new(0))),
        }
    }

    /// Now, in milliseconds since the start.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        match &self.kind {
            Kind::Coarse(t) | Kind::Manual(t) => t.load(Ordering::Relaxed),
            Kind::Real => millis(self.start.elapsed()),
        }
    }

    /// Advances a coarse clock to the real time (no-op for the other clocks).
    pub fn tick(&self) {
        if let Kind::Coarse(t) = &self.kind {
            t.store(millis(self.start.elapsed()), Ordering::Relaxed);
        }
    }

    /// Moves a manual clock forward by `by` (no-op for the other clocks).
    pub fn advance(&self, by: Duration) {
        if let Kind::Manual(t) = &self.kind {
            t.fetch_add(millis(by), Ordering::Relaxed);
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coarse_clock_moves_only_when_ticked() {
        let c = Clock::coarse();
        let t0 = c.now_ms();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(c.now_ms(), t0);
        c.tick();
        assert!(c.now_ms() >= t0 + 20);
    }

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let c = Clock::manual();
        c.tick();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.now_ms(), 0);
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.now_ms(), 1500);
    }

    #[test]
    fn a_real_clock_moves_by_itself() {
        let c = Clock::real();
        let t0 = c.now_ms();
        std::thread::sleep(Duration::from_millis(20));
        assert!(c.now_ms() >= t0 + 20);
    }
}
