//! The `FlagEvaluator` API (group `pbflags.dev`, version `v1alpha1`). The `///` comments on these
//! types are what `kubectl explain` shows. Pure data: no client, no I/O.

// Each `printcolumn(...)` repeats `type_ = ...`; clippy reads that as a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Default key of the descriptors ConfigMap (`spec.descriptors.key`).
pub const DEFAULT_DESCRIPTORS_KEY: &str = "descriptors.pb";
/// Default key of the database Secret (`spec.root.database.key`).
pub const DEFAULT_DATABASE_KEY: &str = "url";

/// Runs pbflags evaluators: a root tier reading flag state from PostgreSQL and, optionally, a proxy
/// tier in front of it (or a proxy-only tier in front of another evaluator). Descriptors come from a
/// ConfigMap and are hot-reloaded by the evaluators when it changes.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pbflags.dev",
    version = "v1alpha1",
    kind = "FlagEvaluator",
    namespaced,
    shortname = "fe",
    doc = "A pbflags feature-flag evaluator deployment: a root tier reading flag state from \
           PostgreSQL and/or a proxy tier fronting it (or another evaluator), serving Evaluate and \
           BulkEvaluate over gRPC, gRPC-Web and Connect, with flag definitions from a descriptor \
           set in a ConfigMap that is checked before it reaches the pods. `kubectl explain \
           flagevaluator.spec` documents each field; `status` reports readiness, the endpoint and \
           the descriptor rollout.",
    status = "FlagEvaluatorStatus",
    printcolumn(name = "Mode", type_ = "string", json_path = ".status.mode"),
    printcolumn(name = "Root", type_ = "string", json_path = ".status.root.summary"),
    printcolumn(name = "Proxy", type_ = "string", json_path = ".status.proxy.summary"),
    printcolumn(
        name = "Descriptors",
        type_ = "string",
        json_path = ".status.descriptors.summary"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.endpoint",
        priority = 1
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.root) || (has(self.proxy) && has(self.proxy.upstream))").message("a FlagEvaluator needs a root tier (spec.root, with a database Secret) or a proxy-only tier with an upstream URL (spec.proxy.upstream)"))]
#[x_kube(validation = Rule::new("!(has(self.root) && has(self.proxy) && has(self.proxy.upstream))").message("spec.proxy.upstream must be empty when spec.root is set: the proxy then fronts this FlagEvaluator's root"))]
pub struct FlagEvaluatorSpec {
    /// The ConfigMap holding the descriptor set (`buf build -o descriptors.pb`). When its content
    /// changes, the operator checks the new set with a Job (for a root: `sync` into the database,
    /// which refuses breaking changes) and only then publishes it to the pods (as
    /// `<name>-descriptors`), which reload it without restarting. A refused set never reaches a
    /// pod: `status.conditions` (DescriptorsAccepted) and an event say why.
    pub descriptors: DescriptorsRef,
    /// The root tier: evaluators reading flag state from PostgreSQL. Omit for a proxy-only
    /// FlagEvaluator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<RootSpec>,
    /// The proxy tier: evaluators that cache and serve the root's state. Optional when a root is
    /// set (applications then call the proxy); required, with an upstream, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySpec>,
    /// Evaluator container image. Defaults to the operator's configured evaluator image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image pull policy of the evaluator containers (Always, IfNotPresent, Never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['Always', 'IfNotPresent', 'Never']").message("imagePullPolicy must be Always, IfNotPresent or Never"))]
    pub image_pull_policy: Option<String>,
    /// Cache settings passed to every evaluator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,
    /// Logs and traces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<TelemetrySpec>,
    /// Where evaluator pods run, and extra pod metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementSpec>,
    /// Serve TLS on every tier (gRPC, gRPC-Web and Connect on the one port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// TLS from a `kubernetes.io/tls` Secret in the FlagEvaluator's namespace, as cert-manager writes
/// it: `tls.crt` and `tls.key`, and optionally `ca.crt`. Evaluators pick up a renewed certificate
/// without restarting. The certificate must name the tiers' Services
/// (`<name>-root.<namespace>.svc`, `<name>-proxy.<namespace>.svc`). The proxy checks the root's
/// certificate against `ca.crt` when the Secret has one, else against the system trust store.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Name of the Secret.
    #[x_kube(validation = Rule::new("self != ''").message("tls.secretName must name a kubernetes.io/tls Secret"))]
    pub secret_name: String,
}

/// A key of a ConfigMap in the FlagEvaluator's namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DescriptorsRef {
    /// Name of the ConfigMap.
    #[x_kube(validation = Rule::new("self != ''").message("descriptors.configMapName must name a ConfigMap"))]
    pub config_map_name: String,
    /// Key holding the descriptor set. Default: `descriptors.pb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "descriptors.pb"))]
    pub key: Option<String>,
    /// Apply breaking changes (a flag's type changed, a layered flag made global, a move between
    /// layers) instead of refusing the set, as `sync --allow-breaking` does. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = false))]
    pub allow_breaking: Option<bool>,
}

