//! The reconcile loop: check references → `build` → apply (server-side apply, one field manager)
//! → prune what is no longer wanted → status. Watches the FlagEvaluators, the objects they own
//! (label-scoped), and the ConfigMaps and Secrets they reference.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Digest as _;
use tokio_util::sync::CancellationToken;

use crate::build::{self, Defaults, Inputs, MANAGED_BY, Tier};
use crate::crd::FlagEvaluator;
use crate::metrics::Metrics;
use crate::status::{self, Observed, Problem, reason};

/// The one field manager of every write.
pub const FIELD_MANAGER: &str = "pbflags-operator";

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
        }
    }
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

/// Events for conditions that changed between `old` and `new`.
async fn publish_transitions(
    ctx: &Context,
    fe: &FlagEvaluator,
    new: &crate::crd::FlagEvaluatorStatus,
) {
    let old = fe.status.as_ref();
    for c in &new.conditions {
        let before = old
            .and_then(|o| o.conditions.iter().find(|x| x.type_ == c.type_))
            .map(|x| x.status.as_str());
        if before == Some(c.status.as_str())
            || (before.is_none() && c.status == "False" && c.type_ != "Ready")
        {
            continue;
        }
        let warning = (c.type_ == "Degraded" && c.status == "True")
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

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Api { what, source }
}

async fn get_secret(client: &Client, ns: &str, name: &str) -> Result<Option<Secret>, Error> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(api_err("get Secret"))
}

/// What the referenced objects tell the builders.
struct References {
    /// Hash of the database Secret's data (root tier).
    secret_hash: Option<String>,
    /// The TLS Secret has a `ca.crt`.
    tls_ca: bool,
}

/// Checks the TLS Secret (`spec.tls`): it must exist with `tls.crt` and `tls.key`. Returns whether
/// it also has a `ca.crt`.
async fn check_tls(
    fe: &FlagEvaluator,
    client: &Client,
    ns: &str,
) -> Result<Result<bool, Problem>, Error> {
    let Some(tls) = &fe.spec.tls else {
        return Ok(Ok(false));
    };
    let name = &tls.secret_name;
    let Some(secret) = get_secret(client, ns, name).await? else {
        return Ok(Err(Problem {
            reason: reason::TLS_SECRET_MISSING,
            message: format!("Secret {ns}/{name} (spec.tls.secretName) does not exist"),
        }));
    };
    let data = secret.data.unwrap_or_default();
    let missing: Vec<&str> = ["tls.crt", "tls.key"]
        .into_iter()
        .filter(|k| !data.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        return Ok(Err(Problem {
            reason: reason::TLS_SECRET_KEY_MISSING,
            message: format!(
                "Secret {ns}/{name} (spec.tls.secretName) has no {}",
                missing.join(" and no ")
            ),
        }));
    }
    Ok(Ok(data.contains_key("ca.crt")))
}

/// Checks the descriptors ConfigMap, the TLS Secret and (root) the database Secret.
async fn check_references(
    fe: &FlagEvaluator,
    client: &Client,
    ns: &str,
) -> Result<Result<References, Problem>, Error> {
    let secret_hash = match check_database(fe, client, ns).await? {
        Ok(hash) => hash,
        Err(problem) => return Ok(Err(problem)),
    };
    Ok(check_tls(fe, client, ns).await?.map(|tls_ca| References {
        secret_hash,
        tls_ca,
    }))
}

