//! The engine's clock: milliseconds since a fixed start. The engine reads time only through this.
//!
//! `Clock::real()` reads the monotonic clock on every call; `Clock::coarse()` returns a clock whose
//! value is advanced by whoever owns it (the server ticks it every few milliseconds), so a cache hit
//! costs one atomic load instead of a system call. TTLs are seconds long; a few milliseconds of
//! staleness in the clock do not matter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Milliseconds since the clock's start.
#[derive(Clone, Debug)]
pub struct Clock {
    start: Instant,
    coarse: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// Reads the monotonic clock on every call.
    pub fn real() -> Self {
        Self {
            start: Instant::now(),
            coarse: None,
        }
    }

    /// A clock that only moves when [`tick`](Self::tick) is called.
    pub fn coarse() -> Self {
        Self {
            start: Instant::now(),
            coarse: Some(Arc::new(AtomicU64::new(0))),
        }
    }

    /// Now, in milliseconds since the start.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        match &self.coarse {
            Some(t) => t.load(Ordering::Relaxed),
            None => millis(self.start.elapsed()),
        }
    }

    /// Advances a coarse clock to the real time (no-op for a real clock).
    pub fn tick(&self) {
        if let Some(t) = &self.coarse {
            t.store(millis(self.start.elapsed()), Ordering::Relaxed);
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
    fn a_real_clock_moves_by_itself() {
        let c = Clock::real();
        let t0 = c.now_ms();
        std::thread::sleep(Duration::from_millis(20));
        assert!(c.now_ms() >= t0 + 20);
    }
}
