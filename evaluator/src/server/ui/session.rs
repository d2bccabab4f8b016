//! Who is using the web UI: sessions opened with an admin token, and the CSRF check of forms.
//!
//! Logging in with a token opens a session: a random id in an `HttpOnly`, `SameSite=Strict` cookie
//! that maps to the token's digest, never the token. Each request authenticates that digest against
//! the token file as it is now, so a token removed from the file ends its sessions at once. Sessions
//! are held in memory (bounded in number, ended after `IDLE` without use); a restart logs everyone
//! out.
//!
//! Forms carry a CSRF token that must equal the `pbflags_csrf` cookie (a double-submit cookie, as
//! v0.6's UI), and a request whose `Origin` names another site is refused, whatever it carries.

use std::sync::Arc;
use std::time::Duration;

use super::super::tokens::{Principal, Role, Tokens, same};

/// The session cookie.
pub const SESSION_COOKIE: &str = "pbflags_session";
/// The CSRF cookie; forms echo it in the `csrf_token` field.
pub const CSRF_COOKIE: &str = "pbflags_csrf";
/// The audit actor of changes made through the UI when the listener has no token file.
pub const ANONYMOUS: &str = "admin-ui";

/// A session unused this long ends.
const IDLE: Duration = Duration::from_secs(8 * 3600);
/// Most sessions held; beyond it the least recently used ones end.
const MAX_SESSIONS: u64 = 10_000;

/// 32 bytes of the operating system's CSPRNG, hex.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    // Without an entropy source nothing here can be secure: failing loudly is the only answer.
    getrandom::fill(&mut b).expect("the operating system's random number generator failed");
    hex::encode(b)
}

/// The sessions of one admin listener.
#[derive(Clone)]
pub struct Sessions {
    tokens: Option<Arc<Tokens>>,
    open: moka::sync::Cache<String, [u8; 32]>,
}

impl Sessions {
    /// Sessions authenticated against `tokens`; without tokens every user is an editor named
    /// [`ANONYMOUS`] and no login is needed.
    pub fn new(tokens: Option<Arc<Tokens>>) -> Self {
        Self {
            tokens,
            open: moka::sync::Cache::builder()
                .max_capacity(MAX_SESSIONS)
                .time_to_idle(IDLE)
                .build(),
        }
    }

    /// Whether users must log in.
    pub fn needs_login(&self) -> bool {
        self.tokens.is_some()
    }

    /// Opens a session for `token`: its id, and who it is; `None` if the token is not valid.
    pub fn login(&self, token: &str) -> Option<(String, Principal)> {
        let tokens = self.tokens.as_ref()?;
        let token = token.trim();
        let principal = tokens.authenticate(token)?;
        let id = random_token();
        self.open.insert(id.clone(), Tokens::digest_of(token));
        Some((id, principal))
    }

    /// Ends the session `id`.
    pub fn logout(&self, id: &str) {
        self.open.invalidate(id);
    }

    /// Who is behind the request's session cookie or `Authorization: Bearer` header, if anyone.
    pub fn principal(&self, headers: &http::HeaderMap) -> Option<Principal> {
        let Some(tokens) = &self.tokens else {
            return Some(Principal {
                name: ANONYMOUS.to_owned(),
                role: Role::Editor,
            });
        };
        if let Some(token) = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            return tokens.authenticate(token.trim());
        }
        let id = cookie(headers, SESSION_COOKIE)?;
        let digest = self.open.get(id)?;
        let p = tokens.authenticate_digest(&digest);
        if p.is_none() {
            // The token left the file: the session ends with it.
            self.open.invalidate(id);
        }
        p
    }
}

/// The value of cookie `name` in the request, if set.
pub fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// A `Set-Cookie` value: path `/`, `HttpOnly`, `SameSite=Strict`, `Secure` over TLS; `max_age`
/// zero removes the cookie, `None` makes it last the browser session.
pub fn set_cookie(name: &str, value: &str, secure: bool, max_age: Option<u64>) -> String {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if secure {
        c.push_str("; Secure");
    }
    if let Some(s) = max_age {
        c.push_str(&format!("; Max-Age={s}"));
    }
    c
}

