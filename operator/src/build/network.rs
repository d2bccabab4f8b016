//! Networking: a tier's Service; the admin API's Service and NetworkPolicy.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt as _;

use super::{ADMIN_PORT, PORT, Tier, meta, selector, tier_name};
use crate::crd::{AdminSpec, FlagEvaluator};

/// `<name>-admin`: the admin API's Service and NetworkPolicy.
pub fn admin_name(fe: &FlagEvaluator) -> String {
    format!("{}-admin", fe.name_any())
}

fn app_protocol(fe: &FlagEvaluator) -> String {
    // Cleartext HTTP/2 (prior knowledge) and HTTP/1.1, or both over TLS.
    if fe.spec.tls.is_some() {
        "https"
    } else {
        "kubernetes.io/h2c"
    }
    .to_owned()
}

/// The admin API on the root pods' `admin` port.
pub(super) fn admin_service(fe: &FlagEvaluator, owner: &OwnerReference) -> Service {
    Service {
        metadata: meta(fe, owner, admin_name(fe), Some(Tier::Root)),
        spec: Some(ServiceSpec {
            selector: Some(selector(fe, Tier::Root)),
            ports: Some(vec![ServicePort {
                name: Some("admin".to_owned()),
                port: ADMIN_PORT,
                target_port: Some(IntOrString::String("admin".to_owned())),
                app_protocol: Some(app_protocol(fe)),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Keeps the root pods' admin port closed to all but `allowedFrom`; the evaluation port stays
/// open to every peer (a policy selecting the pods closes what it does not allow).
pub(super) fn admin_policy(
    fe: &FlagEvaluator,
    owner: &OwnerReference,
    admin: &AdminSpec,
) -> NetworkPolicy {
    let port = |p: i32| {
        Some(vec![NetworkPolicyPort {
            port: Some(IntOrString::Int(p)),
            protocol: Some("TCP".to_owned()),
            ..NetworkPolicyPort::default()
        }])
    };
    let evaluation = NetworkPolicyIngressRule {
        from: None,
        ports: port(PORT),
    };
    let admin_rule = admin
        .allowed_from
        .clone()
        .filter(|peers| !peers.is_empty())
        .map(|peers| NetworkPolicyIngressRule {
            from: Some(peers),
            ports: port(ADMIN_PORT),
        });
    NetworkPolicy {
        metadata: meta(fe, owner, admin_name(fe), Some(Tier::Root)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector(fe, Tier::Root)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(std::iter::once(evaluation).chain(admin_rule).collect()),
            ..NetworkPolicySpec::default()
        }),
    }
}

pub(super) fn service(fe: &FlagEvaluator, owner: &OwnerReference, tier: Tier) -> Service {
    Service {
        metadata: meta(fe, owner, tier_name(fe, tier), Some(tier)),
        spec: Some(ServiceSpec {
            selector: Some(selector(fe, tier)),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: PORT,
                target_port: Some(IntOrString::String("http".to_owned())),
                app_protocol: Some(app_protocol(fe)),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}
