//! Leader election through a `coordination.k8s.io/v1` Lease, so two operator replicas are safe: only
//! the holder reconciles. The holder renews every `renew`; another replica takes over once the lease
//! is older than its duration. Writes use the Lease's resourceVersion, so two contenders never both
//! win. A holder that cannot renew within the duration gives up (its process should exit).

use pbflags_runtime::periodic::sleep_or_stop;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
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

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn expired(spec: &LeaseSpec) -> bool {
    let (Some(renewed), Some(secs)) = (spec.renew_time.as_ref(), spec.lease_duration_seconds)
    else {
        return true;
    };
    let age = Timestamp::now().duration_since(renewed.0);
    age.as_secs() >= i64::from(secs)
}

/// One attempt to take or renew the lease. Ok(true) when we hold it afterwards.
pub async fn try_acquire(client: &Client, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let api = Api::<Lease>::namespaced(client.clone(), &cfg.namespace);
    let secs = i32::try_from(cfg.duration.as_secs()).unwrap_or(i32::MAX);
    match api.get_opt(&cfg.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            let ours = spec.holder_identity.as_deref() == Some(cfg.identity.as_str());
            if !ours && spec.holder_identity.is_some() && !expired(spec) {
                return Ok(false);
            }
            if !ours {
                spec.holder_identity = Some(cfg.identity.clone());
                spec.acquire_time = Some(now());
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.renew_time = Some(now());
            spec.lease_duration_seconds = Some(secs);
            // replace() sends the resourceVersion we read: a concurrent writer makes this a 409.
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Gives the lease up so another replica can take over at once.
pub async fn release(client: &Client, cfg: &LeaseConfig) -> Result<(), kube::Error> {
    let api = Api::<Lease>::namespaced(client.clone(), &cfg.namespace);
    if let Some(mut lease) = api.get_opt(&cfg.name).await?
        && let Some(spec) = lease.spec.as_mut()
        && spec.holder_identity.as_deref() == Some(cfg.identity.as_str())
    {
        spec.holder_identity = None;
        spec.renew_time = None;
        api.replace(&cfg.name, &PostParams::default(), &lease)
            .await?;
    }
    Ok(())
}

/// Waits until this replica holds the lease (or `shutdown`), then keeps renewing it in the
/// background. The returned token is cancelled if the lease is lost.
pub async fn acquire(
    client: Client,
    cfg: LeaseConfig,
    shutdown: CancellationToken,
) -> Option<CancellationToken> {
    loop {
        match try_acquire(&client, &cfg).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "lease: cannot read or write the lease"),
        }
        if sleep_or_stop(&shutdown, cfg.renew).await {
            return None;
        }
    }
    tracing::info!(lease = %cfg.name, identity = %cfg.identity, "lease acquired; this replica reconciles");
    let lost = CancellationToken::new();
    let lost2 = lost.clone();
    tokio::spawn(async move {
        let mut last_ok = std::time::Instant::now();
        loop {
            if sleep_or_stop(&shutdown, cfg.renew).await {
                if let Err(e) = release(&client, &cfg).await {
                    tracing::warn!(error = %e, "lease: release failed; it expires on its own");
                }
                return;
            }
            match try_acquire(&client, &cfg).await {
                Ok(true) => last_ok = std::time::Instant::now(),
                Ok(false) => {
                    tracing::error!("lease: another replica holds the lease; stopping");
                    lost2.cancel();
                    return;
                }
                Err(e) if last_ok.elapsed() < cfg.duration => {
                    tracing::warn!(error = %e, "lease: renew failed; retrying")
                }
                Err(e) => {
                    tracing::error!(error = %e, "lease: could not renew within its duration; stopping");
                    lost2.cancel();
                    return;
                }
            }
        }
    });
    Some(lost)
}
