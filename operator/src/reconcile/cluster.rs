//! The API calls a reconcile makes, in one namespace: read, server-side apply under one field
//! manager, prune what the operator owns and no longer wants. Every failure says what was done.

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Error;
use crate::build::MANAGED_BY;

/// The one field manager of every write.
pub const FIELD_MANAGER: &str = "pbflags-operator";

/// A client bound to one namespace.
pub struct Cluster<'a> {
    client: &'a Client,
    ns: &'a str,
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Api { what, source }
}

fn kind<K: Resource>() -> String
where
    K::DynamicType: Default,
{
    K::kind(&K::DynamicType::default()).into_owned()
}

impl<'a> Cluster<'a> {
    /// Calls in `ns`.
    pub fn new(client: &'a Client, ns: &'a str) -> Self {
        Self { client, ns }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        self.ns
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), self.ns)
    }

    /// The object named `name`, if it exists.
    pub async fn get<K>(&self, name: &str) -> Result<Option<K>, Error>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
        K::DynamicType: Default,
    {
        self.api::<K>().get_opt(name).await.map_err(api_err(format!(
            "get {} {}/{name}",
            kind::<K>(),
            self.ns
        )))
    }

    /// Server-side applies `obj` (forcing ownership of its fields); returns what the server holds.
    pub async fn apply<K>(&self, obj: &K) -> Result<K, Error>
    where
        K: Resource<Scope = NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let name = obj.meta().name.clone().unwrap_or_default();
        self.api::<K>()
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(obj),
            )
            .await
            .map_err(api_err(format!("apply {} {}/{name}", kind::<K>(), self.ns)))
    }

    /// `Some("Kind ns/name")` when an object named like `obj` exists that the owner `uid` does
    /// not control (no controller owner reference to it): the operator never takes over objects
    /// it did not create.
    pub async fn foreign<K>(&self, obj: &K, uid: &str) -> Result<Option<String>, Error>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let name = obj.meta().name.clone().unwrap_or_default();
        let Some(existing) = self.get::<K>(&name).await? else {
            return Ok(None);
        };
        let controlled = existing
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && o.uid == uid);
        Ok((!controlled).then(|| format!("{} {}/{name}", kind::<K>(), self.ns)))
    }

    /// Merge-patches the annotations of the object `name` (no field ownership taken).
    pub async fn annotate<K>(
        &self,
        name: &str,
        annotations: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), Error>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let patch = serde_json::json!({ "metadata": { "annotations": annotations } });
        self.api::<K>()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(api_err(format!(
                "annotate {} {}/{name}",
                kind::<K>(),
                self.ns
            )))
    }

    /// The objects of kind `K` matching the label `selector`.
    pub async fn list<K>(&self, selector: &str) -> Result<Vec<K>, Error>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
        K::DynamicType: Default,
    {
        self.api::<K>()
            .list(&ListParams::default().labels(selector))
            .await
            .map(|l| l.items)
            .map_err(api_err(format!("list {}s {selector}", kind::<K>())))
    }

    /// The events about pod `name`, newest last as the API server lists them.
    pub async fn pod_events(
        &self,
        name: &str,
    ) -> Result<Vec<k8s_openapi::api::core::v1::Event>, Error> {
        let fields = format!("involvedObject.kind=Pod,involvedObject.name={name}");
        self.api::<k8s_openapi::api::core::v1::Event>()
            .list(&ListParams::default().fields(&fields))
            .await
            .map(|l| l.items)
            .map_err(api_err(format!("list events {fields}")))
    }

    /// Deletes the objects of kind `K` this operator made for `instance` whose names are not in
    /// `keep`.
    pub async fn prune<K>(&self, instance: &str, keep: &[String]) -> Result<(), Error>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
        K::DynamicType: Default,
    {
        self.prune_selected::<K>(instance, "", keep).await
    }

    /// Like [`Cluster::prune`], among the objects that also match `extra` (a label selector).
    pub async fn prune_selected<K>(
        &self,
        instance: &str,
        extra: &str,
        keep: &[String],
    ) -> Result<(), Error>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api = self.api::<K>();
        let mut selector = format!(
            "{}={},app.kubernetes.io/instance={instance}",
            MANAGED_BY.0, MANAGED_BY.1
        );
        if !extra.is_empty() {
            selector.push(',');
            selector.push_str(extra);
        }
        let list = api
            .list_metadata(&ListParams::default().labels(&selector))
            .await
            .map_err(api_err(format!("list owned {}s", kind::<K>())))?;
        for obj in list {
            let name = obj.name_any();
            if !keep.contains(&name) {
                api.delete(&name, &DeleteParams::background())
                    .await
                    .map_err(api_err(format!(
                        "delete {} {}/{name}",
                        kind::<K>(),
                        self.ns
                    )))?;
            }
        }
        Ok(())
    }
}
