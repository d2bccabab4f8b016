//! The admin web UI over HTTP, against a real PostgreSQL: logging in, CSRF, viewers, the forms'
//! changes (seen by Evaluate and in the audit log), the rules and clear refusals, escaping, the
//! audit filters, and a loopback listener without tokens. The browser test (`tests/browser.rs`)
//! drives the same pages in Chromium.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

#[path = "support/pg.rs"]
mod pg;
#[path = "support/server.rs"]
mod server;
#[path = "support/web.rs"]
mod web;

use pbflags_evaluator::sources::pg::admin;
use pbflags_proto::v1::{EvaluateRequest, EvaluationSource, State};
use server::{Running, wait_until};
use web::{Page, Web};

const EDITOR: &str = "editor-token-0123456789";
const VIEWER: &str = "viewer-token-0123456789";

struct Ui {
    root: Running,
    db: pg::TestDb,
    _dir: tempfile::TempDir,
}

async fn ui_root(with_tokens: bool) -> Ui {
    let db = pg::TestDb::create().await;
    server::migrate_and_sync_example(&db.pool().await).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("alice editor {EDITOR}\nbob viewer {VIEWER}\n"),
    )
    .unwrap();
    let mut args = vec!["--database", &db.url, "--admin-listen", "127.0.0.1:0"];
    if with_tokens {
        args.extend(["--admin-token-file", tokens.to_str().unwrap()]);
    }
    let root = Running::start(&args).await;
    Ui {
        root,
        db,
        _dir: dir,
    }
}

fn web(root: &Running) -> Web {
    Web::new(format!("http://{}", root.admin_addr.unwrap()))
}

