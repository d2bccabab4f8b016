//! The chart and the helm binary, for the chart tests with and without a cluster.

#![allow(dead_code, clippy::unwrap_used)] // test support: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;

/// The chart's directory.
pub fn chart() -> PathBuf {
    pbflags_e2e::repo_root().join("charts/pbflags-operator")
}

/// `helm` from `dir`, against `kubeconfig` if given, with a cache outside the home directory.
pub fn helm(dir: &Path, kubeconfig: Option<&Path>) -> Command {
    let mut c = Command::new(dir.join("helm"));
    c.env(
        "HELM_CACHE_HOME",
        std::env::temp_dir().join("pbflags-helm-cache"),
    );
    if let Some(k) = kubeconfig {
        c.env("KUBECONFIG", k);
    }
    c
}

/// Runs `c`; panics with its stderr if it fails; returns its stdout.
pub fn run(mut c: Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        c,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
