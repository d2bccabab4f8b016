//! Test support for tests that need a real Kubernetes API: starts (or reuses) the local control plane
//! built from Go modules (`e2e/controlplane/`), and gives each test a `kube::Client` and a namespace
//! of its own that is deleted afterwards.
//!
//! Tests only: nothing here ships.

pub mod node;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// How much of the control plane a test needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// etcd + kube-apiserver.
    A,
    /// + kube-controller-manager.
    B,
    /// + kube-scheduler + kwok.
    C,
    /// B + kube-scheduler + a real node (kubelet, containerd, runc, CNI, kube-proxy, CoreDNS).
    D,
}

/// A running local control plane.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Directory of the control plane's binaries (kubectl-compatible tools, helm).
    pub bin: PathBuf,
}

/// True when the cluster runs the operator itself (installed by the chart, as on kind), so tests
/// must not start one in-process: `PBFLAGS_E2E_EXTERNAL_OPERATOR=1`.
pub fn external_operator() -> bool {
    std::env::var_os("PBFLAGS_E2E_EXTERNAL_OPERATOR").is_some()
}

/// The repository root. Under cargo the running crate's directory (every crate sits one level below
/// the root) is read at run time: the shared target directory may hold a test binary compiled in
/// another checkout, whose compile-time path would point there.
pub fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("..")
}

/// The directory of the tools the tests run (`helm`, `kubectl`): the one
/// `e2e/controlplane/build.sh` builds into, or, with `PBFLAGS_E2E_KUBECONFIG` set (an outside
/// cluster such as kind), the `PATH` directory holding `helm`. Starts nothing.
pub fn tool_dir() -> anyhow::Result<PathBuf> {
    if std::env::var_os("PBFLAGS_E2E_KUBECONFIG").is_some() {
        return std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).find(|d| d.join("helm").is_file()))
            .unwrap_or_default()
            .context("PBFLAGS_E2E_KUBECONFIG is set but helm is not on PATH");
    }
    let dir = PathBuf::from(
        script_output(
            Command::new("bash")
                .arg(repo_root().join("e2e/controlplane/build.sh"))
                .arg("--print-bin"),
        )?
        .trim(),
    );
    if !dir.join("helm").is_file() {
        bail!(
            "{} has no helm; run e2e/controlplane/build.sh first",
            dir.display()
        );
    }
    Ok(dir)
}

static STARTED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

impl ControlPlane {
    /// Starts tier C (or reuses a running control plane) once per test process. With
    /// `PBFLAGS_E2E_KUBECONFIG` set, uses that cluster instead (e.g. kind) and `helm` from `PATH`.
    pub fn ensure() -> anyhow::Result<ControlPlane> {
        if let Some(kubeconfig) = std::env::var_os("PBFLAGS_E2E_KUBECONFIG") {
            return Ok(ControlPlane {
                kubeconfig: PathBuf::from(kubeconfig),
                bin: tool_dir()?,
            });
        }
        Self::ensure_tier(Tier::C)
    }

    /// Starts `tier` (or reuses a running control plane that serves it) once per test process; a
    /// test binary uses one tier.
    pub fn ensure_tier(tier: Tier) -> anyhow::Result<ControlPlane> {
        STARTED
            .get_or_init(|| Self::start(tier).map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(anyhow::Error::msg)
    }

    fn start(tier: Tier) -> anyhow::Result<ControlPlane> {
        let script = repo_root().join("e2e/controlplane/start.sh");
        let tier = format!("{tier:?}");
        let status = Command::new("bash")
            .arg(&script)
            .arg(&tier)
            .status()
            .context("run start.sh")?;
        if !status.success() {
            bail!(
                "{} {tier} failed ({status}); see its logs",
                script.display()
            );
        }
        let run = std::env::var_os("E2E_CP_RUN")
            .map_or_else(|| PathBuf::from("/tmp/pbflags-e2e-cp"), PathBuf::from);
        let env = std::fs::read_to_string(run.join("env"))
            .context("read the control plane's env file")?;
        let var = |name: &str| -> anyhow::Result<PathBuf> {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .map(PathBuf::from)
                .with_context(|| format!("{name} missing from env file"))
        };
        Ok(ControlPlane {
            kubeconfig: var("KUBECONFIG")?,
            bin: var("E2E_CP_BIN")?,
        })
    }

    /// A client authenticated as the admin.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).context("read kubeconfig")?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// `kubectl` against this control plane: the one built at the pinned version.
    pub fn kubectl(&self) -> Command {
        let built = self.bin.join("kubectl");
        let mut c = Command::new(if built.is_file() {
            built
        } else {
            PathBuf::from("kubectl")
        });
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c
    }
}

/// Builds the image `pbflags-<name>` (`evaluator` or `operator`) with `e2e/images/build.sh` from
/// the release binary and imports it into tier D's container runtime. Returns the reference pods
/// use with `imagePullPolicy: Never`, e.g. `pbflags-evaluator:0.1.0`.
pub fn node_image(name: &str) -> anyhow::Result<String> {
    let tar = script_output(
        Command::new("bash")
            .arg(repo_root().join("e2e/images/build.sh"))
            .arg(name),
    )?;
    let base = format!("docker.io/library/pbflags-{name}");
    script_output(
        Command::new("bash")
            .arg(repo_root().join("e2e/controlplane/node.sh"))
            .args(["import", &tar, &base]),
    )?;
    // build.sh tags images with the workspace version.
    Ok(format!("pbflags-{name}:{}", env!("CARGO_PKG_VERSION")))
}

fn script_output(c: &mut Command) -> anyhow::Result<String> {
    let out = c.output().with_context(|| format!("run {c:?}"))?;
    if !out.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A namespace owned by one test; deleted when dropped.
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    kubectl: Command,
}

impl TestNamespace {
    /// Creates a namespace named `<prefix>-<random suffix>`.
    pub async fn create(
        cp: &ControlPlane,
        client: &kube::Client,
        prefix: &str,
    ) -> anyhow::Result<Self> {
        let name = format!("{prefix}-{:08x}", rand_suffix());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "pbflags.dev/e2e": "true" } }
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(Self {
            name,
            kubectl: cp.kubectl(),
        })
    }

    /// Deletes the namespace now and waits for the API to accept the deletion.
    pub async fn delete(self, client: &kube::Client) -> anyhow::Result<()> {
        Api::<Namespace>::all(client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await?;
        std::mem::forget(self);
        Ok(())
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Drop cannot await: hand the deletion to kubectl, without waiting for finalization.
        let _ = self
            .kubectl
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .output();
    }
}

fn rand_suffix() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos ^ std::process::id().rotate_left(16)
}

/// Polls `f` every 200 ms until it returns a value; an error after `timeout`, naming `what`. Tests
/// wait for what they can observe with this instead of sleeping.
pub async fn wait_for<T>(
    what: &str,
    timeout: std::time::Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// [`wait_for`] a condition; returns how long it took.
pub async fn eventually(
    what: &str,
    timeout: std::time::Duration,
    mut f: impl AsyncFnMut() -> bool,
) -> anyhow::Result<std::time::Duration> {
    let start = std::time::Instant::now();
    wait_for(what, timeout, async || f().await.then_some(())).await?;
    Ok(start.elapsed())
}
