//! `build`: a FlagEvaluator spec and what its references told → the typed [`Desired`] objects that
//! run it. Pure: no client, no clock, no I/O, so every object can be checked by plain unit tests.
//! By resource: [`pod`] (the evaluator container and pod spec), [`workload`] (Deployments, the
//! migrations Job, PodDisruptionBudgets), [`network`] (Services).
//!
//! Per tier: a Deployment and a Service named `<name>-root` / `<name>-proxy`, a PodDisruptionBudget
//! when replicas > 1; one ServiceAccount (`<name>-evaluator`); a migrations Job when asked. Every object carries the
//! `app.kubernetes.io/*` labels and a controller owner reference to the FlagEvaluator, so deleting
//! it garbage-collects everything.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, ResourceRequirements, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt as _};

use crate::crd::{AutoscalingSpec, FlagEvaluator};

pub mod descriptors;
mod network;
mod pod;
mod workload;

pub use pod::evaluator_args;

/// The evaluator's port: gRPC, gRPC-Web, Connect, metrics and probes.
pub const PORT: i32 = 9201;
/// The root's admin API port (`spec.root.admin`).
pub const ADMIN_PORT: i32 = 9200;
/// Where the admin token Secret is mounted in root pods.
pub const ADMIN_DIR: &str = "/etc/pbflags/admin";
/// Label every owned object carries; watches are scoped to it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "pbflags-operator");
/// Where the descriptors ConfigMap is mounted (a directory, so kubelet updates reach the pods).
pub const DESCRIPTORS_DIR: &str = "/etc/pbflags/descriptors";
/// Where the TLS Secret is mounted (a directory, so renewed certificates reach the evaluator).
pub const TLS_DIR: &str = "/etc/pbflags/tls";
/// Where the database Secret's URL key is mounted (as the file `url`) in root pods, the migrations
/// Job and the descriptor check.
pub const DATABASE_DIR: &str = "/etc/pbflags/database";
/// Where the database CA bundle is mounted in root pods and the migrations Job.
pub const DATABASE_CA_DIR: &str = "/etc/pbflags/database-ca";

/// Operator-wide settings that specs may override.
#[derive(Clone, Debug)]
pub struct Defaults {
    /// Evaluator image.
    pub image: String,
}

/// What `build` reads besides the spec.
pub struct Inputs<'a> {
    /// The resource.
    pub fe: &'a FlagEvaluator,
    /// Operator defaults.
    pub defaults: &'a Defaults,
    /// The descriptor set in the user's ConfigMap, if read.
    pub descriptors: Option<&'a crate::reconcile::dereference::Candidate>,
}

/// The objects of one tier.
#[derive(Debug, Clone)]
pub struct TierObjects {
    /// The evaluator pods.
    pub deployment: Deployment,
    /// Their Service, named like the Deployment.
    pub service: Service,
    /// Keeps one pod up through voluntary disruptions; only with more than one replica.
    pub pdb: Option<PodDisruptionBudget>,
    /// Scales the tier (the proxy's `autoscaling`); the Deployment then leaves `replicas` to it.
    pub hpa: Option<HorizontalPodAutoscaler>,
}

/// The objects a FlagEvaluator should have.
#[derive(Debug, Clone)]
pub struct Desired {
    /// The pods' ServiceAccount.
    pub service_account: ServiceAccount,
    /// The PostgreSQL-backed tier (`spec.root`).
    pub root: Option<TierObjects>,
    /// The proxy tier (`spec.proxy`).
    pub proxy: Option<TierObjects>,
    /// The migrations Job (`spec.root.migrate`); the root rolls out only after it succeeds.
    pub migration: Option<Job>,
    /// The copy of the candidate descriptor set its check reads, and the check Job; applied only
    /// when the candidate is not already published.
    pub check: Option<(ConfigMap, Job)>,
    /// The admin API's Service and the NetworkPolicy keeping its port closed to all but
    /// `allowedFrom` (`spec.root.admin`).
    pub admin: Option<(Service, NetworkPolicy)>,
}

impl Desired {
    /// The tiers that exist, root first.
    pub fn tiers(&self) -> impl Iterator<Item = (Tier, &TierObjects)> {
        [(Tier::Root, &self.root), (Tier::Proxy, &self.proxy)]
            .into_iter()
            .filter_map(|(t, o)| o.as_ref().map(|o| (t, o)))
    }

    /// The Deployments, root first.
    pub fn deployments(&self) -> impl Iterator<Item = &Deployment> {
        self.tiers().map(|(_, t)| &t.deployment)
    }

    /// The Services, root first, then the admin API's.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.tiers()
            .map(|(_, t)| &t.service)
            .chain(self.admin.as_ref().map(|(s, _)| s))
    }

    /// The NetworkPolicies.
    pub fn network_policies(&self) -> impl Iterator<Item = &NetworkPolicy> {
        self.admin.as_ref().map(|(_, p)| p).into_iter()
    }

    /// The PodDisruptionBudgets, root first.
    pub fn pdbs(&self) -> impl Iterator<Item = &PodDisruptionBudget> {
        self.tiers().filter_map(|(_, t)| t.pdb.as_ref())
    }

    /// The HorizontalPodAutoscalers.
    pub fn hpas(&self) -> impl Iterator<Item = &HorizontalPodAutoscaler> {
        self.tiers().filter_map(|(_, t)| t.hpa.as_ref())
    }
}

/// The names of `objects`.
pub fn names<'a, K: Resource + 'a>(objects: impl Iterator<Item = &'a K>) -> Vec<String> {
    objects.filter_map(|o| o.meta().name.clone()).collect()
}

/// Why objects could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The resource has no uid or namespace yet (it was not read from the API).
    #[error("FlagEvaluator has no {0}; it must come from the API server")]
    Incomplete(&'static str),
}

