//! Helpers for tests on tier D, the control plane with a real node: images imported into the node's
//! runtime, the operator installed by its Helm chart, PostgreSQL reached from pods, a client pod to
//! send requests from inside the cluster, and what each evaluator pod reports about itself.
//!
//! Tests only: nothing here ships.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::{ControlPlane, node_image, repo_root};

/// The node's address on its bridge: pods reach the host (the API server, CoreDNS, a test's
/// PostgreSQL) here.
pub const NODE_IP: &str = "10.244.0.1";

/// The Helm release and namespace of the operator the tests install.
pub const OPERATOR_RELEASE: &str = "pbflags";
/// See [`OPERATOR_RELEASE`].
pub const OPERATOR_NAMESPACE: &str = "pbflags-system";

/// The client image: `nodetool` (e2e/controlplane/nodetool), imported by `node.sh start`.
pub const CLIENT_IMAGE: &str = "docker.io/library/nodetool:1";

/// Images imported into the node's runtime.
#[derive(Debug, Clone)]
pub struct Images {
    /// `pbflags-evaluator:<version>`.
    pub evaluator: String,
    /// `pbflags-operator:<version>`.
    pub operator: String,
}

impl Images {
    /// Builds (or takes from the cache) and imports both images.
    pub fn load() -> anyhow::Result<Self> {
        Ok(Self {
            evaluator: node_image("evaluator")?,
            operator: node_image("operator")?,
        })
    }
}

