//! The admin web UI in a real browser: headless Chromium driven through ChromeDriver (WebDriver).
//! A user logs in with a token, finds a flag, kills it with the page's Kill button (accepting its
//! confirmation), sees the kill on the page, in an Evaluate and in the audit log. Every page is
//! checked for console errors (script errors, refused loads, content security policy violations)
//! and photographed; the screenshots are left in `<target>/tmp/browser/` (or `$PBFLAGS_ARTIFACTS`)
//! as test artifacts.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/test.sh` installs them); the paths
//! can be given with `PBFLAGS_CHROMIUM` and `PBFLAGS_CHROMEDRIVER`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

#[path = "support/pg.rs"]
mod pg;
#[path = "support/server.rs"]
mod server;
#[path = "support/web.rs"]
mod web;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use pbflags_proto::v1::{EvaluateRequest, EvaluationSource};
use serde_json::{Value, json};
use server::{Running, wait_until};
use web::Web;

const EDITOR: &str = "editor-token-0123456789";
/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn artifacts() -> PathBuf {
    let dir = std::env::var_os("PBFLAGS_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// ChromeDriver, stopped (by its process) when dropped.
struct Driver {
    child: Child,
    web: Web,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser session.
struct Browser {
    driver: Driver,
    session: String,
    _profile: tempfile::TempDir,
    shots: PathBuf,
}

impl Browser {
    async fn start() -> Browser {
        let driver_bin =
            std::env::var("PBFLAGS_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let chromium =
            std::env::var("PBFLAGS_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let shots = artifacts();
        let port = free_port();
        let log = std::fs::File::create(shots.join("chromedriver.log")).unwrap();
        let child = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{driver_bin}: {e}. The browser test needs Debian's chromium and chromium-driver \
                     (apt-get install chromium chromium-driver; scripts/test.sh installs them)"
                )
            });
        let mut driver = Driver {
            child,
            web: Web::new(format!("http://127.0.0.1:{port}")),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = driver.child.try_wait().unwrap() {
                panic!(
                    "{driver_bin} exited ({status}); see {}",
                    shots.join("chromedriver.log").display()
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                let (code, v) = driver.web.json("GET", "/status", None).await;
                if code == 200 && v["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "{driver_bin} did not get ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                // What a closed network needs: no background connections, no updates, no sync.
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
            "unhandledPromptBehavior": "ignore",
        }}});
        let (code, v) = driver.web.json("POST", "/session", Some(caps)).await;
        assert_eq!(code, 200, "new session: {v}");
        let session = v["value"]["sessionId"].as_str().unwrap().to_owned();
        Browser {
            driver,
            session,
            _profile: profile,
            shots,
        }
    }

    async fn cmd(&mut self, method: &str, path: &str, body: Option<Value>) -> Value {
        let full = format!("/session/{}{path}", self.session);
        let (code, v) = self.driver.web.json(method, &full, body).await;
        assert_eq!(code, 200, "{method} {path}: {v}");
        v["value"].clone()
    }

    async fn go(&mut self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    async fn url(&mut self) -> String {
        self.cmd("GET", "/url", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn find(&mut self, css: &str) -> String {
        let v = self
            .cmd(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("{css}: {v}"))
            .to_owned()
    }

    async fn click(&mut self, css: &str) {
        let el = self.find(css).await;
        self.cmd("POST", &format!("/element/{el}/click"), Some(json!({})))
            .await;
    }

    async fn type_into(&mut self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.cmd(
            "POST",
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Runs `script` in the page; its return value.
    async fn eval(&mut self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    async fn text(&mut self, css: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.innerText : null;",
            serde_json::to_string(css).unwrap()
        );
        self.eval(&script).await.as_str().unwrap_or("").to_owned()
    }

    /// Waits (bounded) until the page at a URL containing `part` has loaded.
    async fn wait_for_page(&mut self, part: &str) {
        self.wait_for_url(part, |url| url.contains(part)).await;
    }

    /// Waits (bounded) until a page whose URL passes `test` has loaded.
    async fn wait_for_url(&mut self, what: &str, test: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = self.url().await;
            if test(&url) && self.eval("return document.readyState").await == "complete" {
                return;
            }
            assert!(Instant::now() < deadline, "no page {what}: at {url}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A screenshot of the page, as `NAME.png` among the artifacts; and the page's console has
    /// logged no error since the last check.
    async fn check_page(&mut self, name: &str) {
        let png = self.cmd("GET", "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{name}: not a PNG");
        std::fs::write(self.shots.join(format!("{name}.png")), bytes).unwrap();
        let log = self
            .cmd("POST", "/se/log", Some(json!({"type": "browser"})))
            .await;
        let errors: Vec<&Value> = log
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING")
            .collect();
        assert!(errors.is_empty(), "{name}: console errors {errors:?}");
    }

    async fn close(mut self) {
        let path = format!("/session/{}", self.session);
        let (code, v) = self.driver.web.json("DELETE", &path, None).await;
        assert_eq!(code, 200, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_kills_a_flag_in_the_browser_and_sees_it_everywhere() {
    let db = pg::TestDb::create().await;
    server::migrate_and_sync_example(&db.pool().await).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("alice editor {EDITOR}\n")).unwrap();
    let root = Running::start(&[
        "--database",
        &db.url,
        "--admin-listen",
        "127.0.0.1:0",
        "--admin-token-file",
        tokens.to_str().unwrap(),
        "--env-name",
        "staging",
    ])
    .await;
    let base = format!("http://{}", root.admin_addr.unwrap());
    let mut b = Browser::start().await;

    // The dashboard sends to the login page.
    b.go(&format!("{base}/")).await;
    b.wait_for_page("/login").await;
    // The console check sees what a page logs (so a clean page is one that logged nothing).
    b.eval("console.error('probe'); return null").await;
    let seen = b
        .cmd("POST", "/se/log", Some(json!({"type": "browser"})))
        .await;
    assert!(
        seen.to_string().contains("probe"),
        "the console log is read: {seen}"
    );
    b.check_page("1-login").await;
    // The banner's colour is set by the page's script: the script ran under the page's policy.
    let bg = b
        .eval("return getComputedStyle(document.querySelector('.banner')).backgroundColor")
        .await;
    assert_eq!(bg, "rgb(180, 83, 9)", "staging's amber");

    b.type_into("#token", EDITOR).await;
    b.click("form[action='/login'] button[type=submit]").await;
    let home = format!("{base}/");
    b.wait_for_url("/", |u| u == home).await;
    assert!(b.text("header .who").await.contains("alice · editor"));
    let table = b.text("main").await;
    assert!(
        table.contains("notifications/2") && table.contains("digest_frequency"),
        "{table}"
    );
    b.check_page("2-flags").await;

    // Search, then the flag's page.
    b.type_into("main form.filters input[name=q]", "digest\u{E007}")
        .await;
    b.wait_for_page("q=digest").await;
    assert!(b.text("main").await.contains("1 of 4 flags"));
    b.check_page("3-search").await;
    b.click("a[href='/flags/notifications/2']").await;
    b.wait_for_page("/flags/notifications/2").await;
    assert_eq!(b.text("#flag-state").await, "DEFAULT");
    b.check_page("4-flag").await;

    // Kill: the page asks first; accepted, the form posts and the page shows the kill.
    b.click("#kill").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let prompt = loop {
        let path = format!("/session/{}/alert/text", b.session);
        let (code, v) = b.driver.web.json("GET", &path, None).await;
        if code == 200 {
            break v["value"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no confirmation asked: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(prompt.starts_with("Kill notifications/2?"), "{prompt}");
    b.cmd("POST", "/alert/accept", Some(json!({}))).await;
    b.wait_for_page("done=state").await;
    assert_eq!(b.text("#flag-state").await, "KILLED");
    assert_eq!(b.text("p.ok").await, "State changed.");
    b.check_page("5-flag-killed").await;

    // Evaluate answers with the kill.
    let mut evaluator = root.client().await;
    wait_until("Evaluate to answer KILLED", async || {
        let r = evaluator
            .evaluate(EvaluateRequest {
                flag_id: "notifications/2".into(),
                entity_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        r.source == EvaluationSource::Killed as i32
    })
    .await;

    // The audit page lists it, by the token's name; its filter narrows to the flag.
    b.click("nav a[href='/audit']").await;
    b.wait_for_page("/audit").await;
    let rows = b.text("#audit tbody").await;
    assert!(
        rows.contains("notifications/2") && rows.contains("UPDATE_STATE") && rows.contains("alice"),
        "{rows}"
    );
    b.check_page("6-audit").await;
    b.type_into("input[name=flag_id]", "notifications/3\u{E007}")
        .await;
    b.wait_for_page("flag_id=notifications%2F3").await;
    assert!(b.text("main").await.contains("No entries match."));
    b.check_page("7-audit-filtered").await;

    // Logging out ends the session: the dashboard asks for a token again.
    b.click("header form[action='/logout'] button").await;
    b.wait_for_page("/login").await;
    b.go(&format!("{base}/")).await;
    b.wait_for_page("/login?next=").await;
    b.check_page("8-logged-out").await;

    eprintln!("screenshots: {}", b.shots.display());
    b.close().await;
    root.stop().await;
}