/// Which tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// PostgreSQL-backed.
    Root,
    /// Fronting an upstream.
    Proxy,
}

impl Tier {
    /// `root` / `proxy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Root => "root",
            Tier::Proxy => "proxy",
        }
    }
}

/// `<name>-evaluator`: the evaluator pods' ServiceAccount (never the FlagEvaluator's bare name,
/// which other ServiceAccounts in the namespace may already have).
pub fn service_account_name(fe: &FlagEvaluator) -> String {
    format!("{}-evaluator", fe.name_any())
}

/// `<name>-root` / `<name>-proxy`.
pub fn tier_name(fe: &FlagEvaluator, tier: Tier) -> String {
    format!("{}-{}", fe.name_any(), tier.as_str())
}

/// The in-cluster URL of a tier's Service (`https://` with `spec.tls`).
pub fn tier_url(fe: &FlagEvaluator, tier: Tier) -> String {
    format!(
        "{}://{}.{}.svc:{PORT}",
        if fe.spec.tls.is_some() {
            "https"
        } else {
            "http"
        },
        tier_name(fe, tier),
        fe.namespace().unwrap_or_default()
    )
}

/// The URL applications should call: the proxy if there is one, else the root.
pub fn endpoint(fe: &FlagEvaluator) -> String {
    let tier = if fe.spec.proxy.is_some() {
        Tier::Proxy
    } else {
        Tier::Root
    };
    tier_url(fe, tier)
}

/// Labels of every owned object; `tier` adds the component.
pub fn labels(fe: &FlagEvaluator, tier: Option<Tier>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "pbflags-evaluator".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), fe.name_any()),
        ("app.kubernetes.io/part-of".to_owned(), "pbflags".to_owned()),
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
    ]);
    if let Some(t) = tier {
        l.insert(
            "app.kubernetes.io/component".to_owned(),
            t.as_str().to_owned(),
        );
    }
    l
}

pub(crate) fn selector(fe: &FlagEvaluator, tier: Tier) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/instance".to_owned(), fe.name_any()),
        (
            "app.kubernetes.io/component".to_owned(),
            tier.as_str().to_owned(),
        ),
        (
            "app.kubernetes.io/name".to_owned(),
            "pbflags-evaluator".to_owned(),
        ),
    ])
}

pub(crate) fn meta(
    fe: &FlagEvaluator,
    owner: &OwnerReference,
    name: String,
    tier: Option<Tier>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: fe.namespace(),
        labels: Some(labels(fe, tier)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// The name of the migrations Job for the current image and database Secret reference: a new image
/// or another Secret (a new database) gets a new Job (Job templates are immutable). The Secret's
/// content is not read: a rotated password needs no migrations.
pub fn migration_name(inputs: &Inputs<'_>) -> String {
    use sha2::Digest as _;
    let image = inputs
        .fe
        .spec
        .image
        .clone()
        .unwrap_or_else(|| inputs.defaults.image.clone());
    let database = inputs
        .fe
        .spec
        .root
        .as_ref()
        .map(|r| format!("{}\n{}", r.database.secret_name, r.database.key()))
        .unwrap_or_default();
    let digest = sha2::Sha256::digest(format!("{image}\n{database}"));
    format!(
        "{}-migrate-{}",
        inputs.fe.name_any(),
        &hex::encode(digest)[..10]
    )
}

/// Every object the FlagEvaluator should have.
pub fn build(inputs: &Inputs<'_>) -> Result<Desired, BuildError> {
    let fe = inputs.fe;
    if fe.namespace().is_none() {
        return Err(BuildError::Incomplete("namespace"));
    }
    let owner = fe
        .controller_owner_ref(&())
        .ok_or(BuildError::Incomplete("uid"))?;
    let tier = |tier: Tier,
                replicas: Option<i32>,
                resources: &Option<ResourceRequirements>,
                autoscaling: Option<&AutoscalingSpec>| {
        let replicas = replicas.unwrap_or(1);
        // With an autoscaler the Deployment leaves `replicas` to it.
        let (fixed, most) = match autoscaling {
            Some(a) => (None, a.max_replicas),
            None => (Some(replicas), replicas),
        };
        TierObjects {
            deployment: workload::deployment(inputs, &owner, tier, fixed, resources.clone()),
            service: network::service(fe, &owner, tier),
            pdb: (most > 1).then(|| workload::pdb(fe, &owner, tier)),
            hpa: autoscaling.map(|a| workload::hpa(fe, &owner, tier, a)),
        }
    };
    Ok(Desired {
        service_account: ServiceAccount {
            metadata: meta(fe, &owner, service_account_name(fe), None),
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        },
        root: fe
            .spec
            .root
            .as_ref()
            .map(|r| tier(Tier::Root, r.replicas, &r.resources, None)),
        proxy: fe.spec.proxy.as_ref().map(|p| {
            tier(
                Tier::Proxy,
                p.replicas,
                &p.resources,
                p.autoscaling.as_ref(),
            )
        }),
        migration: fe
            .spec
            .root
            .as_ref()
            .is_some_and(|r| r.migrate == Some(true))
            .then(|| workload::migration(inputs, &owner)),
        admin: fe
            .spec
            .root
            .as_ref()
            .and_then(|r| r.admin.as_ref())
            .filter(|a| a.enabled())
            .map(|a| {
                (
                    network::admin_service(fe, &owner),
                    network::admin_policy(fe, &owner, a),
                )
            }),
        check: inputs.descriptors.map(|c| {
            (
                descriptors::candidate(fe, &owner, &c.content, &c.sha256),
                descriptors::check_job(inputs, &owner, &c.sha256),
            )
        }),
    })
}