impl ControlPlane {
    /// `kubectl -n NS ARGS…`; its stdout, or an error with its stderr.
    pub fn run(&self, ns: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl().args(["-n", ns]).args(args).output()?;
        if !out.status.success() {
            bail!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl -n NS ARGS…` with `stdin` as its standard input.
    pub fn run_with_input(&self, ns: &str, args: &[&str], stdin: &[u8]) -> anyhow::Result<String> {
        let mut child = self
            .kubectl()
            .args(["-n", ns])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().context("stdin")?.write_all(stdin)?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Applies a FlagEvaluator manifest in `ns` and waits (up to 4 minutes) until `kubectl wait
    /// --for=condition=Ready fe/NAME` returns.
    pub fn apply_flag_evaluator(&self, ns: &str, name: &str, manifest: &str) -> anyhow::Result<()> {
        self.run_with_input(ns, &["apply", "-f", "-"], manifest.as_bytes())?;
        self.run(
            ns,
            &[
                "wait",
                "--for=condition=Ready",
                &format!("fe/{name}"),
                "--timeout=240s",
            ],
        )?;
        Ok(())
    }

    /// `helm` against this control plane.
    pub fn helm(&self) -> Command {
        let mut c = Command::new(self.bin.join("helm"));
        c.env("KUBECONFIG", &self.kubeconfig).env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("pbflags-helm-cache"),
        );
        c
    }

    /// Installs (or upgrades) the operator with the chart and the local images, waits until its
    /// Deployment is available, and returns the name of its pod.
    pub fn install_operator(&self, images: &Images) -> anyhow::Result<String> {
        let (repository, tag) = images.operator.split_once(':').context("image tag")?;
        let out = self
            .helm()
            .args(["upgrade", "--install", OPERATOR_RELEASE])
            .arg(repo_root().join("charts/pbflags-operator"))
            .args(["-n", OPERATOR_NAMESPACE, "--create-namespace", "--wait"])
            .args(["--timeout", "180s"])
            .args(["--set", &format!("image.repository={repository}")])
            .args(["--set", &format!("image.tag={tag}")])
            .args(["--set", "image.pullPolicy=Never"])
            .args(["--set", &format!("evaluatorImage={}", images.evaluator)])
            .output()?;
        if !out.status.success() {
            bail!("helm install: {}", String::from_utf8_lossy(&out.stderr));
        }
        let pods = self.run(
            OPERATOR_NAMESPACE,
            &[
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/name=pbflags-operator",
                "--field-selector=status.phase=Running",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ],
        )?;
        pods.split_whitespace()
            .next()
            .map(str::to_owned)
            .context("no running operator pod")
    }
}

/// Runs `pbflags-evaluator ARGS…` once in a pod of `ns` from the evaluator image, with the database
/// URL in its environment; its output. With `stdin`, as the README does it (`kubectl run --rm -i`):
/// the command reads its input from the attached stream, so nothing it prints can precede the
/// attach. Without, kubectl would attach to a command that may already have exited and printed
/// nothing it can see: the pod runs to completion and its output is read from its log.
pub fn evaluator_command(
    cp: &ControlPlane,
    ns: &str,
    images: &Images,
    database_url: &str,
    args: &[&str],
    stdin: &[u8],
) -> anyhow::Result<String> {
    let image = format!("--image={}", images.evaluator);
    let env = format!("--env=PBFLAGS_DATABASE={database_url}");
    let mut all = vec![
        "run",
        "pbflags-cli",
        "--restart=Never",
        "--image-pull-policy=Never",
        &image,
        &env,
    ];
    if !stdin.is_empty() {
        all.extend(["--rm", "-i", "--"]);
        all.extend_from_slice(args);
        return cp.run_with_input(ns, &all, stdin);
    }
    all.push("--");
    all.extend_from_slice(args);
    cp.run(ns, &all)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let phase = loop {
        let phase = cp.run(
            ns,
            &[
                "get",
                "pod",
                "pbflags-cli",
                "-o",
                "jsonpath={.status.phase}",
            ],
        )?;
        if phase == "Succeeded" || phase == "Failed" {
            break phase;
        }
        if Instant::now() > deadline {
            bail!("pbflags-evaluator {args:?} still {phase} after 120 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let logs = cp.run(ns, &["logs", "pod/pbflags-cli"])?;
    cp.run(ns, &["delete", "pod", "pbflags-cli"])?;
    if phase == "Failed" {
        bail!("pbflags-evaluator {args:?} failed: {logs}");
    }
    Ok(logs)
}

/// The host process id of a pod's container (`containerd://ID` in its status), from the node's
/// containerd.
pub fn container_pid(cp: &ControlPlane, container_id: &str) -> anyhow::Result<u32> {
    let id = container_id.trim_start_matches("containerd://");
    let run = cp.kubeconfig.parent().context("run directory")?;
    let out = Command::new("ctr")
        .arg("--address")
        .arg(run.join("node/containerd/containerd.sock"))
        .args(["-n", "k8s.io", "tasks", "ls"])
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == id).then(|| f.next()?.parse().ok())?
        })
        .with_context(|| format!("no task {id} in containerd"))
}

/// Makes a PostgreSQL server on the node (its loopback `url`, e.g. a test's own server started with
/// `PBFLAGS_PG_LISTEN` set to [`NODE_IP`]) reachable from pods of `ns` as `postgres.<ns>.svc:5432`,
/// the way a database outside the cluster is reached; returns the URL pods use.
pub fn database_service(cp: &ControlPlane, ns: &str, url: &str) -> anyhow::Result<String> {
    let port: u16 = url
        .split(':')
        .nth(2)
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in {url}"))?;
    node_service(cp, ns, "postgres", 5432, port)?;
    Ok(format!(
        "postgres://pbflags@postgres.{ns}.svc:5432/pbflags?sslmode=disable"
    ))
}

/// Makes `host:port` on the node reachable from pods of `ns` as `name.ns.svc:service_port`: a
/// Service without a selector and the EndpointSlice that points it at the node's address.
pub fn node_service(
    cp: &ControlPlane,
    ns: &str,
    name: &str,
    service_port: u16,
    node_port: u16,
) -> anyhow::Result<()> {
    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "List", "items": [
            { "apiVersion": "v1", "kind": "Service", "metadata": { "name": name },
              "spec": { "ports": [{ "name": "main", "port": service_port, "targetPort": node_port }] } },
            { "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
              "metadata": { "name": format!("{name}-node"),
                            "labels": { "kubernetes.io/service-name": name } },
              "addressType": "IPv4",
              "ports": [{ "name": "main", "port": node_port, "protocol": "TCP" }],
              "endpoints": [{ "addresses": [NODE_IP] }] }
        ]
    });
    cp.run_with_input(ns, &["apply", "-f", "-"], manifest.to_string().as_bytes())?;
    Ok(())
}

/// A pod running `nodetool` (no shell: commands are run with `kubectl exec`), to call evaluators
/// the way an application in the cluster does: through Service names, CoreDNS and kube-proxy.
pub struct ClientPod<'a> {
    cp: &'a ControlPlane,
    ns: String,
}

impl<'a> ClientPod<'a> {
    /// Starts the pod `client` in `ns` and waits until it runs.
    pub fn start(cp: &'a ControlPlane, ns: &str) -> anyhow::Result<Self> {
        cp.run(
            ns,
            &[
                "run",
                "client",
                &format!("--image={CLIENT_IMAGE}"),
                "--image-pull-policy=Never",
                "--restart=Never",
            ],
        )?;
        cp.run(
            ns,
            &[
                "wait",
                "--for=condition=Ready",
                "pod/client",
                "--timeout=120s",
            ],
        )?;
        Ok(Self {
            cp,
            ns: ns.to_owned(),
        })
    }

