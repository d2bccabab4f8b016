//! Which descriptor set each evaluator pod serves, for `status.descriptors` and `Progressing`.
//!
//! The operator asks each *ready* evaluator pod: `GET /descriptors` on the evaluator's port answers
//! `{"sha256":…,"flags":N}` (the hash `pbflags_descriptor_info` exports). This needs no Kubernetes
//! privilege beyond listing pods (which the pod nudge already does) and no write access for the
//! evaluators: their ServiceAccount stays without rights. It needs network reach from the operator
//! to the evaluator port, which clients already have. The alternatives cost more privilege: reading
//! through the API server's `pods/proxy` lets the operator reach any port of any pod in scope, and
//! evaluators reporting their own hash in a pod annotation or condition would need `pods/patch`
//! for every evaluator.
//!
//! Over TLS the probe does not verify the evaluator's certificate: it sends nothing and reads a
//! hash that is public on `/metrics` anyway, so a forged answer could only misreport progress (as
//! the kubelet's HTTPS probes, which do not verify either). The certificate's names are the
//! Services', not the pod addresses the probe dials.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt as _;
use tokio_rustls::rustls;

use crate::build::Tier;

/// Time for one pod's answer, connect included.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pods asked at once.
const PROBE_CONCURRENCY: usize = 16;
/// Largest answer read.
const MAX_ANSWER_BYTES: usize = 4096;

/// What one evaluator pod told (or not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Not ready (or being deleted): not asked, not counted.
    NotReady,
    /// Serves the set with this SHA-256.
    Serves(String),
    /// Ready, but its answer could not be read.
    Unreachable(String),
}

/// Per tier: ready pods, and how many of them serve the published set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierServing {
    /// Ready pods.
    pub ready: i32,
    /// Ready pods serving the published set.
    pub serving: i32,
    /// Ready pods whose answer could not be read (counted as not serving).
    pub unreachable: i32,
}

impl TierServing {
    /// Every ready pod serves the set.
    pub fn complete(&self) -> bool {
        self.serving >= self.ready
    }
}

/// Which pods serve the published set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Serving {
    /// The root tier's pods.
    pub root: TierServing,
    /// The proxy tier's pods.
    pub proxy: TierServing,
    /// One reason a pod could not be read, for the status message.
    pub unreachable_reason: Option<String>,
}

impl Serving {
    /// Every ready pod of every tier serves the set.
    pub fn complete(&self) -> bool {
        self.root.complete() && self.proxy.complete()
    }

    /// Both tiers added up.
    pub fn total(&self) -> TierServing {
        TierServing {
            ready: self.root.ready + self.proxy.ready,
            serving: self.root.serving + self.proxy.serving,
            unreachable: self.root.unreachable + self.proxy.unreachable,
        }
    }
}

/// Counts the answers of a FlagEvaluator's pods against the published `sha256` (pure).
pub fn count(answers: &[(Tier, Answer)], sha256: &str) -> Serving {
    let mut serving = Serving::default();
    for (tier, answer) in answers {
        let t = match tier {
            Tier::Root => &mut serving.root,
            Tier::Proxy => &mut serving.proxy,
        };
        match answer {
            Answer::NotReady => continue,
            Answer::Serves(s) => {
                t.ready += 1;
                t.serving += i32::from(s == sha256);
            }
            Answer::Unreachable(why) => {
                t.ready += 1;
                t.unreachable += 1;
                serving
                    .unreachable_reason
                    .get_or_insert_with(|| why.clone());
            }
        }
    }
    serving
}

/// The evaluator tier a pod belongs to, from its component label.
pub fn tier_of(pod: &Pod) -> Option<Tier> {
    match pod
        .labels()
        .get("app.kubernetes.io/component")
        .map(String::as_str)
    {
        Some("root") => Some(Tier::Root),
        Some("proxy") => Some(Tier::Proxy),
        _ => None,
    }
}

/// What the probe needs of a pod.
struct Target {
    tier: Tier,
    name: String,
    ready: bool,
    ip: Option<IpAddr>,
}