/// Checks the descriptors ConfigMap and (root) the database Secret; returns the Secret's data hash.
async fn check_database(
    fe: &FlagEvaluator,
    client: &Client,
    ns: &str,
) -> Result<Result<Option<String>, Problem>, Error> {
    let cm_name = &fe.spec.descriptors.config_map_name;
    let key = fe.spec.descriptors.key();
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(cm_name)
        .await
        .map_err(api_err("get ConfigMap"))?;
    match cm {
        None => {
            return Ok(Err(Problem {
                reason: reason::CONFIG_MAP_MISSING,
                message: format!(
                    "ConfigMap {ns}/{cm_name} (spec.descriptors.configMapName) does not exist"
                ),
            }));
        }
        Some(cm) => {
            let has = cm.binary_data.as_ref().is_some_and(|d| d.contains_key(key))
                || cm.data.as_ref().is_some_and(|d| d.contains_key(key));
            if !has {
                return Ok(Err(Problem {
                    reason: reason::CONFIG_MAP_KEY_MISSING,
                    message: format!(
                        "ConfigMap {ns}/{cm_name} has no key {key:?} (spec.descriptors.key)"
                    ),
                }));
            }
        }
    }
    let Some(root) = &fe.spec.root else {
        return Ok(Ok(None));
    };
    let secret_name = &root.database.secret_name;
    let key = root.database.key();
    let Some(secret) = get_secret(client, ns, secret_name).await? else {
        return Ok(Err(Problem {
            reason: reason::SECRET_MISSING,
            message: format!(
                "Secret {ns}/{secret_name} (spec.root.database.secretName) does not exist"
            ),
        }));
    };
    let Some(value) = secret.data.as_ref().and_then(|d| d.get(key)) else {
        return Ok(Err(Problem {
            reason: reason::SECRET_KEY_MISSING,
            message: format!(
                "Secret {ns}/{secret_name} has no key {key:?} (spec.root.database.key)"
            ),
        }));
    };
    Ok(Ok(Some(hex::encode(&sha2::Sha256::digest(&value.0)[..8]))))
}

async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let api = Api::<K>::namespaced(client.clone(), ns);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(api_err(format!(
        "apply {} {ns}/{name}",
        K::kind(&K::DynamicType::default())
    )))
}

/// Deletes owned objects of kind `K` that are not in `keep`.
async fn prune<K>(client: &Client, ns: &str, instance: &str, keep: &[String]) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api = Api::<K>::namespaced(client.clone(), ns);
    let selector = format!(
        "{}={},app.kubernetes.io/instance={instance}",
        MANAGED_BY.0, MANAGED_BY.1
    );
    let list = api
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .map_err(api_err("list owned objects"))?;
    for obj in list {
        let name = obj.name_any();
        if !keep.contains(&name) {
            api.delete(&name, &DeleteParams::background())
                .await
                .map_err(api_err(format!("delete {name}")))?;
        }
    }
    Ok(())
}

fn names<K: Resource>(objs: &[K]) -> Vec<String> {
    objs.iter().filter_map(|o| o.meta().name.clone()).collect()
}

fn replicas(d: &Deployment) -> (i32, i32) {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = d
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    // A rollout in progress is not ready until the new template's pods are.
    let updated = d
        .status
        .as_ref()
        .and_then(|s| s.updated_replicas)
        .unwrap_or(0);
    (desired, ready.min(updated))
}