/// A key of a Secret in the FlagEvaluator's namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[x_kube(validation = Rule::new("self != ''").message("root.database.secretName must name the Secret holding the database URL"))]
    pub secret_name: String,
    /// Key holding the PostgreSQL URL. Default: `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "url"))]
    pub key: Option<String>,
}

/// A Secret holding the CA bundle (PEM) the database's certificate is checked against.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CaSecretRef {
    /// Name of the Secret.
    #[x_kube(validation = Rule::new("self != ''").message("root.databaseCa.secretName must name the Secret holding the CA bundle"))]
    pub secret_name: String,
    /// Key holding the PEM bundle. Default: `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "ca.crt"))]
    pub key: Option<String>,
}

/// The root tier.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RootSpec {
    /// Number of root evaluator pods. Default 1. A PodDisruptionBudget keeps one available when
    /// there are more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("root.replicas must be between 0 and 100"))]
    #[schemars(extend("default" = 1))]
    pub replicas: Option<i32>,
    /// The Secret key holding the PostgreSQL URL (never inline). It is mounted as a file the
    /// evaluator follows: a rotated password reaches new connections without a restart. The
    /// operator never reads it.
    pub database: SecretKeyRef,
    /// The CA bundle the database's TLS certificate is checked against (mounted into the root pods
    /// and the migrations Job as `--database-ca`). Without an `sslmode` in the URL this means
    /// `sslmode=verify-full`; without it, `sslmode=verify-*` uses the image's trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_ca: Option<CaSecretRef>,
    /// Run database migrations (a Job) before the root tier rolls out. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = false))]
    pub migrate: Option<bool>,
    /// Compute resources of each root pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The admin API (`FlagAdminService`, as pbflags v0.6 serves it, behind bearer tokens) on the
    /// root pods' port 9200, with a `<name>-admin` Service. Reach it with
    /// `kubectl port-forward svc/<name>-admin 9200` and `pbflags-evaluator flags --server
    /// http://127.0.0.1:9200 --token-file …`; over the network only from `allowedFrom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminSpec>,
}

/// The admin API of the root tier.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdminSpec {
    /// Serve it. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = true))]
    pub enabled: Option<bool>,
    /// The Secret holding the tokens: lines of `NAME ROLE TOKEN`, the role `viewer` or `editor`,
    /// tokens of at least 16 characters. Changes are followed without a restart.
    #[x_kube(validation = Rule::new("self != ''").message("root.admin.tokenSecretName must name the Secret holding the admin tokens"))]
    pub token_secret_name: String,
    /// The key of the token file in the Secret. Default `tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "tokens"))]
    pub token_key: Option<String>,
    /// Who may reach the admin port over the network (NetworkPolicy peers: pods, namespaces, IP
    /// blocks). Default: nobody (a NetworkPolicy closes the port; `kubectl port-forward` still
    /// works). The evaluation port stays open to all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_from: Option<Vec<NetworkPolicyPeer>>,
}

impl AdminSpec {
    /// Whether the admin API is served.
    pub fn enabled(&self) -> bool {
        self.enabled != Some(false)
    }

    /// The Secret key of the token file, defaulted.
    pub fn token_key(&self) -> &str {
        self.token_key.as_deref().unwrap_or("tokens")
    }
}

/// The proxy tier.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProxySpec {
    /// Number of proxy pods. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("proxy.replicas must be between 0 and 100"))]
    #[schemars(extend("default" = 1))]
    pub replicas: Option<i32>,
    /// Base URL of the evaluator this proxy fronts, for a proxy-only FlagEvaluator (another
    /// namespace, another cluster). Leave empty when spec.root is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("proxy.upstream must be an http:// or https:// URL"))]
    pub upstream: Option<String>,
    /// Compute resources of each proxy pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Scale the proxy tier with a HorizontalPodAutoscaler on CPU instead of a fixed
    /// `replicas` (which is then ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
}

/// A HorizontalPodAutoscaler for the proxy tier.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || self.minReplicas <= self.maxReplicas").message("proxy.autoscaling.minReplicas must not exceed maxReplicas"))]
pub struct AutoscalingSpec {
    /// Fewest proxy pods. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = 2))]
    #[x_kube(validation = Rule::new("self >= 1").message("proxy.autoscaling.minReplicas must be at least 1"))]
    pub min_replicas: Option<i32>,
    /// Most proxy pods.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("proxy.autoscaling.maxReplicas must be between 1 and 100"))]
    pub max_replicas: i32,
    /// Average CPU use, as a percentage of the pods' CPU requests, the autoscaler aims at.
    /// Default 70.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = 70))]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("proxy.autoscaling.targetCpuUtilizationPercentage must be between 1 and 100"))]
    pub target_cpu_utilization_percentage: Option<i32>,
}

