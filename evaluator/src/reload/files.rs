//! One file-watching mechanism for everything the evaluator reloads from disk (the descriptor set,
//! TLS certificates): events on the files' directories, debounced; a periodic poll as a safety net
//! behind them; optionally SIGHUP. Each trigger runs the caller's check on a blocking thread, and
//! checks compare content, so a spurious trigger costs one read.
//!
//! Directories, not files, are watched: a ConfigMap or Secret volume updates by writing a new
//! timestamped directory, pointing a `..data_tmp` symlink at it and renaming that over `..data`; the
//! file path itself (`descriptors.pb -> ..data/descriptors.pb`) never changes, so a watch on the
//! file sees nothing.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What started a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A file event in a watched directory.
    FileEvent,
    /// The periodic poll.
    Poll,
    /// SIGHUP.
    Signal,
    /// An explicit call.
    Manual,
}

impl Trigger {
    /// The trigger's name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::FileEvent => "file_event",
            Trigger::Poll => "poll",
            Trigger::Signal => "sighup",
            Trigger::Manual => "manual",
        }
    }
}

/// How files are watched.
#[derive(Debug, Clone)]
pub struct FileWatch {
    /// The files; their directories are watched.
    pub paths: Vec<PathBuf>,
    /// How often to check regardless of events.
    pub poll_interval: Duration,
    /// Quiet time after the last file event before checking.
    pub debounce: Duration,
    /// Watch the directories for file events (off: poll, and SIGHUP if on).
    pub fs_events: bool,
    /// Check on SIGHUP.
    pub sighup: bool,
}

impl FileWatch {
    /// Starts watching; `check` runs on a blocking thread for every trigger until `stop` is
    /// cancelled. File-event and SIGHUP subscriptions are in place when this returns, so a change
    /// made after it is seen.
    pub fn spawn<F>(self, check: F, stop: CancellationToken) -> JoinHandle<()>
    where
        F: Fn(Trigger) + Send + Sync + 'static,
    {
        let (tx, rx) = mpsc::channel::<()>(1);
        let watcher = if self.fs_events {
            self.watch_directories(tx)
        } else {
            None
        };
        let hup = if self.sighup {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading on file events and polls only");
                    None
                }
            }
        } else {
            None
        };
        tokio::spawn(self.run(Arc::new(check), rx, hup, watcher, stop))
    }

    fn watch_directories(&self, tx: mpsc::Sender<()>) -> Option<RecommendedWatcher> {
        let dirs: BTreeSet<PathBuf> = self
            .paths
            .iter()
            .map(|p| match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
                _ => PathBuf::from("."),
            })
            .collect();
        let handler = move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                // A full channel already holds a pending wake-up; dropping this one loses nothing.
                let _ = tx.try_send(());
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch for file events; polling only");
                return None;
            }
        };
        for dir in &dirs {
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; polling only");
                return None;
            }
        }
        Some(watcher)
    }

    async fn run<F>(
        self,
        check: Arc<F>,
        mut events: mpsc::Receiver<()>,
        mut hup: Option<tokio::signal::unix::Signal>,
        _watcher: Option<RecommendedWatcher>,
        stop: CancellationToken,
    ) where
        F: Fn(Trigger) + Send + Sync + 'static,
    {
        let mut poll = tokio::time::interval(self.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await; // the first tick is immediate; the caller loaded at start-up
        loop {
            let trigger = tokio::select! {
                () = stop.cancelled() => return,
                Some(()) = events.recv() => {
                    // Debounce: wait until events stop for `debounce`.
                    while let Ok(Some(())) = tokio::time::timeout(self.debounce, events.recv()).await {}
                    Trigger::FileEvent
                }
                _ = poll.tick() => Trigger::Poll,
                Some(()) = recv_signal(&mut hup) => Trigger::Signal,
            };
            let check = check.clone();
            // Reading and parsing files takes milliseconds: keep it off the async workers.
            if let Err(e) = tokio::task::spawn_blocking(move || check(trigger)).await {
                tracing::error!(error = %e, trigger = trigger.as_str(), "file check failed");
            }
        }
    }
}

async fn recv_signal(sig: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match sig {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
