//! Records the git commit the binaries are built from as `PBFLAGS_GIT_SHA`, for their start-up log
//! line and build-info metric. A `PBFLAGS_GIT_SHA` in the build's environment wins (image builds
//! without a `.git` directory pass it in); without either it is `unknown`.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=PBFLAGS_GIT_SHA");
    let sha = match std::env::var("PBFLAGS_GIT_SHA") {
        Ok(sha) if !sha.is_empty() => sha,
        _ => {
            // Rebuild when HEAD moves: HEAD itself (a checkout) and the branch it points to (a
            // commit), loose or packed.
            if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]).map(PathBuf::from) {
                let mut watched = vec![dir.join("HEAD"), dir.join("packed-refs")];
                if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                    watched.push(dir.join(branch));
                }
                for path in watched.iter().filter(|p| p.exists()) {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    println!("cargo:rustc-env=PBFLAGS_GIT_SHA={sha}");
}
