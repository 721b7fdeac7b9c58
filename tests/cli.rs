//! The `ssegate` command: configuration checks, secure-by-default start, `--dev` first run,
//! `token` and `publish`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn ssegate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ssegate"));
    // The tests' own environment must not leak config into these runs.
    for (k, _) in std::env::vars() {
        if k.starts_with("SSEGATE_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[test]
fn check_config_prints_the_effective_config_with_env_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:9999\"\n[auth]\njwt_secret = \"a-very-secret-secret-value\"\n",
    )
    .unwrap();
    let out = ssegate()
        .args(["check-config"])
        .arg(&file)
        .env("SSEGATE_LOG__RETENTION_EVENTS", "123")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("listen = \"127.0.0.1:9999\""), "{text}");
    assert!(text.contains("retention_events = 123"), "{text}");
    assert!(
        !text.contains("a-very-secret-secret-value"),
        "the secret is masked"
    );
}

#[test]
fn check_config_names_an_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[limits]\nmax_event_byte = 10\n").unwrap();
    let out = ssegate()
        .args(["check-config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_event_byte"), "{err}");
}

#[test]
fn serve_without_a_key_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = ssegate()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no way to authenticate anyone is configured") && err.contains("--dev"),
        "{err}"
    );
}

/// Starts `serve --dev` in `dir`; returns the child, the URL and the two printed tokens.
fn start_dev(dir: &std::path::Path) -> (std::process::Child, String, String, String) {
    let mut child = ssegate()
        .current_dir(dir)
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first
        .strip_prefix("ssegate listening on ")
        .unwrap()
        .to_owned();
    let mut tokens = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(t) = line.strip_prefix("  eyJ") {
            tokens.push(format!("eyJ{t}"));
        }
        if line.starts_with("Resume") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    assert_eq!(
        tokens.len(),
        2,
        "a subscriber and a publisher token are printed"
    );
    (child, url, tokens[0].clone(), tokens[1].clone())
}

#[tokio::test]
async fn dev_mode_works_with_no_config_and_keeps_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url, sub, publ) = start_dev(dir.path());
    assert!(dir.path().join("ssegate-data/dev-secret").exists());
    assert!(dir.path().join("ssegate-data/log/meta.json").exists());
    let mut sse = Sse::connect(
        &format!("{url}/v1/stream?channel=demo:hello"),
        &[bearer(&sub)],
    )
    .await;
    assert_eq!(sse.status, 200);
    let res = http()
        .post(format!("{url}/v1/publish"))
        .bearer_auth(&publ)
        .json(&json!({"channel": "demo:hello", "type": "greeting", "data": {"text": "hi"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let got = sse.take(1, Duration::from_secs(10)).await;
    assert_eq!(envelope(&got[0])["data"]["text"], "hi");
    child.kill().unwrap();
    child.wait().unwrap();

    // A second start reuses the key: the first run's tokens still work, and so does the log.
    let (mut child, url, _, _) = start_dev(dir.path());
    let mut sse = Sse::connect(
        &format!("{url}/v1/stream?channel=demo:hello"),
        &[bearer(&sub), last_event_id("0")],
    )
    .await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.take(1, Duration::from_secs(10)).await[0].id, got[0].id);

    // `ssegate token` signs with the same development key.
    let out = ssegate()
        .current_dir(dir.path())
        .args(["token", "--sub", "cli", "--subscribe", "demo:*"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let minted = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let sse = Sse::connect(
        &format!("{url}/v1/stream?channel=demo:x"),
        &[bearer(&minted)],
    )
    .await;
    assert_eq!(sse.status, 200);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn token_and_publish_commands_talk_to_a_running_server() {
    let server = Server::start(&[]);
    let out = ssegate()
        .args([
            "token",
            "--sub",
            "svc",
            "--publish",
            "jobs:**",
            "--ttl",
            "10m",
        ])
        .env("SSEGATE_AUTH__JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let publ = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (mut sse, _) = Sse::open(
        &server.stream_url(&["jobs:1"]),
        &[bearer(&token("u", &["jobs:*"], &[]))],
    )
    .await;
    let out = ssegate()
        .args([
            "publish",
            "--channel",
            "jobs:1",
            "--type",
            "job.done",
            "--data",
            r#"{"ok":true}"#,
        ])
        .args(["--url", &server.url, "--token", &publ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["ids"], json!(["1"]));
    let got = sse.take(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].event, "job.done");
    assert_eq!(envelope(&got[0])["data"], json!({"ok": true}));
    // A channel outside the token's grant fails with the server's error.
    let out = ssegate()
        .args([
            "publish",
            "--channel",
            "other",
            "--url",
            &server.url,
            "--token",
            &publ,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("forbidden_channel"));
}

#[tokio::test]
async fn a_publisher_key_from_the_cli_publishes_within_its_patterns() {
    let out = ssegate()
        .args(["publisher-key", "--name", "etl", "--publish", "logs:**"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let help = String::from_utf8(out.stderr).unwrap();
    let digest = help
        .lines()
        .find_map(|l| l.strip_prefix("sha256 = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("config entry with the digest")
        .to_owned();
    assert!(
        !help.contains(&key),
        "the config entry holds the digest, not the key"
    );
    let entry = format!("[{{name = \"etl\", sha256 = \"{digest}\", publish = [\"logs:**\"]}}]");
    let server = Server::start(&[("AUTH__PUBLISHER_KEYS", &entry)]);
    let ok = json!({"channel": "logs:w1", "type": "t", "data": 1});
    assert_eq!(server.publish(&key, &ok).await.0, 200);
    let (status, body) = server
        .publish(&key, &json!({"channel": "other:1", "type": "t"}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden_channel"))
    );
    let (status, body) = server.publish("sk_not_a_known_key", &ok).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_token"))
    );
    // A publisher key is not a subscriber credential.
    let sse = Sse::connect(&server.stream_url(&["logs:w1"]), &[bearer(&key)]).await;
    assert_eq!(sse.status, 403);
}