/// Evaluator cache settings (durations like `30s`, `5m`).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// Kill-set poll interval. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$') && !self.matches('^(0+(ms|s|m|h))+$')").message("cache.killTtl must be a duration greater than zero like 500ms, 30s, 5m or 1h30m"))]
    #[schemars(extend("default" = "30s"))]
    pub kill_ttl: Option<String>,
    /// Flag state cache TTL. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$') && !self.matches('^(0+(ms|s|m|h))+$')").message("cache.flagTtl must be a duration greater than zero like 500ms, 30s, 5m or 1h30m"))]
    #[schemars(extend("default" = "5m"))]
    pub flag_ttl: Option<String>,
    /// Override cache TTL. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$') && !self.matches('^(0+(ms|s|m|h))+$')").message("cache.overrideTtl must be a duration greater than zero like 500ms, 30s, 5m or 1h30m"))]
    #[schemars(extend("default" = "5m"))]
    pub override_ttl: Option<String>,
    /// Override cache capacity. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = 10000))]
    pub override_max_entries: Option<i64>,
    /// ± jitter on TTLs, percent. Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("cache.jitterPercent must be between 0 and 100"))]
    #[schemars(extend("default" = 20))]
    pub jitter_percent: Option<i32>,
    /// Timeout of one state fetch. Default 500ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$') && !self.matches('^(0+(ms|s|m|h))+$')").message("cache.fetchTimeout must be a duration greater than zero like 500ms, 30s, 5m or 1h30m"))]
    #[schemars(extend("default" = "500ms"))]
    pub fetch_timeout: Option<String>,
}

/// Logs and traces.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TelemetrySpec {
    /// OTLP endpoint for traces (sets `OTEL_EXPORTER_OTLP_ENDPOINT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// Log level or filter, e.g. `info` or `pbflags_evaluator=debug`. Default info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "info"))]
    pub log_level: Option<String>,
    /// Log format: `text` or `json`. Default json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['text', 'json']").message("telemetry.logFormat must be text or json"))]
    #[schemars(extend("default" = "json"))]
    pub log_format: Option<String>,
}

/// Pod placement and metadata.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PlacementSpec {
    /// Node labels the pods require.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Extra annotations on the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_annotations: Option<BTreeMap<String, String>>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Extra labels on the pods (the operator's own labels win on a clash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_labels: Option<BTreeMap<String, String>>,
    /// Secrets holding the credentials to pull the evaluator image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// How each tier's pods spread over the cluster. Default: as evenly as possible over nodes
    /// and zones (`ScheduleAnyway`, so a small cluster still schedules every pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
}

/// Replicas of one tier.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TierStatus {
    /// Pods asked for.
    pub desired: i32,
    /// Pods ready.
    pub ready: i32,
    /// `ready/desired`, for printing.
    pub summary: String,
}

/// The descriptor set the pods are given.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DescriptorsStatus {
    /// SHA-256 of the published set (the evaluators export it as `pbflags_descriptor_info`).
    pub sha256: String,
    /// Flags it declares, when the check reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<u64>,
    /// When it was accepted (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_at: Option<String>,
    /// `<short hash> <serving>/<ready>` (ready pods serving it, all tiers), for printing.
    pub summary: String,
    /// SHA-256 of a newer set in the ConfigMap that is being checked or was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
    /// Ready root pods and how many of them serve the published set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<ServingStatus>,
    /// Ready proxy pods and how many of them serve the published set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ServingStatus>,
}

/// How many ready pods of a tier serve the published descriptor set (each pod's `GET /descriptors`).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServingStatus {
    /// Ready pods.
    pub ready: i32,
    /// Ready pods serving the published set.
    pub serving: i32,
    /// Ready pods whose answer could not be read (counted as not serving).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unreachable: i32,
    /// `serving/ready`, for printing.
    pub summary: String,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// Observed state.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FlagEvaluatorStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded and DescriptorsAccepted.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// `root`, `root+proxy` or `proxy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The root tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<TierStatus>,
    /// The proxy tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<TierStatus>,
    /// The URL applications should call (gRPC, gRPC-Web or Connect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The published descriptor set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descriptors: Option<DescriptorsStatus>,
}

impl DescriptorsRef {
    /// The ConfigMap key, defaulted.
    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or(DEFAULT_DESCRIPTORS_KEY)
    }

    /// Whether breaking changes are applied.
    pub fn allow_breaking(&self) -> bool {
        self.allow_breaking == Some(true)
    }
}

impl SecretKeyRef {
    /// The Secret key, defaulted.
    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or(DEFAULT_DATABASE_KEY)
    }
}

impl CaSecretRef {
    /// The Secret key, defaulted.
    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or("ca.crt")
    }
}

impl FlagEvaluatorSpec {
    /// `root`, `root+proxy` or `proxy`.
    pub fn mode(&self) -> &'static str {
        match (&self.root, &self.proxy) {
            (Some(_), Some(_)) => "root+proxy",
            (Some(_), None) => "root",
            (None, _) => "proxy",
        }
    }
}
