//! One reconcile of one FlagEvaluator, as a pipeline of typed steps:
//!
//! 1. [`dereference`] reads the referenced ConfigMap → [`References`], or a [`Problem`] the
//!    status reports (Secrets are the pods' business: the operator cannot read them, and reports
//!    a pod that cannot start because of one, see [`crate::starting`]);
//! 2. [`build`](crate::build::build), pure → the typed [`Desired`](crate::build::Desired) objects;
//! 3. [`apply`] writes them (the root only after migrations) and prunes the rest → [`Observed`];
//! 4. [`status::compute`], pure → the status, written only when it changed, with an event per
//!    condition that moved.
//!
//! The API calls of steps 1 and 3 go through [`Cluster`]; tests run the whole pipeline against a
//! fake API server (`tests/reconcile.rs`).

pub mod apply;
pub mod cluster;
pub mod dereference;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource as _, ResourceExt as _};

use crate::build::{self, Defaults, Inputs};
use crate::crd::{FlagEvaluator, FlagEvaluatorStatus};
use crate::metrics::Metrics;
use crate::status::{self, Observed};
pub use cluster::{Cluster, FIELD_MANAGER};
pub use dereference::{Candidate, References, Stop, dereference};

/// The evaluator's port, as the probe dials it.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
const PROBE_PORT: u16 = build::PORT as u16;

/// Shared state of the reconciler.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Operator defaults.
    pub defaults: Defaults,
    /// Metrics.
    pub metrics: Metrics,
    /// Publishes Kubernetes events about FlagEvaluators.
    pub recorder: Recorder,
    /// Asks evaluator pods which descriptor set they serve.
    pub prober: crate::serving::Prober,
    /// What `/readyz` reports; the controller records failing watches in it.
    pub readiness: Arc<crate::health::Readiness>,
}

impl Context {
    /// A context publishing events as `pbflags-operator`.
    pub fn new(client: Client, defaults: Defaults, metrics: Metrics) -> Self {
        let recorder = Recorder::new(client.clone(), Reporter::from(FIELD_MANAGER));
        Self {
            client,
            defaults,
            metrics,
            recorder,
            prober: crate::serving::Prober::new(PROBE_PORT),
            readiness: Arc::default(),
        }
    }

    /// Asks evaluator pods on `port` instead of the evaluator's port (tests serve answers on a
    /// free port).
    #[must_use]
    pub fn probing_port(mut self, port: u16) -> Self {
        self.prober = crate::serving::Prober::new(port);
        self
    }
}

/// Why a reconcile failed; the category is a metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The resource could not be turned into objects.
    #[error(transparent)]
    Build(#[from] build::BuildError),
}

impl Error {
    /// A short, fixed category for metrics and events.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Api { .. } => "api",
            Error::Build(_) => "build",
        }
    }
}

/// One reconcile of one FlagEvaluator.
pub async fn reconcile(fe: Arc<FlagEvaluator>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let ns = fe.namespace().unwrap_or_default();
    let api = Cluster::new(&ctx.client, &ns);
    let observed = match dereference(&fe, &api).await {
        Err(Stop::Failed(e)) => return Err(e),
        Err(Stop::Blocked(problem)) => Observed {
            problem: Some(problem),
            ..Observed::default()
        },
        Ok(refs) => {
            let desired = build::build(&Inputs {
                fe: &fe,
                defaults: &ctx.defaults,
                descriptors: Some(&refs.descriptors),
            })?;
            apply::apply(&fe, &desired, &refs.descriptors, &api, &ctx.prober).await?
        }
    };
    let status = status::compute(&fe, &observed, Time(k8s_openapi::jiff::Timestamp::now()));
    if fe.status.as_ref() != Some(&status) {
        publish_transitions(&ctx, &fe, &status).await;
        let patch = serde_json::json!({
            "apiVersion": "pbflags.dev/v1alpha1",
            "kind": "FlagEvaluator",
            "status": status,
        });
        Api::<FlagEvaluator>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &fe.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|source| Error::Api {
                what: "update status".to_owned(),
                source,
            })?;
        ctx.metrics.status_writes.inc();
    }
    ctx.metrics.reconciled(started.elapsed().as_secs_f64());
    Ok(Action::requeue(requeue_after(&observed)))
}

/// When to look again. Watches bring changes, so the periodic requeue is a safety net, except
/// while pods are still taking up a published descriptor set (nothing the operator watches
/// changes when an evaluator reloads, so it asks again soon, less soon when pods do not answer)
/// and while a name is taken by an object the operator does not own.
fn requeue_after(observed: &Observed) -> Duration {
    // Nothing the operator watches tells it when a conflicting object is gone, or when a pod's
    // events change (a Secret it waits for may have appeared).
    match observed.problem.as_ref().map(|p| p.reason) {
        Some(crate::status::reason::NAME_CONFLICT) => return Duration::from_secs(30),
        Some(
            crate::status::reason::POD_NOT_STARTING
            | crate::status::reason::SECRET_MISSING
            | crate::status::reason::SECRET_KEY_MISSING
            | crate::status::reason::TLS_SECRET_MISSING,
        ) => return Duration::from_secs(10),
        _ => {}
    }
    // A pod stuck in creation changes nothing the operator watches: look again for its events.
    let waiting = observed.waiting();
    match observed
        .descriptors
        .as_ref()
        .and_then(|r| r.serving.as_ref())
    {
        Some(s) if !s.complete() && s.total().unreachable > 0 => Duration::from_secs(10),
        Some(s) if !s.complete() => Duration::from_secs(1),
        _ if waiting => Duration::from_secs(10),
        _ => Duration::from_secs(300),
    }
}

/// Requeues a failed reconcile with a short delay.
pub fn error_policy(fe: Arc<FlagEvaluator>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(error.category());
    let (ctx2, fe2, note) = (ctx.clone(), fe.clone(), error.to_string());
    tokio::spawn(
        async move { publish(&ctx2, &fe2, EventType::Warning, "ReconcileFailed", note).await },
    );
    tracing::warn!(flag_evaluator = %fe.name_any(), namespace = ?fe.namespace(), category = error.category(), error = %error, "reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

async fn publish(ctx: &Context, fe: &FlagEvaluator, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &fe.object_ref(&())).await {
        tracing::debug!(error = %e, "could not publish event");
    }
}

/// Events for conditions that changed between the current status and `new`.
async fn publish_transitions(ctx: &Context, fe: &FlagEvaluator, new: &FlagEvaluatorStatus) {
    let old = fe.status.as_ref();
    for c in &new.conditions {
        let before = old
            .and_then(|o| o.conditions.iter().find(|x| x.type_ == c.type_))
            .map(|x| x.status.as_str());
        if before == Some(c.status.as_str())
            || (before.is_none()
                && c.status == "False"
                && c.type_ != "Ready"
                && c.type_ != "DescriptorsAccepted")
        {
            continue;
        }
        let warning = (c.type_ == "Degraded" && c.status == "True")
            || (c.type_ == "DescriptorsAccepted" && c.status == "False")
            || (c.type_ == "Ready" && c.status == "False" && before == Some("True"));
        let type_ = if warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        publish(
            ctx,
            fe,
            type_,
            &c.reason,
            format!("{} is {}: {}", c.type_, c.status, c.message),
        )
        .await;
    }
}
