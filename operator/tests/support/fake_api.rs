//! An in-process stand-in for the API server, enough for reconcile tests: objects stored by path,
//! GET / server-side-apply PATCH / list (label-selected) / DELETE / POST, every request recorded,
//! statuses a test sets attached on apply, and failures injected by method and path.

#![allow(dead_code, clippy::unwrap_used)] // test support: a panic is the failure report

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

#[derive(Default)]
struct State {
    /// Object JSON by its path, e.g. `/api/v1/namespaces/ns/configmaps/name`.
    objects: BTreeMap<String, Value>,
    /// `METHOD path` of every request, in order.
    requests: Vec<String>,
    /// Resource plural → status given to applied objects of that kind that have none.
    statuses: BTreeMap<String, Value>,
    /// (method, path substring) that answer 500.
    failures: Vec<(Method, String)>,
}

/// The fake API server; clone it into [`FakeApi::client`] and inspect it afterwards.
#[derive(Clone, Default)]
pub struct FakeApi(Arc<Mutex<State>>);

/// The path of a namespaced object: core (`v1`) or grouped (`apps/v1`).
pub fn path(api_version: &str, ns: &str, plural: &str, name: &str) -> String {
    let prefix = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    format!("{prefix}/namespaces/{ns}/{plural}/{name}")
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (k, v) in fields {
        if v.is_null() {
            target.as_object_mut().unwrap().remove(k);
        } else {
            merge_patch(&mut target[k], v);
        }
    }
}

/// Whether `obj` has every `a.b=value` of a field selector (dotted paths into the object).
fn fields_match(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap();
        k.split('.').fold(obj, |o, part| &o[part]).as_str() == Some(v)
    })
}

fn labels_match(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap();
        obj["metadata"]["labels"][k].as_str() == Some(v)
    })
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "reason": reason, "message": message, "code": code.as_u16(),
    });
    respond(code, &body)
}

fn respond(code: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

impl FakeApi {
    /// A kube client whose every request this fake answers.
    pub fn client(&self) -> kube::Client {
        let fake = self.clone();
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let fake = fake.clone();
            async move { Ok::<_, Infallible>(fake.handle(req).await) }
        });
        kube::Client::new(service, "default")
    }

    /// Stores `obj` (its apiVersion, kind's plural and metadata give the path).
    pub fn insert(&self, plural: &str, obj: Value) {
        let m = &obj["metadata"];
        let p = path(
            obj["apiVersion"].as_str().unwrap(),
            m["namespace"].as_str().unwrap(),
            plural,
            m["name"].as_str().unwrap(),
        );
        self.0.lock().unwrap().objects.insert(p, obj);
    }

    /// The stored object at `path`.
    pub fn get(&self, path: &str) -> Option<Value> {
        self.0.lock().unwrap().objects.get(path).cloned()
    }

    /// Applied objects of resource `plural` that have no status get `status`.
    pub fn status_on_apply(&self, plural: &str, status: Value) {
        self.0
            .lock()
            .unwrap()
            .statuses
            .insert(plural.to_owned(), status);
    }

    /// Requests with `method` whose path contains `fragment` fail with 500.
    pub fn fail(&self, method: Method, fragment: &str) {
        self.0
            .lock()
            .unwrap()
            .failures
            .push((method, fragment.to_owned()));
    }

    /// `METHOD path` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.0.lock().unwrap().requests.clone()
    }

    /// Whether a request with `method` went to a path containing `fragment`.
    pub fn saw(&self, method: &str, fragment: &str) -> bool {
        self.requests()
            .iter()
            .any(|r| r.starts_with(&format!("{method} ")) && r.contains(fragment))
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.0.lock().unwrap().requests.clear();
    }

    async fn handle(&self, req: Request<kube::client::Body>) -> Response<Full<Bytes>> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        // list_metadata asks for PartialObjectMetadataList; list for the typed list.
        let metadata_only = req
            .headers()
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("PartialObjectMetadata"));
        let merge = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes() == b"application/merge-patch+json");
        let query = req.uri().query().map(percent_decode).unwrap_or_default();
        let body = req.into_body().collect_bytes().await.unwrap();
        let mut state = self.0.lock().unwrap();
        state.requests.push(format!("{method} {path}"));
        if state
            .failures
            .iter()
            .any(|(m, f)| *m == method && path.contains(f.as_str()))
        {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "injected failure",
            );
        }
        let (path, subresource) = match path.strip_suffix("/status") {
            Some(p) => (p.to_owned(), Some("status")),
            None => (path, None),
        };
        // A collection path has an even number of segments after the namespace: .../ns/<plural>.
        let is_collection = path
            .rsplit_once("/namespaces/")
            .is_some_and(|(_, rest)| rest.split('/').count() == 2);
        match method {
            Method::GET if is_collection => {
                let selector = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("labelSelector="))
                    .unwrap_or("");
                let fields = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("fieldSelector="))
                    .unwrap_or("");
                let prefix = format!("{path}/");
                let items: Vec<Value> = state
                    .objects
                    .iter()
                    .filter(|(p, o)| {
                        p.starts_with(&prefix)
                            && !p[prefix.len()..].contains('/')
                            && labels_match(o, selector)
                            && fields_match(o, fields)
                    })
                    .map(|(_, o)| {
                        if metadata_only {
                            json!({
                                "apiVersion": "meta.k8s.io/v1",
                                "kind": "PartialObjectMetadata",
                                "metadata": o["metadata"],
                            })
                        } else {
                            o.clone()
                        }
                    })
                    .collect();
                let api_version = path
                    .strip_prefix("/apis/")
                    .or_else(|| path.strip_prefix("/api/"))
                    .and_then(|p| p.split("/namespaces/").next())
                    .unwrap_or("v1");
                let (api_version, kind) = if metadata_only {
                    ("meta.k8s.io/v1", "PartialObjectMetadataList".to_owned())
                } else {
                    (api_version, "List".to_owned())
                };
                respond(
                    StatusCode::OK,
                    &json!({
                        "apiVersion": api_version,
                        "kind": kind,
                        "metadata": {},
                        "items": items,
                    }),
                )
            }
            Method::GET => match state.objects.get(&path) {
                Some(o) => respond(StatusCode::OK, o),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{path} not found"),
                ),
            },
            Method::PATCH => {
                let patch: Value = serde_json::from_slice(&body).unwrap();
                let plural = path.rsplit('/').nth(1).unwrap_or("").to_owned();
                let given = state.statuses.get(&plural).cloned();
                let stored = state.objects.entry(path).or_insert_with(|| json!({}));
                if subresource == Some("status") {
                    stored["status"] = patch["status"].clone();
                } else if merge {
                    merge_patch(stored, &patch);
                } else {
                    let status = stored.get("status").cloned().or(given);
                    *stored = patch;
                    if let Some(s) = status {
                        stored["status"] = s;
                    }
                }
                respond(StatusCode::OK, stored)
            }
            Method::POST => {
                let obj: Value = serde_json::from_slice(&body).unwrap();
                respond(StatusCode::CREATED, &obj)
            }
            Method::DELETE => {
                state.objects.remove(&path);
                respond(
                    StatusCode::OK,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
                )
            }
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "unsupported",
            ),
        }
    }
}