/// Why a form post was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum CsrfError {
    /// `Origin` names another site.
    CrossOrigin(String),
    /// The form's token is missing or differs from the cookie.
    Token,
}

impl std::fmt::Display for CsrfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CsrfError::CrossOrigin(o) => write!(f, "the form was posted from another site ({o})"),
            CsrfError::Token => f.write_str(
                "the form's CSRF token is missing or stale: reload the page and submit it again",
            ),
        }
    }
}

/// Checks a form post: its `Origin`, if sent, is this host; its `csrf_token` equals the cookie.
pub fn check_csrf(headers: &http::HeaderMap, form_token: &str) -> Result<(), CsrfError> {
    if let Some(origin) = headers.get(http::header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("?");
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        if host.is_empty() || origin_host != host {
            return Err(CsrfError::CrossOrigin(origin.to_owned()));
        }
    }
    let cookie = cookie(headers, CSRF_COOKIE).unwrap_or("");
    if !cookie.is_empty() && same(cookie.as_bytes(), form_token.as_bytes()) {
        Ok(())
    } else {
        Err(CsrfError::Token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cookies_are_found_among_others() {
        let h = headers(&[("cookie", "a=1; pbflags_csrf=abc"), ("cookie", "b=2")]);
        assert_eq!(cookie(&h, CSRF_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
        assert_eq!(cookie(&headers(&[("cookie", "x=")]), "x"), None);
    }

    #[test]
    fn a_form_needs_the_cookies_token_and_this_sites_origin() {
        let ok = [("cookie", "pbflags_csrf=t0k3n"), ("host", "127.0.0.1:9200")];
        assert_eq!(check_csrf(&headers(&ok), "t0k3n"), Ok(()));
        assert_eq!(check_csrf(&headers(&ok), "t0k3m"), Err(CsrfError::Token));
        assert_eq!(check_csrf(&headers(&ok), ""), Err(CsrfError::Token));
        assert_eq!(
            check_csrf(&headers(&[("host", "h")]), ""),
            Err(CsrfError::Token),
            "no cookie, no empty match"
        );
        let mut same = ok.to_vec();
        same.push(("origin", "http://127.0.0.1:9200"));
        assert_eq!(check_csrf(&headers(&same), "t0k3n"), Ok(()));
        let mut cross = ok.to_vec();
        cross.push(("origin", "https://evil.example"));
        assert!(matches!(
            check_csrf(&headers(&cross), "t0k3n"),
            Err(CsrfError::CrossOrigin(_))
        ));
        let mut null = ok.to_vec();
        null.push(("origin", "null"));
        assert!(check_csrf(&headers(&null), "t0k3n").is_err());
    }

    #[test]
    fn sessions_follow_the_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "alice editor aaaaaaaaaaaaaaaaaaaa\n").unwrap();
        let tokens = Tokens::open(&path).unwrap();
        let s = Sessions::new(Some(tokens.clone()));
        assert!(s.login("wrong-token-wrong-token").is_none());
        let (id, p) = s.login("aaaaaaaaaaaaaaaaaaaa").unwrap();
        assert_eq!(p.name, "alice");
        assert_ne!(id, random_token());
        let with = headers(&[("cookie", &format!("{SESSION_COOKIE}={id}"))]);
        assert_eq!(s.principal(&with).map(|p| p.name), Some("alice".into()));
        assert_eq!(s.principal(&headers(&[])), None);
        // Revoked in the file: the session ends.
        std::fs::write(&path, "bob viewer bbbbbbbbbbbbbbbbbbbb\n").unwrap();
        assert!(tokens.check());
        assert_eq!(s.principal(&with), None);
        // Logging out ends a session.
        let (id, _) = s.login("bbbbbbbbbbbbbbbbbbbb").unwrap();
        let with = headers(&[("cookie", &format!("{SESSION_COOKIE}={id}"))]);
        assert!(s.principal(&with).is_some());
        s.logout(&id);
        assert_eq!(s.principal(&with), None);
        // Without a token file everyone is the anonymous editor.
        let open = Sessions::new(None);
        assert!(!open.needs_login());
        assert_eq!(
            open.principal(&headers(&[])).map(|p| (p.name, p.role)),
            Some((ANONYMOUS.to_owned(), Role::Editor))
        );
    }
}
