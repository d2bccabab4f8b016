//! What the operator checks before it starts: that the cluster has the FlagEvaluator CRD and lets
//! it list FlagEvaluators. Without either it could only fail, quietly and forever, in its watches.

use kube::api::{Api, ListParams};

use crate::crd::FlagEvaluator;

/// Why the operator cannot run against this cluster.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// The CRD is not installed.
    #[error(
        "the FlagEvaluator CRD (flagevaluators.pbflags.dev) is not installed in this cluster; install \
         the chart with crds.enabled=true (the default), or kubectl apply -f \
         crds/flagevaluators.pbflags.dev.yaml"
    )]
    NoCrd,
    /// RBAC does not let the operator list FlagEvaluators.
    #[error(
        "the operator may not list FlagEvaluators{scope}: {message}; install the chart's RBAC \
         (rbac.create=true), and with --watch-namespaces a Role in each of those namespaces"
    )]
    Forbidden {
        /// Where.
        scope: String,
        /// The API server's message.
        message: String,
    },
}

/// Lists FlagEvaluators once (in each of `namespaces`, or cluster-wide when empty). A missing CRD
/// or a refusal is fatal; any other failure (the API server unreachable for now) is left to the
/// watches, which retry.
pub async fn check_api(client: &kube::Client, namespaces: &[String]) -> Result<(), Unavailable> {
    let scopes: Vec<Option<&str>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().map(|n| Some(n.as_str())).collect()
    };
    for ns in scopes {
        let api: Api<FlagEvaluator> = match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        match api.list_metadata(&ListParams::default().limit(1)).await {
            Err(kube::Error::Api(e)) if e.code == 404 => return Err(Unavailable::NoCrd),
            Err(kube::Error::Api(e)) if e.code == 403 => {
                return Err(Unavailable::Forbidden {
                    scope: ns.map_or_else(|| " cluster-wide".to_owned(), |n| format!(" in {n}")),
                    message: e.message,
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list FlagEvaluators yet; the watches will retry")
            }
            Ok(_) => {}
        }
    }
    Ok(())
}
