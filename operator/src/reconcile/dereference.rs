//! Step one: read what a FlagEvaluator references that the operator reads — the descriptors
//! ConfigMap — and tell `build` what it needs of it, or say what is missing.
//!
//! Secrets are not read: the operator has no right to them. The database URL, its CA and the TLS
//! pair reach the pods as mounted files; a missing Secret or key shows in the pods, which the
//! status reports (see [`crate::starting`]).

use k8s_openapi::api::core::v1::ConfigMap;
use sha2::Digest as _;

use super::Error;
use super::cluster::Cluster;
use crate::crd::FlagEvaluator;
use crate::status::{Problem, reason};

/// The descriptor set in the user's ConfigMap: the candidate for publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The content of the key.
    pub content: Vec<u8>,
    /// Its SHA-256, hex.
    pub sha256: String,
}

impl Candidate {
    /// A candidate with `content`.
    pub fn new(content: Vec<u8>) -> Self {
        let sha256 = hex::encode(sha2::Sha256::digest(&content));
        Self { content, sha256 }
    }
}

/// What the referenced objects tell the builders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct References {
    /// The descriptor set in the ConfigMap.
    pub descriptors: Candidate,
}

/// Why dereferencing stopped: a reference the user must fix, or a failed API call.
#[derive(Debug)]
pub enum Stop {
    /// A referenced object or key is missing; reported in the status, not retried quickly.
    Blocked(Problem),
    /// The API server failed; the reconcile fails and is retried.
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e)
    }
}

fn blocked<T>(reason: &'static str, message: String) -> Result<T, Stop> {
    Err(Stop::Blocked(Problem { reason, message }))
}

/// Reads the references of `fe` the operator reads.
pub async fn dereference(fe: &FlagEvaluator, api: &Cluster<'_>) -> Result<References, Stop> {
    Ok(References {
        descriptors: read_descriptors(fe, api).await?,
    })
}

async fn read_descriptors(fe: &FlagEvaluator, api: &Cluster<'_>) -> Result<Candidate, Stop> {
    let ns = api.namespace();
    let name = &fe.spec.descriptors.config_map_name;
    let key = fe.spec.descriptors.key();
    let Some(cm) = api.get::<ConfigMap>(name).await? else {
        return blocked(
            reason::CONFIG_MAP_MISSING,
            format!("ConfigMap {ns}/{name} (spec.descriptors.configMapName) does not exist"),
        );
    };
    let content = cm
        .binary_data
        .and_then(|mut d| d.remove(key))
        .map(|b| b.0)
        .or_else(|| {
            cm.data
                .and_then(|mut d| d.remove(key))
                .map(String::into_bytes)
        });
    match content {
        Some(content) => Ok(Candidate::new(content)),
        None => blocked(
            reason::CONFIG_MAP_KEY_MISSING,
            format!("ConfigMap {ns}/{name} has no key {key:?} (spec.descriptors.key)"),
        ),
    }
}
