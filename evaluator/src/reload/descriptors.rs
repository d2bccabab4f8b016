//! Descriptor hot reload, on the triggers of [`super::files::FileWatch`] (file events in the
//! descriptor file's directory, a periodic poll, SIGHUP). Every trigger compares the SHA-256 of the
//! file with the serving one, so noise costs one read. A file that fails to load never replaces a
//! good snapshot: the failure is logged with its reason and counted, and the same bad content is
//! not retried until it changes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::files::FileWatch;
pub use super::files::Trigger;
use crate::core::descriptor::ParseError;
use crate::core::registry::{ContentHash, Diff, Registry, Snapshot};
use crate::metrics::Metrics;

/// How the watcher behaves.
#[derive(Debug, Clone)]
pub struct WatcherConfig {
    /// The descriptor file.
    pub path: PathBuf,
    /// How often to compare the file's hash with the serving one (a safety net behind file events).
    pub poll_interval: Duration,
    /// Quiet time after the last file event before reloading.
    pub debounce: Duration,
    /// Watch the directory for file events (off: poll and SIGHUP only).
    pub fs_events: bool,
    /// Reload on SIGHUP.
    pub sighup: bool,
    /// Let a set declaring no flags replace one that declares some (off: such a set is refused as
    /// a likely truncated or wrong file).
    pub allow_empty: bool,
}

impl WatcherConfig {
    /// Defaults for `path`: 30 s poll, 250 ms debounce, file events and SIGHUP on.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            poll_interval: Duration::from_secs(30),
            debounce: Duration::from_millis(250),
            fs_events: true,
            sighup: true,
            allow_empty: false,
        }
    }
}

/// Why a reload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read (missing, unreadable).
    #[error("read {path}: {source}")]
    Read {
        /// The descriptor file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file declares no flags while the serving set declares some.
    #[error(
        "{path} declares no flags while {serving} are serving (a truncated or wrong file?); \
         refused: set --allow-empty-descriptors to allow it"
    )]
    Empty {
        /// The descriptor file.
        path: PathBuf,
        /// Flags in the serving set.
        serving: usize,
    },
    /// The file's content kept changing between reads (a writer still at work).
    #[error(
        "{path} kept changing over {reads} reads {debounce:?} apart; retried at the next trigger"
    )]
    Unsettled {
        /// The descriptor file.
        path: PathBuf,
        /// Reads made.
        reads: u32,
        /// Time between reads.
        debounce: Duration,
    },
    /// The file was read but is not a loadable descriptor set.
    #[error("parse {path}: {source}")]
    Parse {
        /// The descriptor file.
        path: PathBuf,
        /// The parser's reason.
        #[source]
        source: ParseError,
    },
}

/// The result of one reload attempt.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The file's hash equals the serving one (or a known-bad one); nothing was done.
    Unchanged,
    /// A new snapshot is serving.
    Reloaded {
        /// What changed.
        diff: Diff,
        /// Its content hash.
        hash: ContentHash,
    },
    /// The file could not be loaded; the previous snapshot keeps serving.
    Failed(ReloadError),
}

/// Reloads descriptors into a [`Registry`].
pub struct DescriptorWatcher {
    config: WatcherConfig,
    registry: Arc<Registry>,
    metrics: Metrics,
    last_failed: Mutex<Option<ContentHash>>,
}

/// Loads the descriptor file at `path` into a snapshot (used at start-up, where failure is fatal).
pub fn load_file(path: &Path) -> Result<Snapshot, ReloadError> {
    let bytes = std::fs::read(path).map_err(|source| ReloadError::Read {
        path: path.to_owned(),
        source,
    })?;
    Snapshot::from_bytes(&bytes).map_err(|source| ReloadError::Parse {
        path: path.to_owned(),
        source,
    })
}

impl DescriptorWatcher {
    /// A watcher that reloads `config.path` into `registry`.
    pub fn new(config: WatcherConfig, registry: Arc<Registry>, metrics: Metrics) -> Self {
        let current = registry.load();
        metrics.descriptors(&current.hash().to_string(), current.len());
        Self {
            config,
            registry,
            metrics,
            last_failed: Mutex::new(None),
        }
    }