/// Logs in with `token`; returns the page the login redirected to.
async fn login(w: &mut Web, token: &str) -> Page {
    let form = w.get("/login").await;
    assert_eq!(form.status, 200, "{}", form.body);
    let csrf = form.hidden("csrf_token").unwrap();
    let r = w
        .post(
            "/login",
            &[("csrf_token", &csrf), ("token", token), ("next", "/audit")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location(), "/audit");
    w.get(r.location()).await
}

fn csrf(w: &Web) -> String {
    w.cookies.get("pbflags_csrf").cloned().unwrap()
}

async fn state_of(root: &Running, flag: &str) -> (i32, i32) {
    let r = root
        .client()
        .await
        .evaluate(EvaluateRequest {
            flag_id: flag.into(),
            entity_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    (r.source, r.value.map_or(0, |_| 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_need_a_login_and_forms_need_the_csrf_token() {
    let Ui { root, db, _dir } = ui_root(true).await;
    let mut w = web(&root);

    // Not logged in: pages send to the login, with the way back; changes are refused.
    let r = w.get("/flags/notifications/2").await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location(), "/login?next=/flags/notifications/2");
    let r = w
        .post("/api/flags/state/notifications/2", &[("state", "KILLED")])
        .await;
    assert_eq!(r.status, 401, "{}", r.body);

    // Every page is locked down: no inline script, no framing, no caching. A first visit gets
    // its CSRF cookie.
    let form = web(&root).get("/login").await;
    let csp = form.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(form.headers["x-frame-options"], "DENY");
    assert_eq!(form.headers["cache-control"], "no-store");
    let set = form.headers["set-cookie"].to_str().unwrap();
    assert!(
        set.starts_with("pbflags_csrf=")
            && set.contains("HttpOnly")
            && set.contains("SameSite=Strict")
    );

    // A login without the form's CSRF token, or with a wrong token, opens no session.
    let r = w.post("/login", &[("token", EDITOR)]).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("CSRF token"), "{}", r.body);
    let c = csrf(&w);
    let r = w
        .post(
            "/login",
            &[("csrf_token", &c), ("token", "not-a-token-0123456789")],
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("That token is not valid."));
    assert!(!w.cookies.contains_key("pbflags_session"));
    // After a login, only a path of this site is followed.
    let r = w
        .post(
            "/login",
            &[
                ("csrf_token", &c),
                ("token", EDITOR),
                ("next", "//evil.example/"),
            ],
        )
        .await;
    assert_eq!((r.status, r.location()), (303, "/"));
    let session = w.cookies["pbflags_session"].clone();
    assert!(
        r.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("HttpOnly")
    );

    let dash = w.get("/").await;
    assert_eq!(dash.status, 200);
    assert!(dash.body.contains("alice · editor"), "{}", dash.body);
    assert!(dash.body.contains("notifications&#x2f;2"));

    // A form without the CSRF token, with another one, or posted from another site: refused,
    // nothing changed.
    for (fields, origin) in [
        (vec![("state", "KILLED")], None),
        (vec![("state", "KILLED"), ("csrf_token", "0123")], None),
        (
            vec![("state", "KILLED"), ("csrf_token", c.as_str())],
            Some("https://evil.example"),
        ),
    ] {
        w.extra = origin
            .map(|o| ("origin", o.to_owned()))
            .into_iter()
            .collect();
        let r = w.post("/api/flags/state/notifications/2", &fields).await;
        assert_eq!(r.status, 403, "{fields:?} {origin:?}: {}", r.body);
    }
    w.extra.clear();
    let pool = db.pool().await;
    assert!(admin::audit_log(&pool, None, 10).await.unwrap().is_empty());

    // Logging out ends the session on the server, not just in the browser.
    let r = w.post("/logout", &[("csrf_token", &c)]).await;
    assert_eq!((r.status, r.location()), (303, "/login"));
    w.cookies.insert("pbflags_session".into(), session);
    assert_eq!(w.get("/").await.status, 303, "the old session is gone");
    root.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_change_flags_by_the_clis_rules_and_the_audit_log_shows_them() {
    let Ui { root, db, _dir } = ui_root(true).await;
    let mut w = web(&root);
    login(&mut w, EDITOR).await;
    let c = csrf(&w);

    // Kill through the form: a redirect to the flag's page, which says so; Evaluate answers
    // KILLED (pushed to the cache, not after a TTL).
    let r = w
        .post(
            "/api/flags/state/notifications/2",
            &[("csrf_token", &c), ("state", "KILLED")],
        )
        .await;
    assert_eq!(
        (r.status, r.location()),
        (303, "/flags/notifications/2?done=state")
    );
    let page = w.get(r.location()).await;
    assert!(page.body.contains("State changed."));
    assert!(
        page.body.contains(r#"id="flag-state">KILLED"#),
        "{}",
        page.body
    );
    wait_until("Evaluate to answer KILLED", async || {
        state_of(&root, "notifications/2").await.0 == EvaluationSource::Killed as i32
    })
    .await;

    // Enable with a value: parsed against the flag's type; a wrong one is refused naming it.
    let r = w
        .post(
            "/api/flags/state/notifications/3",
            &[("csrf_token", &c), ("state", "ENABLED"), ("value", "lots")],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body
            .contains("notifications&#x2f;3 is INT64; &#x27;lots&#x27; is not"),
        "{}",
        r.body
    );
    let r = w
        .post(
            "/api/flags/state/notifications/3",
            &[("csrf_token", &c), ("state", "ENABLED"), ("value", "")],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("value is required to enable a flag"));
    let r = w
        .post(
            "/api/flags/state/notifications/3",
            &[("csrf_token", &c), ("state", "ENABLED"), ("value", "7")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let r = w
        .post(
            "/api/flags/state/notifications/3",
            &[("csrf_token", &c), ("state", "PAUSED")],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body
            .contains("state &quot;PAUSED&quot; is not ENABLED, DEFAULT or KILLED"),
        "{}",
        r.body
    );
    assert_eq!(
        w.get("/flags/nothing/9").await.status,
        404,
        "an unknown flag is a 404"
    );

    // Overrides: refused on a global-layer flag; set and removed on a user-layer one. An entity
    // id with markup is shown as text.
    let r = w
        .post(
            "/api/flags/overrides/notifications/2",
            &[
                ("csrf_token", &c),
                ("entity_id", "u1"),
                ("state", "DEFAULT"),
            ],
        )
        .await;
    assert_eq!(r.status, 409);
    assert!(r.body.contains("does not support per-entity overrides"));
    let r = w
        .post(
            "/api/flags/overrides/notifications/1",
            &[("csrf_token", &c), ("entity_id", "u1"), ("state", "KILLED")],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("per-entity kill is not supported"));
    let odd = "<script>alert(1)</script>";
    let r = w
        .post(
            "/api/flags/overrides/notifications/1",
            &[
                ("csrf_token", &c),
                ("entity_id", odd),
                ("state", "ENABLED"),
                ("value", "false"),
            ],
        )
        .await;
    assert_eq!(
        (r.status, r.location()),
        (303, "/flags/notifications/1?done=override")
    );
    let page = w.get(r.location()).await;
    assert!(!page.body.contains(odd));
    assert!(
        page.body
            .contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;")
    );
    let r = w
        .post(
            "/api/flags/remove-override/notifications/1",
            &[("csrf_token", &c), ("entity_id", odd)],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let pool = db.pool().await;
    assert!(
        admin::get(&pool, "notifications/1")
            .await
            .unwrap()
            .1
            .is_empty()
    );

    // The audit log: every change with the token's name; filters by flag, action and actor
    // (a literal substring: `%` matches only itself); a bad filter is refused.
    let log = admin::audit_log(&pool, None, 100).await.unwrap();
    let actions: Vec<(&str, &str, &str)> = log
        .iter()
        .map(|r| (r.flag_id.as_str(), r.action.as_str(), r.actor.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("notifications/1", "REMOVE_OVERRIDE", "alice"),
            ("notifications/1", "CREATE_OVERRIDE", "alice"),
            ("notifications/3", "UPDATE_STATE", "alice"),
            ("notifications/2", "UPDATE_STATE", "alice"),
        ]
    );
    let page = w.get("/audit?action=REMOVE_OVERRIDE").await;
    assert_eq!(page.body.matches("<td>REMOVE_OVERRIDE</td>").count(), 1);
    assert!(!page.body.contains("<td>UPDATE_STATE</td>"));
    let page = w.get("/audit?flag_id=notifications%2F3&actor=LIC").await;
    assert_eq!(
        page.body.matches("<td>UPDATE_STATE</td>").count(),
        1,
        "{}",
        page.body
    );
    assert!(!page.body.contains("REMOVE_OVERRIDE</td>"));
    let page = w.get("/audit?actor=%25").await;
    assert!(page.body.contains("No entries match."));
    for bad in ["/audit?limit=0", "/audit?limit=x", "/audit?action=DROP"] {
        assert_eq!(w.get(bad).await.status, 400, "{bad}");
    }

    // Search and archived flags on the dashboard.
    let page = w.get("/?q=RETRIES").await;
    assert!(page.body.contains("1 of 4 flags"), "{}", page.body);
    assert!(page.body.contains("max_retries") && !page.body.contains("digest_frequency"));
    sqlx::query(
        "UPDATE feature_flags.flags SET archived_at = now() WHERE flag_id = 'notifications/4'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let page = w.get("/").await;
    assert!(page.body.contains("3 of 4 flags") && !page.body.contains("score_threshold"));
    let page = w.get("/?archived=1").await;
    assert!(
        page.body.contains(r#"<tr class="archived">"#) && page.body.contains("score_threshold")
    );
    root.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_the_forms_disabled_and_cannot_post_them() {
    let Ui { root, db, _dir } = ui_root(true).await;
    let mut w = web(&root);
    login(&mut w, VIEWER).await;
    let page = w.get("/flags/notifications/2").await;
    assert!(page.body.contains("bob · viewer (read-only)"));
    assert!(page.body.contains("<fieldset disabled>"), "{}", page.body);
    let c = csrf(&w);
    let r = w
        .post(
            "/api/flags/state/notifications/2",
            &[("csrf_token", &c), ("state", "KILLED")],
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("Token bob is a viewer"), "{}", r.body);
    let pool = db.pool().await;
    assert!(admin::audit_log(&pool, None, 10).await.unwrap().is_empty());
    let (row, _) = admin::get(&pool, "notifications/2").await.unwrap();
    assert_ne!(row.state, Some(State::Killed));
    root.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_a_loopback_ui_needs_no_login_and_audits_as_admin_ui() {
    let Ui { root, db, _dir } = ui_root(false).await;
    let mut w = web(&root);
    assert_eq!(w.get("/login").await.location(), "/");
    let page = w.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("admin-ui · editor") && !page.body.contains("Log out"));
    let c = csrf(&w);
    let r = w
        .post(
            "/api/flags/state/notifications/2",
            &[
                ("csrf_token", &c),
                ("state", "ENABLED"),
                ("value", "weekly"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let log = admin::audit_log(&db.pool().await, None, 10).await.unwrap();
    assert_eq!(
        (log[0].action.as_str(), log[0].actor.as_str()),
        ("UPDATE_STATE", "admin-ui")
    );
    // The assets the pages load are served; anything else is a 404.
    for (path, kind) in [
        ("/static/app.css", "text/css"),
        ("/static/app.js", "text/javascript"),
        ("/static/favicon.svg", "image/svg+xml"),
    ] {
        let r = w.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
    }
    assert_eq!(w.get("/static/../Cargo.toml").await.status, 404);
    assert_eq!(w.get("/nothing").await.status, 404);
    root.stop().await;
}
