//! Leader election through a `coordination.k8s.io/v1` Lease, so two operator replicas are safe: only
//! the holder reconciles.
//!
//! The rules that keep two replicas from reconciling at once, whatever their clocks say:
//! - a contender judges expiry by its own monotonic clock: it takes over only after it has seen the
//!   same lease record (holder and renew time) unchanged for the lease's whole duration, never by
//!   comparing the renew time with its wall clock;
//! - the holder gives up when it has not renewed within the *renew deadline* (two thirds of the
//!   duration), counted from the moment it sent its last successful renewal, so it stops before any
//!   contender can have seen the lease unchanged for the full duration;
//! - every API call has a timeout, so a hung call cannot stretch those times;
//! - writes carry the resourceVersion read, so two contenders never both win;
//! - at shutdown the holder releases the lease after reconciling stopped, and the process waits
//!   for that release (bounded) before it exits.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use pbflags_runtime::periodic::sleep_or_stop;
use tokio_util::sync::CancellationToken;

/// Where the lease lives and who we are.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace (the operator's).
    pub namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
    /// How often the holder renews (and contenders retry).
    pub renew: Duration,
}

impl LeaseConfig {
    /// The holder gives up when it has not renewed for this long: two thirds of the duration.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// The longest one API call may take: a third of the renew deadline, so a hung call leaves
    /// time for another attempt.
    pub fn call_timeout(&self) -> Duration {
        self.renew_deadline() / 3
    }
}

/// Why a lease call failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The API answered with an error.
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// The API did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// What a contender last saw of someone else's lease, and when (by its own clock).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renewed: Option<String>,
}

/// One replica's view of the election: it remembers the lease record it saw and since when.
pub struct Elector {
    client: Client,
    cfg: LeaseConfig,
    observed: Option<(Record, Instant)>,
}

impl Elector {
    /// A replica taking part in the election `cfg` describes.
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        Self {
            client,
            cfg,
            observed: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    fn api(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), &self.cfg.namespace)
    }

    async fn timed<T>(
        &self,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaseError> {
        let limit = self.cfg.call_timeout();
        tokio::time::timeout(limit, call)
            .await
            .map_err(|_| LeaseError::Timeout(limit))?
            .map_err(LeaseError::Api)
    }

    /// One attempt to take or renew the lease. `Ok(true)` when we hold it afterwards.
    pub async fn try_acquire(&mut self) -> Result<bool, LeaseError> {
        let secs = i32::try_from(self.cfg.duration.as_secs()).unwrap_or(i32::MAX);
        let api = self.api();
        let Some(mut lease) = self.timed(api.get_opt(&self.cfg.name)).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.cfg.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.timed(api.create(&PostParams::default(), &lease)).await {
                Ok(_) => Ok(true),
                Err(LeaseError::Api(kube::Error::Api(e))) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let ours = spec.holder_identity.as_deref() == Some(self.cfg.identity.as_str());
        if !ours && spec.holder_identity.is_some() {
            // Someone else's: expired only once we have seen this very record for a whole
            // duration (theirs, as written in the lease, or ours if it says none).
            let record = Record {
                holder: spec.holder_identity.clone(),
                renewed: spec.renew_time.as_ref().map(|t| t.0.to_string()),
            };
            let valid_for = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.cfg.duration, Duration::from_secs);
            match &self.observed {
                Some((seen, since)) if *seen == record => {
                    if since.elapsed() < valid_for {
                        return Ok(false);
                    }
                }
                _ => {
                    self.observed = Some((record, Instant::now()));
                    return Ok(false);
                }
            }
        }
        if !ours {
            spec.holder_identity = Some(self.cfg.identity.clone());
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(now());
        spec.lease_duration_seconds = Some(secs);
        // replace() sends the resourceVersion we read: a concurrent writer makes this a 409.
        match self
            .timed(api.replace(&self.cfg.name, &PostParams::default(), &lease))
            .await
        {
            Ok(_) => {
                self.observed = None;
                Ok(true)
            }
            Err(LeaseError::Api(kube::Error::Api(e))) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up, if we hold it, so another replica can take over at once.
    pub async fn release(&self) -> Result<(), LeaseError> {
        let api = self.api();
        if let Some(mut lease) = self.timed(api.get_opt(&self.cfg.name)).await?
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(self.cfg.identity.as_str())
        {
            spec.holder_identity = None;
            spec.renew_time = None;
            self.timed(api.replace(&self.cfg.name, &PostParams::default(), &lease))
                .await?;
        }
        Ok(())
    }
}

/// A held lease, renewed in the background.
pub struct Leadership {
    /// Cancelled when the lease is lost (not renewed within the renew deadline, or taken): stop
    /// reconciling at once.
    pub lost: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    resign: CancellationToken,
}

impl Leadership {
    /// Stops renewing and releases the lease; call once reconciling has stopped. Waits for the
    /// release, at most `limit`.
    pub async fn resign(self, limit: Duration) {
        self.resign.cancel();
        if tokio::time::timeout(limit, self.task).await.is_err() {
            tracing::warn!("lease: release did not finish in time; the lease expires on its own");
        }
    }
}

/// Waits until this replica holds the lease (or `shutdown`), then keeps renewing it in the
/// background until [`Leadership::resign`].
pub async fn acquire(mut elector: Elector, shutdown: CancellationToken) -> Option<Leadership> {
    let renew = elector.cfg.renew;
    let mut last_ok = loop {
        let attempt = Instant::now();
        match elector.try_acquire().await {
            Ok(true) => break attempt,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "lease: cannot read or write the lease"),
        }
        if sleep_or_stop(&shutdown, renew).await {
            return None;
        }
    };
    let cfg = elector.cfg.clone();
    tracing::info!(lease = %cfg.name, identity = %cfg.identity, "lease acquired; this replica reconciles");
    let (lost, resign) = (CancellationToken::new(), CancellationToken::new());
    let (lost2, resign2) = (lost.clone(), resign.clone());
    let task = tokio::spawn(async move {
        loop {
            // Give up at the renew deadline even while waiting for the next attempt.
            let deadline = last_ok + cfg.renew_deadline();
            let next = (Instant::now() + cfg.renew).min(deadline);
            tokio::select! {
                () = resign2.cancelled() => break,
                () = tokio::time::sleep_until(next.into()) => {}
            }
            if Instant::now() >= deadline {
                tracing::error!(deadline = ?cfg.renew_deadline(), "lease: not renewed within the renew deadline; stopping");
                lost2.cancel();
                return;
            }
            let attempt = Instant::now();
            // A renewal that would answer after the deadline is as good as none.
            let left = deadline.saturating_duration_since(attempt);
            match tokio::time::timeout(left, elector.try_acquire()).await {
                Ok(Ok(true)) => last_ok = attempt,
                Ok(Ok(false)) => {
                    tracing::error!("lease: another replica holds the lease; stopping");
                    lost2.cancel();
                    return;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "lease: renew failed; retrying"),
                Err(_) => tracing::warn!("lease: renew did not answer before the deadline"),
            }
        }
        if let Err(e) = elector.release().await {
            tracing::warn!(error = %e, "lease: release failed; it expires on its own");
        } else {
            tracing::info!("lease released");
        }
    });
    Some(Leadership { lost, task, resign })
}
