//! Background loops that stop on cancellation. Cancellation is seen while waiting, never in the
//! middle of a step, so a step (a poll, a file check, a lease renewal) always completes.

use std::future::Future;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Waits `wait`, or less if `stop` is cancelled first. Returns `true` when stopped.
pub async fn sleep_or_stop(stop: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(wait) => false,
    }
}

/// Runs `step` at once and again after each wait it returns, until `stop` is cancelled.
pub async fn repeat<F, Fut>(stop: &CancellationToken, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Duration>,
{
    loop {
        let wait = step().await;
        if sleep_or_stop(stop, wait).await {
            return;
        }
    }
}

/// Runs `tick` every `period`, the first time one period from now, until `stop` is cancelled. A
/// late tick delays the ones after it rather than bunching them.
pub async fn every<F, Fut>(period: Duration, stop: &CancellationToken, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        tick().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn every_ticks_once_per_period_from_one_period_on_and_stops() {
        let stop = CancellationToken::new();
        let n = Arc::new(AtomicU32::new(0));
        let task = {
            let (stop, n) = (stop.clone(), n.clone());
            tokio::spawn(async move {
                every(Duration::from_secs(10), &stop, || async {
                    n.fetch_add(1, Ordering::SeqCst);
                })
                .await;
            })
        };
        tokio::time::sleep(Duration::from_millis(9_999)).await;
        assert_eq!(
            n.load(Ordering::SeqCst),
            0,
            "nothing before the first period"
        );
        tokio::time::sleep(Duration::from_millis(30_500)).await;
        assert_eq!(n.load(Ordering::SeqCst), 4, "at 10, 20, 30 and 40 s");
        stop.cancel();
        task.await.expect("the loop ends");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(n.load(Ordering::SeqCst), 4, "no tick after the stop");
    }

    #[tokio::test(start_paused = true)]
    async fn repeat_runs_at_once_then_waits_what_each_step_returns() {
        let stop = CancellationToken::new();
        let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let start = tokio::time::Instant::now();
        let task = {
            let (stop, runs) = (stop.clone(), runs.clone());
            tokio::spawn(async move {
                let mut waits = [1u64, 5, 2].into_iter().cycle();
                repeat(&stop, || {
                    runs.lock().expect("lock").push(start.elapsed().as_secs());
                    let wait = Duration::from_secs(waits.next().unwrap_or(1));
                    async move { wait }
                })
                .await;
            })
        };
        tokio::time::sleep(Duration::from_millis(8_500)).await;
        stop.cancel();
        task.await.expect("the loop ends");
        assert_eq!(*runs.lock().expect("lock"), vec![0, 1, 6, 8]);
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_or_stop_says_whether_it_was_stopped() {
        let stop = CancellationToken::new();
        assert!(!sleep_or_stop(&stop, Duration::from_secs(1)).await);
        stop.cancel();
        let before = tokio::time::Instant::now();
        assert!(sleep_or_stop(&stop, Duration::from_secs(3600)).await);
        assert!(before.elapsed() < Duration::from_secs(1));
    }
}