/// One reconcile of one FlagEvaluator.
pub async fn reconcile(fe: Arc<FlagEvaluator>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let ns = fe.namespace().unwrap_or_default();
    let client = &ctx.client;
    let mut observed = Observed::default();

    match check_references(&fe, client, &ns).await? {
        Err(problem) => observed.problem = Some(problem),
        Ok(refs) => {
            let inputs = Inputs {
                fe: &fe,
                defaults: &ctx.defaults,
                secret_hash: refs.secret_hash,
                tls_ca: refs.tls_ca,
            };
            let desired = build::build(&inputs)?;
            // Order: identity and network first, then the migration, then workloads.
            if let Some(sa) = &desired.service_account {
                apply::<ServiceAccount>(client, &ns, sa).await?;
            }
            for s in &desired.services {
                apply(client, &ns, s).await?;
            }
            for p in &desired.pdbs {
                apply(client, &ns, p).await?;
            }
            if let Some(job) = &desired.migration {
                let applied = apply::<Job>(client, &ns, job).await?;
                let st = applied.status.unwrap_or_default();
                if st.failed.unwrap_or(0) > 4 {
                    observed.problem = Some(Problem {
                        reason: reason::MIGRATION_FAILED,
                        message: format!(
                            "migrations Job {ns}/{} failed; see its pod logs",
                            build::migration_name(&inputs)
                        ),
                    });
                } else {
                    observed.migrating = st.succeeded.unwrap_or(0) < 1;
                }
            }
            for d in &desired.deployments {
                let is_root =
                    d.metadata.name.as_deref() == Some(build::tier_name(&fe, Tier::Root).as_str());
                if is_root && (observed.migrating || observed.problem.is_some()) {
                    // Roll the root out only after migrations; an existing root keeps serving.
                    if let Some(existing) = Api::<Deployment>::namespaced(client.clone(), &ns)
                        .get_opt(&build::tier_name(&fe, Tier::Root))
                        .await
                        .map_err(api_err("get Deployment"))?
                    {
                        observed.root = Some(replicas(&existing));
                    }
                    continue;
                }
                let applied = apply(client, &ns, d).await?;
                let r = replicas(&applied);
                if is_root {
                    observed.root = Some(r);
                } else {
                    observed.proxy = Some(r);
                }
            }
            let instance = fe.name_any();
            prune::<Deployment>(client, &ns, &instance, &names(&desired.deployments)).await?;
            prune::<Service>(client, &ns, &instance, &names(&desired.services)).await?;
            prune::<PodDisruptionBudget>(client, &ns, &instance, &names(&desired.pdbs)).await?;
        }
    }

    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = status::compute(&fe, &observed, now);
    if fe.status.as_ref() != Some(&status) {
        publish_transitions(&ctx, &fe, &status).await;
        let patch = serde_json::json!({ "apiVersion": "pbflags.dev/v1alpha1", "kind": "FlagEvaluator", "status": status });
        Api::<FlagEvaluator>::namespaced(client.clone(), &ns)
            .patch_status(
                &fe.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(api_err("update status"))?;
        ctx.metrics.status_writes.inc();
    }
    ctx.metrics.reconciled(started.elapsed().as_secs_f64());
    // Watches bring changes; the periodic requeue is a safety net.
    Ok(Action::requeue(Duration::from_secs(300)))
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

fn referencing(
    store: &Store<FlagEvaluator>,
    ns: Option<String>,
    matches: impl Fn(&FlagEvaluator) -> bool,
) -> Vec<ObjectRef<FlagEvaluator>> {
    store
        .state()
        .into_iter()
        .filter(|fe| fe.namespace() == ns && matches(fe))
        .map(|fe| ObjectRef::from_obj(&*fe))
        .collect()
}

/// Runs the controller over the whole cluster until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    run_in(ctx, None, shutdown).await;
}

/// Runs one controller per namespace in `namespaces` (the whole cluster when empty); the operator
/// then needs rights in those namespaces only.
pub async fn run_namespaces(ctx: Arc<Context>, namespaces: &[String], shutdown: CancellationToken) {
    if namespaces.is_empty() {
        return run_in(ctx, None, shutdown).await;
    }
    let runs = namespaces
        .iter()
        .map(|ns| run_in(ctx.clone(), Some(ns.clone()), shutdown.clone()));
    futures_util::future::join_all(runs).await;
}

fn scoped<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn run_in(ctx: Arc<Context>, ns: Option<String>, shutdown: CancellationToken) {
    let ns = ns.as_deref();
    let client = ctx.client.clone();
    let owned = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    let controller = Controller::new(
        scoped::<FlagEvaluator>(&client, ns),
        watcher::Config::default(),
    );
    let store = controller.store();
    let (cm_store, secret_store) = (store.clone(), store.clone());
    controller
        .owns(scoped::<Deployment>(&client, ns), owned.clone())
        .owns(scoped::<Service>(&client, ns), owned.clone())
        .owns(scoped::<PodDisruptionBudget>(&client, ns), owned.clone())
        .owns(scoped::<Job>(&client, ns), owned)
        .watches(
            scoped::<ConfigMap>(&client, ns),
            watcher::Config::default(),
            move |cm| {
                let name = cm.name_any();
                referencing(&cm_store, cm.namespace(), |fe| {
                    fe.spec.descriptors.config_map_name == name
                })
            },
        )
        .watches(
            scoped::<Secret>(&client, ns),
            watcher::Config::default(),
            move |s| {
                let name = s.name_any();
                referencing(&secret_store, s.namespace(), |fe| {
                    fe.spec
                        .root
                        .as_ref()
                        .is_some_and(|r| r.database.secret_name == name)
                        || fe.spec.tls.as_ref().is_some_and(|t| t.secret_name == name)
                })
            },
        )
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}