impl Target {
    fn of(pod: &Pod) -> Option<Self> {
        Some(Self {
            tier: tier_of(pod)?,
            name: pod.name_any(),
            ready: is_ready(pod),
            ip: pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok()),
        })
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Asks evaluator pods which set they serve.
#[derive(Clone)]
pub struct Prober {
    port: u16,
    tls: tokio_rustls::TlsConnector,
}

impl Prober {
    /// Asks on `port` (the evaluator's port, [`crate::build::PORT`], outside tests).
    pub fn new(port: u16) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                    .with_no_client_auth()
            })
            .unwrap_or_else(|_| unreachable!("ring supports the default protocol versions"));
        Self {
            port,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    /// The answer of every pod in `pods` (over TLS when `tls`), in their order; pods of no tier
    /// are left out.
    pub async fn ask(&self, pods: &[Pod], tls: bool) -> Vec<(Tier, Answer)> {
        let targets: Vec<Target> = pods.iter().filter_map(Target::of).collect();
        futures_util::stream::iter(targets)
            .map(|t| self.answer(t, tls))
            .buffered(PROBE_CONCURRENCY)
            .collect()
            .await
    }

    async fn answer(&self, target: Target, tls: bool) -> (Tier, Answer) {
        let answer = match target.ip {
            _ if !target.ready => Answer::NotReady,
            None => Answer::Unreachable(format!("pod {} has no IP", target.name)),
            Some(addr) => {
                let addr = SocketAddr::new(addr, self.port);
                match tokio::time::timeout(PROBE_TIMEOUT, self.served(addr, tls)).await {
                    Ok(Ok(sha256)) => Answer::Serves(sha256),
                    Ok(Err(e)) => Answer::Unreachable(format!("GET {addr}/descriptors: {e}")),
                    Err(_) => Answer::Unreachable(format!(
                        "GET {addr}/descriptors: no answer within {PROBE_TIMEOUT:?}"
                    )),
                }
            }
        };
        (target.tier, answer)
    }

    /// The SHA-256 the evaluator at `addr` serves.
    pub async fn served(&self, addr: SocketAddr, tls: bool) -> Result<String, String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        if tls {
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let stream = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            get_descriptors(TokioIo::new(stream), addr).await
        } else {
            get_descriptors(TokioIo::new(tcp), addr).await
        }
    }
}

async fn get_descriptors<IO>(io: IO, addr: SocketAddr) -> Result<String, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
        .await
        .map_err(|e| e.to_string())?;
    // Ends when `send` is dropped or the peer closes.
    tokio::spawn(conn);
    let request = http::Request::get("/descriptors")
        .header(http::header::HOST, addr.to_string())
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = send
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    #[derive(serde::Deserialize)]
    struct Served {
        sha256: String,
    }
    serde_json::from_slice::<Served>(&body)
        .map(|s| s.sha256)
        .map_err(|e| format!("not a descriptors answer: {e}"))
}

/// Accepts any server certificate (see the module documentation) while still checking that the
/// handshake is signed by the key of the certificate presented.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_ready_pods_serving_the_set_per_tier() {
        let answers = vec![
            (Tier::Root, Answer::Serves("new".into())),
            (Tier::Root, Answer::NotReady),
            (Tier::Proxy, Answer::Serves("new".into())),
            (Tier::Proxy, Answer::Serves("old".into())),
            (Tier::Proxy, Answer::Unreachable("refused".into())),
        ];
        let s = count(&answers, "new");
        assert_eq!(
            s.root,
            TierServing {
                ready: 1,
                serving: 1,
                unreachable: 0
            }
        );
        assert_eq!(
            s.proxy,
            TierServing {
                ready: 3,
                serving: 1,
                unreachable: 1
            }
        );
        assert!(s.root.complete() && !s.proxy.complete() && !s.complete());
        assert_eq!(s.unreachable_reason.as_deref(), Some("refused"));
        assert_eq!(
            s.total(),
            TierServing {
                ready: 4,
                serving: 2,
                unreachable: 1
            }
        );
        assert!(count(&answers[..3], "new").complete());
        assert!(count(&[], "new").complete());
    }
}
