//! Bearer tokens of the admin listener, from a file (`--admin-token-file`): one per line,
//! `NAME ROLE TOKEN` separated by whitespace, the role `viewer` (reads) or `editor` (reads and
//! changes); blank lines and lines starting with `#` are ignored. The file is followed like the TLS
//! files: a new version replaces the tokens at once, a broken one is refused (logged without any
//! token) and the previous tokens stay.
//!
//! Tokens are held as SHA-256 digests and a presented token is compared with every one of them in
//! constant time, so neither the comparison nor an early exit tells how much of a guess was right.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use sha2::Digest as _;

/// Shortest token accepted in the file.
pub const MIN_TOKEN_CHARS: usize = 16;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read flags and the audit log.
    Viewer,
    /// Read and change.
    Editor,
}

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name: the audit actor of its changes.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

type Entries = Vec<([u8; 32], Principal)>;

/// The tokens of one file.
pub struct Tokens {
    path: PathBuf,
    entries: ArcSwap<Entries>,
    /// SHA-256 of the file content last loaded, to tell a change from a spurious trigger.
    loaded: std::sync::Mutex<[u8; 32]>,
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(bytes).into()
}

/// Equal byte strings, without an early exit on the first difference (a length difference is
/// answered at once: lengths are no secret here).
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses a token file; errors name the line, never a token.
pub fn parse(text: &str) -> Result<Entries, String> {
    let mut entries: Entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, role, token] = fields[..] else {
            return Err(format!(
                "line {n}: expected NAME ROLE TOKEN, found {} fields",
                fields.len()
            ));
        };
        let role = match role {
            "viewer" => Role::Viewer,
            "editor" => Role::Editor,
            other => {
                return Err(format!(
                    "line {n}: role {other:?} is neither viewer nor editor"
                ));
            }
        };
        if token.chars().count() < MIN_TOKEN_CHARS {
            return Err(format!(
                "line {n}: the token of {name} is shorter than {MIN_TOKEN_CHARS} characters"
            ));
        }
        let d = digest(token.as_bytes());
        if entries.iter().any(|(e, _)| same(e, &d)) {
            return Err(format!("line {n}: the token of {name} is used twice"));
        }
        entries.push((
            d,
            Principal {
                name: name.to_owned(),
                role,
            },
        ));
    }
    if entries.is_empty() {
        return Err("no tokens (expected lines of NAME ROLE TOKEN)".to_owned());
    }
    Ok(entries)
}

fn read(path: &Path) -> Result<(Entries, [u8; 32]), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("admin token file {}: {e}", path.display()))?;
    let entries = parse(&text).map_err(|e| format!("admin token file {}: {e}", path.display()))?;
    Ok((entries, digest(text.as_bytes())))
}

impl Tokens {
    /// Loads `path`; fails if it does not read or parse.
    pub fn open(path: impl Into<PathBuf>) -> Result<Arc<Self>, String> {
        let path = path.into();
        let (entries, loaded) = read(&path)?;
        Ok(Arc::new(Self {
            path,
            entries: ArcSwap::from_pointee(entries),
            loaded: std::sync::Mutex::new(loaded),
        }))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reloads the file if it changed; returns whether new tokens are in use.
    pub fn check(&self) -> bool {
        match read(&self.path) {
            Ok((entries, d)) => {
                let mut loaded = self
                    .loaded
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if same(&*loaded, &d) {
                    return false;
                }
                *loaded = d;
                let n = entries.len();
                self.entries.store(Arc::new(entries));
                tracing::info!(tokens = n, path = %self.path.display(), "admin tokens reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin token file not reloaded; the previous tokens stay");
                false
            }
        }
    }

    /// Whose `token` this is, if anyone's.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        self.authenticate_digest(&Self::digest_of(token))
    }

    /// The digest a token is held and compared as (what a web UI session keeps instead of it).
    pub fn digest_of(token: &str) -> [u8; 32] {
        digest(token.as_bytes())
    }

    /// Whose token has digest `d`, if anyone's.
    pub fn authenticate_digest(&self, d: &[u8; 32]) -> Option<Principal> {
        let entries = self.entries.load();
        let mut found = None;
        for (e, p) in entries.iter() {
            if same(e, d) {
                found = Some(p.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_role_token_with_comments_and_clear_errors() {
        let e = parse(
            "# ops\n\nalice editor aaaaaaaaaaaaaaaaaaaa\n  bob viewer bbbbbbbbbbbbbbbbbbbb  \n",
        )
        .unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(
            e[1].1,
            Principal {
                name: "bob".into(),
                role: Role::Viewer
            }
        );
        for (text, says) in [
            ("alice editor", "expected NAME ROLE TOKEN"),
            (
                "alice admin aaaaaaaaaaaaaaaaaaaa",
                "neither viewer nor editor",
            ),
            ("alice editor short", "shorter than 16"),
            (
                "a editor aaaaaaaaaaaaaaaaaaaa\nb viewer aaaaaaaaaaaaaaaaaaaa",
                "line 2: the token of b is used twice",
            ),
            ("# nothing\n", "no tokens"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(says), "{text:?}: {err}");
            assert!(
                !err.contains("aaaaaaaa"),
                "a token never appears in an error: {err}"
            );
        }
    }

    #[test]
    fn tokens_authenticate_and_a_changed_file_replaces_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "alice editor aaaaaaaaaaaaaaaaaaaa\n").unwrap();
        let t = Tokens::open(&path).unwrap();
        assert_eq!(
            t.authenticate("aaaaaaaaaaaaaaaaaaaa").map(|p| p.name),
            Some("alice".into())
        );
        assert_eq!(t.authenticate("aaaaaaaaaaaaaaaaaaab"), None);
        assert_eq!(t.authenticate(""), None);
        assert!(!t.check(), "unchanged");
        std::fs::write(&path, "carol viewer cccccccccccccccccccc\n").unwrap();
        assert!(t.check());
        assert_eq!(t.authenticate("aaaaaaaaaaaaaaaaaaaa"), None, "revoked");
        assert_eq!(
            t.authenticate("cccccccccccccccccccc").map(|p| p.role),
            Some(Role::Viewer)
        );
        // A broken file keeps the tokens in use.
        std::fs::write(&path, "carol boss cccccccccccccccccccc\n").unwrap();
        assert!(!t.check());
        assert!(t.authenticate("cccccccccccccccccccc").is_some());
    }
}
