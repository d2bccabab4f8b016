//! A small HTTP/1.1 client for the web UI's tests: keeps cookies like a browser, posts forms, and
//! speaks JSON (to a WebDriver server).

#![allow(dead_code)] // each test binary uses part of it

use std::collections::BTreeMap;

use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A response, read whole.
#[derive(Debug)]
pub struct Page {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body as text.
    pub body: String,
}

impl Page {
    /// The `Location` header.
    pub fn location(&self) -> &str {
        self.headers
            .get(http::header::LOCATION)
            .map_or("", |v| v.to_str().unwrap())
    }

    /// The value of hidden input `name` in the page (the first one).
    pub fn hidden(&self, name: &str) -> Option<String> {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self.body.find(&marker)? + marker.len();
        let end = self.body[start..].find('"')?;
        Some(self.body[start..start + end].to_owned())
    }
}

/// `text` percent-encoded for a form or a query.
pub fn encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A client with a cookie jar, against one base URL.
pub struct Web {
    base: String,
    client: Client<HttpConnector, Full<bytes::Bytes>>,
    /// Cookies set by the server, by name.
    pub cookies: BTreeMap<String, String>,
    /// Extra headers sent with every request.
    pub extra: Vec<(&'static str, String)>,
}

impl Web {
    /// A client of `base` (e.g. `http://127.0.0.1:9200`).
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            cookies: BTreeMap::new(),
            extra: vec![],
        }
    }

    /// Sends a request; `body` with its content type.
    pub async fn send(&mut self, method: &str, path: &str, body: Option<(&str, String)>) -> Page {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req = req.header(http::header::COOKIE, jar.join("; "));
        }
        for (k, v) in &self.extra {
            req = req.header(*k, v);
        }
        let bytes = match body {
            Some((kind, b)) => {
                req = req.header(http::header::CONTENT_TYPE, kind);
                b
            }
            None => String::new(),
        };
        let resp = self
            .client
            .request(req.body(Full::new(bytes::Bytes::from(bytes))).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        for c in headers.get_all(http::header::SET_COOKIE) {
            let c = c.to_str().unwrap();
            let (kv, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = kv.split_once('=').unwrap();
            if v.is_empty() || attrs.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Page {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> Page {
        self.send("GET", path, None).await
    }

    /// `POST path` of a form with `fields`.
    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        self.send(
            "POST",
            path,
            Some(("application/x-www-form-urlencoded", body.join("&"))),
        )
        .await
    }

    /// A JSON request; the answer parsed (`null` for an empty body).
    pub async fn json(
        &mut self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let page = self
            .send(
                method,
                path,
                body.map(|b| ("application/json", b.to_string())),
            )
            .await;
        let v = if page.body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&page.body)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", page.body))
        };
        (page.status, v)
    }
}