    /// Reads the file and swaps in a new snapshot if its content changed and loads.
    pub fn reload(&self, trigger: Trigger) -> ReloadOutcome {
        let path = &self.config.path;
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(source) => {
                return self.failed(
                    trigger,
                    None,
                    ReloadError::Read {
                        path: path.clone(),
                        source,
                    },
                );
            }
        };
        let hash = ContentHash::of(&bytes);
        if self.known(&hash) {
            tracing::debug!(trigger = trigger.as_str(), %hash, "descriptors unchanged");
            return ReloadOutcome::Unchanged;
        }
        // New content: take it only once two reads a debounce apart agree, so a file caught
        // half-written (written in place, or by a slow writer) is read again rather than applied.
        let (bytes, hash) = match self.settle(bytes, hash) {
            Ok(settled) => settled,
            Err(err) => return self.failed(trigger, None, err),
        };
        if self.known(&hash) {
            return ReloadOutcome::Unchanged;
        }
        let next = match Snapshot::from_bytes(&bytes) {
            Ok(s) => s,
            Err(source) => {
                return self.failed(
                    trigger,
                    Some(hash),
                    ReloadError::Parse {
                        path: path.clone(),
                        source,
                    },
                );
            }
        };
        let serving = self.registry.load().len();
        if next.is_empty() && serving > 0 && !self.config.allow_empty {
            return self.failed(
                trigger,
                Some(hash),
                ReloadError::Empty {
                    path: path.clone(),
                    serving,
                },
            );
        }
        for w in next.warnings() {
            tracing::warn!(warning = %w, "descriptor warning");
        }
        let flags = next.len();
        next.inherit_slots(&self.registry.load());
        let old = self.registry.swap(next);
        let diff = self.registry.load().diff(&old);
        *self.last_failed.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if diff.removed.len() * 2 > serving {
            tracing::warn!(
                removed = diff.removed.len(),
                serving_before = serving,
                "the new descriptors remove most of the serving flags"
            );
        }
        self.metrics.reload(true);
        self.metrics.descriptors(&hash.to_string(), flags);
        tracing::info!(
            trigger = trigger.as_str(),
            %hash,
            total_flags = flags,
            added = ?diff.added,
            removed = ?diff.removed,
            changed = ?diff.changed,
            "descriptors reloaded"
        );
        ReloadOutcome::Reloaded { diff, hash }
    }

    /// Reads the file again every debounce until a read matches the one before it.
    fn settle(
        &self,
        mut bytes: Vec<u8>,
        mut hash: ContentHash,
    ) -> Result<(Vec<u8>, ContentHash), ReloadError> {
        const MAX_READS: u32 = 8;
        let path = &self.config.path;
        for _ in 1..MAX_READS {
            std::thread::sleep(self.config.debounce);
            let again = std::fs::read(path).map_err(|source| ReloadError::Read {
                path: path.clone(),
                source,
            })?;
            let again_hash = ContentHash::of(&again);
            if again_hash == hash {
                return Ok((bytes, hash));
            }
            tracing::debug!(%hash, %again_hash, "descriptor file changed while being read; reading again");
            (bytes, hash) = (again, again_hash);
        }
        Err(ReloadError::Unsettled {
            path: path.clone(),
            reads: MAX_READS,
            debounce: self.config.debounce,
        })
    }

    /// Whether `hash` is the serving content or content that already failed to load.
    fn known(&self, hash: &ContentHash) -> bool {
        *hash == self.registry.load().hash() || self.last_failed().as_ref() == Some(hash)
    }

    fn last_failed(&self) -> Option<ContentHash> {
        *self.last_failed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failed(
        &self,
        trigger: Trigger,
        hash: Option<ContentHash>,
        err: ReloadError,
    ) -> ReloadOutcome {
        // A missing file is retried on every trigger (it may appear); bad content only once it changes.
        *self.last_failed.lock().unwrap_or_else(|e| e.into_inner()) = hash;
        self.metrics.reload(false);
        tracing::error!(
            trigger = trigger.as_str(),
            error = %err,
            serving_hash = %self.registry.load().hash(),
            "descriptor reload failed; the previous descriptors keep serving"
        );
        ReloadOutcome::Failed(err)
    }

    /// Starts watching. File-event and SIGHUP subscriptions are in place when this returns, so a
    /// change made after it is seen. The task ends when `shutdown` is cancelled; it may be started
    /// again after it failed.
    pub fn spawn(self: &Arc<Self>, shutdown: CancellationToken) -> JoinHandle<()> {
        let this = self.clone();
        let watch = FileWatch {
            paths: vec![self.config.path.clone()],
            poll_interval: self.config.poll_interval,
            debounce: self.config.debounce,
            fs_events: self.config.fs_events,
            sighup: self.config.sighup,
        };
        watch.spawn(
            move |trigger| {
                this.reload(trigger);
            },
            shutdown,
        )
    }
}
