//! Step one: read the objects a FlagEvaluator references — the descriptors ConfigMap, the database
//! Secret and its CA Secret (root tier), the TLS Secret — and tell `build` what it needs of them, or say what is
//! missing.

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
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
    /// Keyed hash of the database Secret's value (root tier), so a changed Secret rolls the root
    /// pods; see [`keyed_hash`].
    pub secret_hash: Option<String>,
    /// The TLS Secret has a `ca.crt` for the proxy to check its root with.
    pub tls_ca: bool,
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

/// Reads every reference of `fe`, in the order a user fixes them: descriptors, database, TLS.
pub async fn dereference(fe: &FlagEvaluator, api: &Cluster<'_>) -> Result<References, Stop> {
    let descriptors = read_descriptors(fe, api).await?;
    let secret_hash = database_hash(fe, api).await?;
    check_database_ca(fe, api).await?;
    Ok(References {
        descriptors,
        secret_hash,
        tls_ca: check_tls(fe, api).await?,
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

/// A hash of the database Secret's value keyed with the Secret's uid (root tier only): it changes
/// when the value does (or the Secret is recreated), and whoever can read the Deployment but not the
/// Secret cannot test password guesses against it, since the key is the Secret's own random uid.
async fn database_hash(fe: &FlagEvaluator, api: &Cluster<'_>) -> Result<Option<String>, Stop> {
    let Some(root) = &fe.spec.root else {
        return Ok(None);
    };
    let ns = api.namespace();
    let name = &root.database.secret_name;
    let key = root.database.key();
    let Some(secret) = api.get::<Secret>(name).await? else {
        return blocked(
            reason::SECRET_MISSING,
            format!("Secret {ns}/{name} (spec.root.database.secretName) does not exist"),
        );
    };
    let Some(value) = secret.data.as_ref().and_then(|d| d.get(key)) else {
        return blocked(
            reason::SECRET_KEY_MISSING,
            format!("Secret {ns}/{name} has no key {key:?} (spec.root.database.key)"),
        );
    };
    let uid = secret.metadata.uid.as_deref().unwrap_or_default();
    Ok(Some(keyed_hash(uid, &value.0)))
}

/// The database CA Secret (`spec.root.databaseCa`), if any, must hold its key. Its content is not
/// hashed into the pods: the evaluator reads the mounted file for each new connection.
async fn check_database_ca(fe: &FlagEvaluator, api: &Cluster<'_>) -> Result<(), Stop> {
    let Some(ca) = fe.spec.root.as_ref().and_then(|r| r.database_ca.as_ref()) else {
        return Ok(());
    };
    let ns = api.namespace();
    let (name, key) = (&ca.secret_name, ca.key());
    let Some(secret) = api.get::<Secret>(name).await? else {
        return blocked(
            reason::SECRET_MISSING,
            format!("Secret {ns}/{name} (spec.root.databaseCa.secretName) does not exist"),
        );
    };
    if !secret.data.as_ref().is_some_and(|d| d.contains_key(key)) {
        return blocked(
            reason::SECRET_KEY_MISSING,
            format!("Secret {ns}/{name} has no key {key:?} (spec.root.databaseCa.key)"),
        );
    }
    Ok(())
}

/// The first 8 bytes of SHA-256(`key` ‖ 0 ‖ `value`), in hex.
pub fn keyed_hash(key: &str, value: &[u8]) -> String {
    let mut h = sha2::Sha256::new();
    h.update(key.as_bytes());
    h.update([0]);
    h.update(value);
    hex::encode(&h.finalize()[..8])
}

/// The TLS Secret (`spec.tls`) must have `tls.crt` and `tls.key`; returns whether it has `ca.crt`.
async fn check_tls(fe: &FlagEvaluator, api: &Cluster<'_>) -> Result<bool, Stop> {
    let Some(tls) = &fe.spec.tls else {
        return Ok(false);
    };
    let ns = api.namespace();
    let name = &tls.secret_name;
    let Some(secret) = api.get::<Secret>(name).await? else {
        return blocked(
            reason::TLS_SECRET_MISSING,
            format!("Secret {ns}/{name} (spec.tls.secretName) does not exist"),
        );
    };
    let data = secret.data.unwrap_or_default();
    let missing: Vec<&str> = ["tls.crt", "tls.key"]
        .into_iter()
        .filter(|k| !data.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        return blocked(
            reason::TLS_SECRET_KEY_MISSING,
            format!(
                "Secret {ns}/{name} (spec.tls.secretName) has no {}",
                missing.join(" and no ")
            ),
        );
    }
    Ok(data.contains_key("ca.crt"))
}
