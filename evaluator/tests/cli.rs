//! The `pbflags-evaluator` binary's database subcommands, as an operator runs them.

#![allow(clippy::unwrap_used)] // a panic is the failure report

#[path = "support/pg.rs"]
mod pg;
#[path = "support/mod.rs"]
mod support;

use std::process::{Command, Output};

use sha2::Digest as _;

fn run<S: AsRef<std::ffi::OsStr>>(url: Option<&str>, args: &[S]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pbflags-evaluator"));
    c.args(args)
        .env_remove("PBFLAGS_DATABASE")
        .env("USER", "cli-test");
    if let Some(u) = url {
        c.env("PBFLAGS_DATABASE", u);
    }
    c.output().expect("run binary")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn example() -> String {
    format!(
        "{}/../proto/example/descriptors.pb",
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")
    )
}

#[tokio::test]
async fn migrate_sync_and_administer_flags_from_the_command_line() {
    let db = pg::TestDb::create().await;
    let url = Some(db.url.as_str());
    assert!(ok(&run(url, &["migrate"])).contains("migrations applied: 2"));
    assert!(ok(&run(url, &["sync", "--descriptors", &example()])).contains("4 flags added"));
    assert!(
        ok(&run(url, &["sync", "--descriptors", &example()])).contains("sync complete: 0 changes")
    );

    assert!(
        ok(&run(
            url,
            &["flags", "set", "notifications/3", "--value", "5"]
        ))
        .contains("ENABLED 5")
    );
    assert!(ok(&run(url, &["flags", "kill", "notifications/2"])).contains("KILLED"));
    ok(&run(
        url,
        &[
            "flags",
            "override",
            "set",
            "notifications/1",
            "user-7",
            "--value",
            "false",
        ],
    ));
    let json = ok(&run(url, &["flags", "get", "notifications/1", "--json"]));
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["overrides"][0]["entity_id"], "user-7");
    assert_eq!(v["overrides"][0]["value"], false);
    let list = ok(&run(url, &["flags", "list"]));
    assert!(
        list.contains("notifications/2") && list.contains("KILLED"),
        "{list}"
    );
    let audit = ok(&run(url, &["flags", "audit", "--json"]));
    assert_eq!(audit.lines().count(), 3);
    assert!(audit.contains("\"actor\":\"cli-test\""));

    let bad = run(url, &["flags", "set", "notifications/3", "--value", "abc"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("notifications/3 is INT64; 'abc' is not an integer")
    );
    let global = run(
        url,
        &[
            "flags",
            "override",
            "set",
            "notifications/2",
            "u",
            "--value",
            "x",
        ],
    );
    assert!(
        String::from_utf8_lossy(&global.stderr).contains("does not support per-entity overrides")
    );
}

#[test]
fn a_missing_database_is_a_configuration_error() {
    let out = run(None, &["migrate"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PBFLAGS_DATABASE"));
}

#[test]
fn the_database_password_never_appears_in_errors() {
    let out = run(
        Some("postgres://app:hunter2@127.0.0.1:1/x?connect_timeout=1"),
        &["flags", "list", "--db-connect-timeout", "1s"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn serve_with_bad_configuration_exits_64_naming_the_setting_before_binding() {
    let out = run(None, &["serve", "--server", "http://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("descriptors"));
    for (flag, value, setting) in [
        ("--kill-ttl", "0s", "cache.kill_ttl"),
        ("--worker-threads", "0", "worker_threads"),
        ("--tls-cert", "/nonexistent.crt", "tls_key"),
        ("--upstream-ca", "/nonexistent.pem", "upstream_ca"),
        ("--log-format", "xml", "--log-format"),
        ("--upstream-protocol", "http3", "--upstream-protocol"),
        ("--kill-ttl", "soon", "--kill-ttl"),
        (
            "--descriptor-poll-interval",
            "0s",
            "descriptor_poll_interval",
        ),
        ("--idle-timeout", "0s", "idle_timeout"),
        ("--body-read-timeout", "0s", "body_read_timeout"),
        ("--max-connections", "0", "max_connections"),
    ] {
        let out = run(None, &serve_args(&[flag, value]));
        assert_usage_error(&out, setting);
    }
}

/// `serve` of the example descriptors as a proxy of a closed port, plus `extra`.
fn serve_args(extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["serve", "--descriptors", &example(), "--server"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    args.push("https://127.0.0.1:1".to_owned());
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// `out` is a configuration error: exit 64, and stderr names `setting`.
fn assert_usage_error(out: &Output, setting: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{setting}: {stderr}");
    assert!(stderr.contains(setting), "{setting}: {stderr}");
}

#[test]
fn invalid_environment_values_and_urls_exit_64_naming_the_setting() {
    for (var, value, named) in [
        ("PBFLAGS_LOG_FORMAT", "xml", "--log-format"),
        ("PBFLAGS_CACHE_FLAG_TTL", "forever", "--flag-ttl"),
        ("PBFLAGS_MAX_BULK_FLAGS", "-1", "--max-bulk-flags"),
        (
            "PBFLAGS_HTTP2_KEEPALIVE_INTERVAL",
            "-1s",
            "--http2-keepalive-interval",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_pbflags-evaluator"))
            .args(serve_args(&[]))
            .env(var, value)
            .output()
            .expect("run binary");
        assert_usage_error(&out, named);
    }
    let out = run(Some("mysql://root:hunter2@127.0.0.1/flags"), &["migrate"]);
    assert_usage_error(&out, "mysql:// is not PostgreSQL");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("hunter2"));
}

/// `serve` as a proxy of nothing (answers are compiled defaults) on a free loopback port, with
/// `extra` arguments; returns the process and its address once it accepts connections.
fn serve_on_free_port(extra: &[&str]) -> (std::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_pbflags-evaluator"))
        .args([
            "serve",
            "--descriptors",
            &example(),
            "--server",
            "http://127.0.0.1:1",
            "--listen",
            &listen,
        ])
        .args(extra)
        .env_remove("PBFLAGS_DATABASE")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(std::time::Instant::now() < deadline, "server did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (child, listen)
}

fn sigterm(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits (bounded: a hang guard) for `child` to exit; returns its status.
fn exited(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "did not exit after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// One HTTP/1.0 request on a new connection: the status line and the body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (String, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

#[test]
fn serve_drains_and_exits_cleanly_on_sigterm() {
    let (mut child, _) = serve_on_free_port(&[]);
    sigterm(&child);
    let status = exited(&mut child);
    assert!(status.success(), "exit status {status}");
}

#[test]
fn during_the_shutdown_delay_new_connections_are_served_and_readyz_says_503() {
    // A delay far longer than the test: what happens during it does not depend on timing.
    let (mut child, addr) = serve_on_free_port(&["--shutdown-delay", "5m"]);
    assert!(http(&addr, "GET", "/readyz", "").0.contains(" 200 "));
    sigterm(&child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (status, body) = loop {
        let answer = http(&addr, "GET", "/readyz", "");
        if !answer.0.contains(" 200 ") {
            break answer;
        }
        assert!(std::time::Instant::now() < deadline, "still ready");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.contains(" 503 "), "{status}");
    assert!(body.starts_with("not ready"), "{body}");
    // Not ready, still serving: a request on a new connection is answered.
    let (status, body) = http(
        &addr,
        "POST",
        "/pbflags.v1.FlagEvaluatorService/Evaluate",
        r#"{"flagId":"notifications/1"}"#,
    );
    assert!(status.contains(" 200 "), "{status} {body}");
    assert!(body.contains("boolValue"), "{body}");
    // Keep-alive clients are told to reconnect (to a pod that is not shutting down).
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    {
        use std::io::{Read as _, Write as _};
        write!(s, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(
            answer.to_lowercase().contains("connection: close"),
            "{answer}"
        );
    }
    assert!(child.try_wait().unwrap().is_none(), "still running");
    // A second signal ends the delay at once.
    sigterm(&child);
    assert_eq!(exited(&mut child).code(), Some(130));
}

#[test]
fn json_logs_go_to_stdout_and_ignored_v0_6_keys_are_logged() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "admin: ':9200'\nenv_name: prod\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pbflags-evaluator"))
        .args(["serve", "--config"])
        .arg(&config)
        .args([
            "--descriptors",
            &example(),
            "--server",
            "http://127.0.0.1:1",
        ])
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .env_remove("PBFLAGS_DATABASE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read stdout on a thread until the serving line (hang guard: 10 s), then stop the server.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !lines.iter().any(|l: &String| l.contains("serving gRPC")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        lines.push(rx.recv_timeout(left).expect("the serving line within 10 s"));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    lines.extend(rx.try_iter());
    let records: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    // env_name is used (the web UI's banner), admin is not.
    assert!(
        !records.iter().any(|r| r["fields"]["key"] == "env_name"),
        "env_name is not ignored: {lines:?}"
    );
    assert!(
        records.iter().any(|r| r["level"] == "WARN"
            && r["fields"]["key"] == "admin"
            && r["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("config file key ignored"))),
        "no warning for admin in {lines:?}"
    );
    assert!(
        out.stderr.is_empty(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `--report` line a Job leaves in its termination message.
fn report(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(std::fs::read_to_string(path).unwrap().trim()).unwrap()
}

#[tokio::test]
async fn checks_report_their_outcome_and_refusals_exit_65() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("report");
    let out = out_file.to_str().unwrap();
    // A good set: accepted, with its SHA-256 and flag count.
    ok(&run(
        None,
        &["descriptors", "--descriptors", &example(), "--report", out],
    ));
    let r = report(&out_file);
    assert_eq!(
        (r["accepted"].as_bool(), r["flags"].as_u64()),
        (Some(true), Some(4))
    );
    let sha = hex::encode(sha2::Sha256::digest(std::fs::read(example()).unwrap()));
    assert_eq!(r["sha256"], sha);
    // Garbage: refused (65), with the reason.
    let garbage = dir.path().join("garbage.pb");
    std::fs::write(&garbage, b"not a descriptor set").unwrap();
    let bad = run(
        None,
        &[
            "descriptors",
            "--descriptors",
            garbage.to_str().unwrap(),
            "--report",
            out,
        ],
    );
    assert_eq!(bad.status.code(), Some(65));
    let r = report(&out_file);
    assert_eq!(
        (r["accepted"].as_bool(), r["refused"].as_bool()),
        (Some(false), Some(true))
    );
    assert!(!r["reason"].as_str().unwrap().is_empty(), "{r}");
    // A missing file is a usage error.
    let missing = run(None, &["descriptors", "--descriptors", "/nonexistent/d.pb"]);
    assert_eq!(missing.status.code(), Some(64));

    // sync: a breaking change is refused (65) naming the flag; --allow-breaking applies it.
    let db = pg::TestDb::create().await;
    let url = Some(db.url.as_str());
    ok(&run(url, &["migrate"]));
    ok(&run(
        url,
        &["sync", "--descriptors", &example(), "--report", out],
    ));
    assert_eq!(report(&out_file)["accepted"], true);
    let changed = dir.path().join("changed.pb");
    std::fs::write(
        &changed,
        support::compile(
            "syntax = \"proto3\";\npackage example;\nimport \"pbflags/options.proto\";\n\
             message Notifications {\n  option (pbflags.feature) = { id: \"notifications\" };\n\
             string max_retries = 3 [(pbflags.flag) = { default: { string_value: { value: \"3\" } } }];\n}\n",
        ),
    )
    .unwrap();
    let changed = changed.to_str().unwrap();
    let refused = run(url, &["sync", "--descriptors", changed, "--report", out]);
    assert_eq!(refused.status.code(), Some(65));
    let r = report(&out_file);
    assert_eq!(r["refused"], true);
    assert!(
        r["reason"].as_str().unwrap().contains("notifications/3"),
        "{r}"
    );
    ok(&run(
        url,
        &[
            "sync",
            "--descriptors",
            changed,
            "--allow-breaking",
            "--report",
            out,
        ],
    ));
    assert_eq!(report(&out_file)["flags"], 1);
}
