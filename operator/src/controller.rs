//! The controller: watches the FlagEvaluators, the objects they own (label-scoped), their pods,
//! and the ConfigMaps they reference, and runs [`reconcile`] for each one that changed. Secrets are
//! not watched: the operator has no right to read them (the pods mount them).

use std::sync::Arc;

use futures_util::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt as _};
use tokio_util::sync::CancellationToken;

use crate::build::MANAGED_BY;
use crate::crd::FlagEvaluator;
use crate::reconcile::{Context, error_policy, reconcile};

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

/// The resources the controller watches, by their plural name.
const WATCHED: [&str; 9] = [
    "flagevaluators",
    "deployments",
    "services",
    "poddisruptionbudgets",
    "horizontalpodautoscalers",
    "jobs",
    "networkpolicies",
    "configmaps",
    "pods",
];

/// Which watched resource a watch error is about, from the API server's message (`"secrets is
/// forbidden: …"`, a URL path); `unknown` when it names none (a connection error).
pub fn resource_of(error: &str) -> &'static str {
    WATCHED
        .into_iter()
        .find(|r| error.contains(r))
        .unwrap_or("unknown")
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
    let cm_store = store.clone();
    controller
        .owns(scoped::<Deployment>(&client, ns), owned.clone())
        .owns(scoped::<Service>(&client, ns), owned.clone())
        .owns(scoped::<PodDisruptionBudget>(&client, ns), owned.clone())
        .owns(
            scoped::<HorizontalPodAutoscaler>(&client, ns),
            owned.clone(),
        )
        .owns(scoped::<NetworkPolicy>(&client, ns), owned.clone())
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
        // Pods: a check pod's report is final before its Job is, and a pod turning ready
        // changes how many serve the published descriptor set.
        .watches(
            scoped::<Pod>(&client, ns),
            watcher::Config::default().labels(&format!(
                "{}={},app.kubernetes.io/name=pbflags-evaluator",
                MANAGED_BY.0, MANAGED_BY.1
            )),
            |pod| {
                let instance = pod.labels().get("app.kubernetes.io/instance")?;
                Some(ObjectRef::new(instance).within(&pod.namespace()?))
            },
        )
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|r| {
            let ctx = ctx.clone();
            async move {
                match r {
                    Err(kube::runtime::controller::Error::QueueError(e)) => {
                        // A missing CRD or a missing permission shows here, again and again.
                        let error = e.to_string();
                        let resource = resource_of(&error);
                        tracing::warn!(resource, error, "watch failed");
                        ctx.metrics.watch_failed(resource);
                        ctx.readiness.watch_failed(format!("{resource}: {error}"));
                    }
                    // Failed reconciles are logged and counted by the error policy.
                    Err(e) => tracing::debug!(error = %e, "controller event"),
                    Ok(_) => {}
                }
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn watch_errors_are_attributed_to_the_resource_they_name() {
        assert_eq!(
            super::resource_of(
                "failed to perform initial object list: ApiError: configmaps is forbidden: User \"system:serviceaccount:x:y\" cannot list resource \"configmaps\""
            ),
            "configmaps"
        );
        assert_eq!(
            super::resource_of("ApiError: flagevaluators.pbflags.dev is forbidden"),
            "flagevaluators"
        );
        assert_eq!(
            super::resource_of("error trying to connect: connection refused"),
            "unknown"
        );
    }
}
