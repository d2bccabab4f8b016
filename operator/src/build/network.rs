//! Networking: a tier's Service.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{PORT, Tier, meta, selector, tier_name};
use crate::crd::FlagEvaluator;

pub(super) fn service(fe: &FlagEvaluator, owner: &OwnerReference, tier: Tier) -> Service {
    Service {
        metadata: meta(fe, owner, tier_name(fe, tier), Some(tier)),
        spec: Some(ServiceSpec {
            selector: Some(selector(fe, tier)),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: PORT,
                target_port: Some(IntOrString::String("http".to_owned())),
                // Cleartext HTTP/2 (prior knowledge) and HTTP/1.1, or both over TLS.
                app_protocol: Some(
                    if fe.spec.tls.is_some() {
                        "https"
                    } else {
                        "kubernetes.io/h2c"
                    }
                    .to_owned(),
                ),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}