    /// `nodetool ARGS…` in the pod; its output.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["exec", "client", "--", "/nodetool"];
        all.extend_from_slice(args);
        self.cp.run(&self.ns, &all)
    }

    /// One Connect JSON Evaluate of `flag` at `url`, from inside the cluster.
    pub fn evaluate(&self, url: &str, flag: &str) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.exec(&["evaluate", url, flag])?)?)
    }

    /// Starts a bounded Evaluate loop of `secs` seconds in the pod; [`Loop::finish`] reads its
    /// summary.
    pub fn start_loop(&self, url: &str, flag: &str, secs: u64) -> anyhow::Result<Loop> {
        let child = self
            .cp
            .kubectl()
            .args(["-n", &self.ns, "exec", "client", "--", "/nodetool", "loop"])
            .args([url, flag, &format!("{secs}s")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(Loop { child })
    }
}

/// A running Evaluate loop in the client pod.
pub struct Loop {
    child: Child,
}

/// What an Evaluate loop saw.
#[derive(Debug, serde::Deserialize)]
pub struct LoopSummary {
    /// Answers counted by `"SOURCE VALUE"`, e.g. `EVALUATION_SOURCE_GLOBAL {"stringValue":"weekly"}`.
    pub answers: std::collections::BTreeMap<String, u64>,
    /// Calls that failed (transport error or a non-200 answer).
    pub failed: u64,
    /// The first few failures' messages.
    pub failures: Option<Vec<String>>,
}

impl LoopSummary {
    /// Answers received.
    pub fn answered(&self) -> u64 {
        self.answers.values().sum()
    }
}

impl Loop {
    /// Waits for the loop to end and parses its summary.
    pub fn finish(self) -> anyhow::Result<LoopSummary> {
        let out = self.child.wait_with_output()?;
        if !out.status.success() {
            bail!("client loop: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

/// The evaluator pods of tier `tier` (`root` or `proxy`) of FlagEvaluator `fe`.
pub async fn tier_pods(
    client: &kube::Client,
    ns: &str,
    fe: &str,
    tier: &str,
) -> anyhow::Result<Vec<Pod>> {
    let selector = format!("app.kubernetes.io/instance={fe},app.kubernetes.io/component={tier}");
    Ok(Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&selector))
        .await?
        .items)
}

/// True when the pod is Running, Ready, and not being deleted.
pub fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().is_some_and(|s| {
            s.phase.as_deref() == Some("Running")
                && s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// The pod's IP address.
pub fn pod_ip(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.pod_ip.as_deref()
}

/// The descriptor set's SHA-256 the evaluator at `ip:port` serves (`pbflags_descriptor_info`).
pub fn served_descriptor_sha(ip: &str, port: u16) -> anyhow::Result<String> {
    let metrics = http_get(&format!("{ip}:{port}"), "/metrics")?;
    metrics
        .lines()
        .filter(|l| l.starts_with("pbflags_descriptor_info{"))
        .find_map(|l| {
            let rest = &l[l.find("sha256=\"")? + 8..];
            Some(rest[..rest.find('"')?].to_owned())
        })
        .context("no pbflags_descriptor_info in /metrics")
}

/// A plain HTTP/1.0 GET from this host (the host reaches pod addresses through the bridge).
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let sock = addr.parse().context("address")?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let (head, body) = body.split_once("\r\n\r\n").context("no HTTP header")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("GET {addr}{path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}

/// A `kubectl port-forward` to `target` (e.g. `svc/flags-admin`) on a free local port, stopped
/// (by process id) when dropped.
pub struct PortForward {
    child: Child,
    /// The local port.
    pub port: u16,
}

impl PortForward {
    /// Forwards a free loopback port to `remote` of `target` in `ns`, once kubectl says it listens.
    /// kubectl's output is read to its end on a thread of its own: it writes a line per
    /// connection, and a closed pipe would end it.
    pub fn start(cp: &ControlPlane, ns: &str, target: &str, remote: u16) -> anyhow::Result<Self> {
        use std::io::BufRead as _;
        let mut child = cp
            .kubectl()
            .args(["-n", ns, "port-forward", "--address=127.0.0.1", target])
            .arg(format!(":{remote}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("start kubectl port-forward")?;
        let stdout = child.stdout.take().context("port-forward stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        // "Forwarding from 127.0.0.1:41234 -> 9200"
        let first = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let port = first
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok());
        match port {
            Some(port) => Ok(Self { child, port }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("kubectl port-forward {target}: unexpected output {first:?}")
            }
        }
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
