//! The `substation` CLI as an operator meets it: the built binary against a real etcd,
//! with real processes announcing themselves (this test binary, run again as an
//! instance: see `instance_process`).

#![cfg(feature = "cli")]
#![allow(missing_docs)]

#[path = "etcd/support.rs"]
mod support;

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use substation::Substation;
use substation::live::InMemorySource;
use substation::live::etcd::EtcdSource;
use substation::settings::PolicySettings;
use substation::switch::SwitchSettings;

use support::{Etcd, eventually};

const PREFIX: &str = "/cli-test/app/";
const SHARED: &str = "/cli-test/shared/";
const WAIT: Duration = Duration::from_secs(30);

/// Not a test of its own: when `SUBSTATION_TEST_INSTANCE` is set, this process is an
/// application instance (run by the tests below with `--exact instance_process`): it
/// builds a `Substation` with the given code defaults, announces itself, says `ready`
/// and runs until its standard input closes.
#[test]
fn instance_process() {
    let Ok(id) = std::env::var("SUBSTATION_TEST_INSTANCE") else {
        return;
    };
    let endpoint = std::env::var("SUBSTATION_TEST_ENDPOINT").unwrap();
    let defaults: Value =
        serde_json::from_str(&std::env::var("SUBSTATION_TEST_DEFAULTS").unwrap()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut builder = Substation::builder().switch("checkout-v2", SwitchSettings::off());
        for (name, value) in defaults.as_object().unwrap() {
            let settings: PolicySettings = serde_json::from_value(value.clone()).unwrap();
            builder = builder.policy(name, settings);
        }
        let sub = builder
            .source(
                EtcdSource::new([endpoint], PREFIX)
                    .shared_prefix(SHARED)
                    .request_timeout(Duration::from_secs(1))
                    .announce_as(id),
            )
            .build()
            .unwrap();
        sub.initialized().await;
        let _in_use = sub.policy("payments");
        println!("ready");
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {}
        })
        .await;
    });
}

/// A running instance; killed and reaped on drop.
struct Instance {
    child: Child,
    _stdin: ChildStdin,
}

impl Instance {
    fn start(etcd: &Etcd, id: &str, defaults: Value) -> Instance {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "instance_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SUBSTATION_TEST_INSTANCE", id)
            .env("SUBSTATION_TEST_ENDPOINT", etcd.endpoint())
            .env("SUBSTATION_TEST_DEFAULTS", defaults.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while out.read_line(&mut line).unwrap() > 0 && !line.contains("ready") {
            line.clear();
        }
        assert!(line.contains("ready"), "instance {id} did not start");
        Instance {
            child,
            _stdin: stdin,
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

fn cli_with(endpoint: &str, args: &[&str], stdin: Option<&[u8]>) -> Out {
    let mut child = Command::new(env!("CARGO_BIN_EXE_substation"))
        .args(args)
        .env("SUBSTATION_ENDPOINTS", endpoint)
        .env("SUBSTATION_PREFIX", PREFIX)
        .env("SUBSTATION_SHARED_PREFIX", SHARED)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        let _ = input.write_all(bytes);
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn cli(etcd: &Etcd, args: &[&str]) -> Out {
    cli_with(&etcd.endpoint(), args, None)
}

/// Every key under the test's prefixes, as etcd holds them.
async fn stored(etcd: &Etcd) -> Vec<(String, String)> {
    let mut c = etcd.client().await;
    let resp = c
        .get(
            "/cli-test/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    resp.kvs()
        .iter()
        .filter(|kv| !kv.key_str().unwrap().contains(".instances/"))
        .map(|kv| {
            (
                kv.key_str().unwrap().to_owned(),
                kv.value_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn announced(etcd: &Etcd, n: usize) {
    eventually("instances announced", WAIT, || async {
        let out = cli(etcd, &["status", "-o", "json"]);
        out.code == 0
            && out.json()["instances"]
                .as_array()
                .is_some_and(|a| a.len() == n)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_in_one_line_and_nothing_is_written() {
    skip_without_etcd!();
    let etcd = Etcd::start().await;
    let refused = |out: &Out, needle: &str| {
        assert_eq!(out.code, 1, "stdout {} stderr {}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains(needle),
            "{needle:?} not in {:?}",
            out.stderr
        );
        assert_eq!(
            out.stderr.trim_end().lines().count(),
            1,
            "one line: {:?}",
            out.stderr
        );
    };
    // No instance announced: a name nobody vouches for needs --new.
    let out = cli(&etcd, &["set", "policies/payments", r#"{"kill": true}"#]);
    refused(
        &out,
        "no instance announces itself under /cli-test/app.instances/",
    );
    refused(&out, "--new");
    // The registry's own rules and messages.
    let out = cli(
        &etcd,
        &[
            "set",
            "--new",
            "policies/payments",
            r#"{"breaker": {"error_rate": 150}}"#,
        ],
    );
    refused(
        &out,
        "refused policies/payments: breaker.error_rate: 150 is not in 0..=100; nothing was written",
    );
    let out = cli(
        &etcd,
        &[
            "set",
            "--new",
            "policies/payments",
            r#"{"breaker": {"eror_rate": 5}}"#,
        ],
    );
    refused(&out, "breaker.eror_rate");
    let out = cli(
        &etcd,
        &[
            "set",
            "--new",
            "policies/payments",
            r#"{"kill": true, "kill": false}"#,
        ],
    );
    refused(&out, "kill: duplicate field");
    let out = cli(
        &etcd,
        &["set", "--new", "policies/payments", r#"{"kill": tru"#],
    );
    refused(&out, "malformed JSON");
    let out = cli(
        &etcd,
        &["set", "--new", "switches/new-search", r#"{"percent": 101}"#],
    );
    refused(&out, "percent: 101 is not in 0..=100");
    // Over 1 MiB, from standard input.
    let big = format!(
        r#"{{"fallback": {{"tiers": [{}"static"]}}}}"#,
        "\"cache\", ".repeat(200_000)
    );
    let out = cli_with(
        &etcd.endpoint(),
        &["set", "--new", "policies/payments", "-"],
        Some(big.as_bytes()),
    );
    refused(&out, "over 1 MiB");
    // Keys with control characters, or not keys at all.
    let out = cli(
        &etcd,
        &[
            "set",
            "--new",
            "policies/pay\u{1b}[2Jments",
            r#"{"kill": true}"#,
        ],
    );
    refused(&out, r#"\u{1b}"#);
    let out = cli(
        &etcd,
        &["set", "--new", "polices/payments", r#"{"kill": true}"#],
    );
    refused(&out, "is not a known key");
    let out = cli(
        &etcd,
        &[
            "patch",
            "--new",
            "policies/payments",
            "breaker.error_rate=150",
        ],
    );
    refused(&out, "breaker.error_rate: 150 is not in 0..=100");
    assert!(
        stored(&etcd).await.is_empty(),
        "nothing written: {:?}",
        stored(&etcd).await
    );

    // JSON output of a refusal.
    let out = cli(
        &etcd,
        &[
            "set",
            "--new",
            "policies/payments",
            r#"{"timeout": {"ms": 0}}"#,
            "-o",
            "json",
        ],
    );
    assert_eq!(out.code, 1);
    let j = out.json();
    assert_eq!(j["status"], "refused");
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("timeout.ms: 0 is not in 1..=3600000")
    );

    // etcd down: exit 4, one line.
    let out = cli_with("http://127.0.0.1:9", &["get", "policies/payments"], None);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("cannot reach etcd at http://127.0.0.1:9"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim_end().lines().count(), 1);
    let out = cli_with(
        "http://127.0.0.1:9",
        &["set", "--new", "policies/payments", "{}"],
        None,
    );
    assert_eq!(out.code, 4, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_a_clear_error() {
    skip_without_etcd!();
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    support::enable_auth(&mut client, "operator", "right", "").await;
    let out = cli(
        &etcd,
        &[
            "--user",
            "operator",
            "--password",
            "wrong",
            "get",
            "policies/payments",
        ],
    );
    assert_eq!(out.code, 4, "{} {}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("etcd refused the credentials"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--password"), "{}", out.stderr);
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{}", out.stderr);
    // The reader may read, not write: refused, nothing written.
    let out = cli(
        &etcd,
        &[
            "--user",
            "operator",
            "--password",
            "right",
            "set",
            "--new",
            "policies/payments",
            r#"{"kill": true}"#,
        ],
    );
    assert_eq!(out.code, 1, "{} {}", out.stdout, out.stderr);
    assert!(out.stderr.contains("permission denied"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_get_patch_del_with_compare_and_swap() {
    skip_without_etcd!();
    let etcd = Etcd::start().await;
    let _a = Instance::start(
        &etcd,
        "inst-a",
        json!({"payments": {"timeout": {"ms": 250}}}),
    );
    announced(&etcd, 1).await;

    // A typo'd name is refused, with the name the fleet knows.
    let out = cli(&etcd, &["set", "policies/paymnets", r#"{"kill": true}"#]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(
            "no announced instance (1) knows the policy `paymnets` — did you mean `payments`?"
        ),
        "{}",
        out.stderr
    );

    let out = cli(
        &etcd,
        &["set", "policies/payments", r#"{"kill": true}"#, "--no-wait"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = cli(&etcd, &["get", "policies/payments", "-o", "json"]);
    let j = out.json();
    assert_eq!(j["app"]["value"], json!({"kill": true}));
    let read_at = j["app"]["mod_revision"].as_i64().unwrap();
    // The effective value uses the code default the instance announced.
    assert_eq!(j["effective"][0]["instances"], json!(["inst-a"]));
    assert_eq!(j["effective"][0]["value"]["timeout"]["ms"], 250);
    assert_eq!(j["effective"][0]["value"]["kill"], true);

    // Patch: only the named fields change.
    let out = cli(
        &etcd,
        &[
            "patch",
            "policies/payments",
            "breaker.mode=force_open",
            "timeout.ms=300",
            "--no-wait",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let stored_now = stored(&etcd).await;
    let v: Value = serde_json::from_str(&stored_now[0].1).unwrap();
    assert_eq!(
        v,
        json!({"kill": true, "breaker": {"mode": "force_open"}, "timeout": {"ms": 300}})
    );

    // A write based on what was read before the patch: a conflict, both values shown.
    let out = cli(
        &etcd,
        &[
            "set",
            "policies/payments",
            r#"{"kill": false}"#,
            "--if-mod-revision",
            &read_at.to_string(),
            "-o",
            "json",
        ],
    );
    assert_eq!(out.code, 2, "{}", out.stdout);
    let j = out.json();
    assert_eq!(j["status"], "conflict");
    assert_eq!(j["stored"]["breaker"]["mode"], "force_open");
    assert_eq!(j["yours"], json!({"kill": false}));
    let text = cli(
        &etcd,
        &[
            "set",
            "policies/payments",
            r#"{"kill": false}"#,
            "--if-mod-revision",
            &read_at.to_string(),
        ],
    );
    assert_eq!(text.code, 2);
    assert!(
        text.stderr
            .contains("stored now: {\"breaker\":{\"mode\":\"force_open\"}"),
        "{}",
        text.stderr
    );
    assert!(
        text.stderr.contains("yours: {\"kill\":false}"),
        "{}",
        text.stderr
    );
    assert_eq!(
        stored(&etcd).await,
        stored_now,
        "nothing written on a conflict"
    );

    // diff: what would change, nothing written.
    let out = cli(
        &etcd,
        &["diff", "policies/payments", r#"{"timeout": {"ms": null}}"#],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("timeout.ms: 300 → null"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("kill: true → false"), "{}", out.stdout);
    assert_eq!(stored(&etcd).await, stored_now);

    // del, then get --all lists the known name with nothing stored.
    let out = cli(&etcd, &["del", "policies/payments", "--no-wait"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(stored(&etcd).await.is_empty());
    let out = cli(&etcd, &["get", "--all"]);
    assert!(out.stdout.contains("policies/payments"), "{}", out.stdout);
    assert!(
        out.stdout.contains("switches/checkout-v2"),
        "{}",
        out.stdout
    );

    // A shared write valid over what is below it, that puts the application's value in
    // conflict: written (every registry accepts it), with a warning that says what of
    // the application's value is left out.
    let set = |args: &[&str]| {
        let out = cli(&etcd, args);
        assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
        out
    };
    set(&[
        "set",
        "--shared",
        "policies/payments",
        r#"{"breaker": {"window_ms": 7000}}"#,
        "--no-wait",
    ]);
    let out = set(&[
        "set",
        "policies/payments",
        r#"{"breaker": {"buckets": 7}}"#,
        "--no-wait",
        "-o",
        "json",
    ]);
    assert!(out.json()["warnings"].is_null(), "{}", out.stdout);
    let out = set(&[
        "set",
        "--shared",
        "policies/payments",
        r#"{"breaker": {"window_ms": 10000}}"#,
        "--wait",
        "--timeout",
        "10",
        "-o",
        "json",
    ]);
    // Waited for: applied by the instance, which says what it left out.
    let fleet = &out.json()["fleet"];
    assert_eq!(fleet["converged"], true, "{}", out.stdout);
    let conflict = &fleet["conflicts"][0];
    assert_eq!(
        (&conflict["id"], &conflict["layer"]),
        (&json!("inst-a"), &json!("app")),
        "{}",
        out.stdout
    );
    assert!(
        conflict["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("breaker.buckets: 7 does not divide")),
        "{}",
        out.stdout
    );
    assert_eq!(
        out.json()["warnings"][0],
        "after this write, the application's value of policies/payments conflicts: breaker.buckets: 7 does not \
         divide breaker.window_ms (10000) evenly, merged with the layers below it since they changed; the value is \
         left out until a change makes it valid (with the code default of inst-a)",
        "{}",
        out.stdout
    );
    let out = set(&["get", "policies/payments", "-o", "json"]);
    let effective = &out.json()["effective"][0]["value"]["breaker"];
    assert_eq!(
        (&effective["window_ms"], &effective["buckets"]),
        (&json!(10000), &json!(10))
    );
    // A later shared write that leaves the conflict as it was: nothing new to say.
    let out = set(&[
        "set",
        "--shared",
        "policies/payments",
        r#"{"breaker": {"window_ms": 10000}, "timeout": {"ms": 300}}"#,
        "--no-wait",
        "-o",
        "json",
    ]);
    assert!(out.json()["warnings"].is_null(), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_rollback() {
    skip_without_etcd!();
    let etcd = Etcd::start().await;
    let mut revs = Vec::new();
    for v in [
        r#"{"timeout": {"ms": 100}}"#,
        r#"{"timeout": {"ms": 200}}"#,
        r#"{"timeout": {"ms": 300}}"#,
    ] {
        let out = cli(
            &etcd,
            &["set", "--new", "policies/p", v, "--no-wait", "-o", "json"],
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        revs.push(out.json()["revision"].as_i64().unwrap());
    }
    let out = cli(&etcd, &["history", "policies/p", "-o", "json"]);
    let j = out.json();
    let events = j["events"].as_array().unwrap();
    assert_eq!(events.len(), 3, "{j}");
    assert_eq!(events[1]["revision"], revs[1]);
    assert_eq!(events[1]["value"]["timeout"]["ms"], 200);
    assert!(j["compacted"].is_null());

    // Roll back the last change: 200 again.
    let out = cli(&etcd, &["rollback", "--new", "policies/p", "--no-wait"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(stored(&etcd).await[0].1, r#"{"timeout": {"ms": 200}}"#);
    // To a revision: 100.
    let out = cli(
        &etcd,
        &[
            "rollback",
            "--new",
            "policies/p",
            "--to",
            &revs[0].to_string(),
            "--no-wait",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(stored(&etcd).await[0].1, r#"{"timeout": {"ms": 100}}"#);

    // A deletion is history too, and rolled back.
    cli(&etcd, &["del", "policies/p", "--no-wait"]);
    let out = cli(&etcd, &["rollback", "--new", "policies/p", "--no-wait"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(stored(&etcd).await[0].1, r#"{"timeout": {"ms": 100}}"#);

    // Compacted: history says where it starts; older revisions cannot be restored.
    let mut c = etcd.client().await;
    let head = c.get("x", None).await.unwrap().header().unwrap().revision();
    c.compact(head, None).await.unwrap();
    let out = cli(&etcd, &["history", "policies/p"]);
    assert!(
        out.stdout
            .contains(&format!("history starts at revision {head}")),
        "{}",
        out.stdout
    );
    let out = cli(
        &etcd,
        &[
            "rollback",
            "--new",
            "policies/p",
            "--to",
            &revs[0].to_string(),
        ],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("compacted"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_wait_reports_who_applied_who_rejected_and_who_did_not_answer() {
    skip_without_etcd!();
    let etcd = Etcd::start().await;
    let _a = Instance::start(&etcd, "inst-a", json!({"payments": {}}));
    // B's code default makes a 10 s window invalid (10000 is not a multiple of 7 buckets).
    let _b = Instance::start(
        &etcd,
        "inst-b",
        json!({"payments": {"breaker": {"window_ms": 7000, "buckets": 7}}}),
    );
    let c = Instance::start(&etcd, "inst-c", json!({"payments": {}}));
    announced(&etcd, 3).await;

    // The CLI predicts B's refusal from its announced code default.
    let value = r#"{"breaker": {"window_ms": 10000}}"#;
    let out = cli(&etcd, &["set", "policies/payments", value, "--wait"]);
    assert_eq!(out.code, 1, "{} {}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("with the code default of inst-b"),
        "{}",
        out.stderr
    );
    assert!(stored(&etcd).await.is_empty());

    // Written anyway, with C frozen: A applies, B rejects, C does not answer → exit 3.
    c.signal("-STOP");
    let out = cli(
        &etcd,
        &[
            "set",
            "policies/payments",
            value,
            "--skip-fleet-check",
            "--wait",
            "--timeout",
            "3",
            "-o",
            "json",
        ],
    );
    assert_eq!(out.code, 3, "{} {}", out.stdout, out.stderr);
    let j = out.json();
    let fleet = &j["fleet"];
    assert_eq!(fleet["converged"], false);
    assert_eq!(fleet["applied"], json!([{"id": "inst-a"}]));
    assert_eq!(fleet["rejected"][0]["id"], "inst-b");
    assert!(
        fleet["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .contains("breaker.window_ms"),
        "{fleet}"
    );
    assert_eq!(fleet["pending"][0]["id"], "inst-c");
    let text = cli(&etcd, &["status"]);
    assert!(text.stdout.contains("inst-b"), "{}", text.stdout);
    assert!(
        text.stdout.contains("rejects policies/payments"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("BEHIND"), "{}", text.stdout);

    // The same report for people.
    c.signal("-CONT");
    let out = cli(
        &etcd,
        &[
            "set",
            "policies/payments",
            r#"{"kill": true}"#,
            "--wait",
            "--timeout",
            "10",
        ],
    );
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("fleet: 3/3 applied revision"),
        "{}",
        out.stdout
    );
    for id in ["inst-a", "inst-b", "inst-c"] {
        assert!(
            out.stdout.contains(&format!("applied    {id}")),
            "{}",
            out.stdout
        );
    }

    // The fleet's shared layer: every instance watches it, and confirms.
    let out = cli(
        &etcd,
        &[
            "set",
            "--shared",
            "policies/payments",
            r#"{"timeout": {"ms": 500}}"#,
            "--wait",
            "-o",
            "json",
        ],
    );
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(out.json()["fleet"]["applied"].as_array().unwrap().len(), 3);
    assert_eq!(out.json()["etcd_key"], format!("{SHARED}policies/payments"));

    // `watch` prints a change as it happens (written until the watcher has seen one:
    // it may start after the first write).
    let endpoint = etcd.endpoint();
    let watcher = std::thread::spawn(move || {
        cli_with(&endpoint, &["watch", "policies/", "--count", "1"], None)
    });
    let deadline = std::time::Instant::now() + WAIT;
    let mut kill = false;
    while !watcher.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "watch printed nothing"
        );
        let out = cli(
            &etcd,
            &[
                "patch",
                "policies/payments",
                &format!("kill={kill}"),
                "--no-wait",
            ],
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        kill = !kill;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let watched = watcher.join().unwrap();
    assert_eq!(watched.code, 0, "{}", watched.stderr);
    assert!(
        watched
            .stdout
            .contains("set policies/payments = {\"kill\":"),
        "{}",
        watched.stdout
    );
}

/// The global value stored in the app and the shared layer.
async fn global(etcd: &Etcd) -> (Option<Value>, Option<Value>) {
    let all = stored(etcd).await;
    let of = |key: String| {
        all.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| serde_json::from_str::<Value>(v).unwrap())
    };
    (of(format!("{PREFIX}global")), of(format!("{SHARED}global")))
}

fn experiment<'a>(listing: &'a Value, name: &str) -> &'a Value {
    listing["experiments"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == name))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiments_are_set_listed_with_their_records_and_halted() {
    skip_without_etcd!();
    let etcd = Etcd::start().await;
    let _a = Instance::start(&etcd, "inst-a", json!({"payments": {}}));
    announced(&etcd, 1).await;

    // An experiment's name is new by nature (no --new); its value is checked like any.
    let out = cli(
        &etcd,
        &[
            "set",
            "experiments/bad",
            r#"{"policy": "payments", "control_percent": 60}"#,
        ],
    );
    assert_eq!(out.code, 1, "{} {}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(
            "refused experiments/bad: control_percent: 60 is not in 0.0001..=50; nothing was written"
        ),
        "{}",
        out.stderr
    );
    let out = cli(
        &etcd,
        &["set", "experiments/bad", r#"{"control_percent": 5}"#],
    );
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("policy: required"), "{}", out.stderr);
    assert!(stored(&etcd).await.is_empty());
    let out = cli(&etcd, &["get", "experiments/bad"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("effective: none — no experiment is stored under this name"),
        "{}",
        out.stdout
    );

    // A policy no announced instance knows: written, with a warning.
    let out = cli(
        &etcd,
        &[
            "set",
            "experiments/slow-payments",
            r#"{"policy": "paymnets", "abort_percent": 0, "delay_percent": 100, "delay_ms": 20}"#,
            "--no-wait",
            "-o",
            "json",
        ],
    );
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let warning = out.json()["warnings"][0].as_str().unwrap_or("").to_owned();
    assert!(
        warning.contains(
            "no announced instance (1) knows the policy `paymnets` — did you mean `payments`?"
        ),
        "{}",
        out.stdout
    );
    // Patched to a known one: no warning (and a new value is a new run).
    let out = cli(
        &etcd,
        &[
            "patch",
            "experiments/slow-payments",
            "policy=payments",
            "--no-wait",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);

    // A run's record, written as a process writes it (here by hand, before its value,
    // so that no process starts the run): the library's run id of the value.
    let value = r#"{"policy": "payments", "control_percent": 10, "experiment_percent": 10, "min_requests": 20}"#;
    let run = {
        let source = InMemorySource::new();
        let sub = Substation::builder()
            .source(source.clone())
            .build()
            .unwrap();
        source.put("experiments/checkout-outage", value).unwrap();
        sub.experiments()[0].run.clone()
    };
    let record = json!({
        "run": run, "state": "aborted", "started_ms": 1_764_000_000_000u64,
        "stopped_ms": 1_764_000_008_500u64,
        "reason": "experiment success 61.0 % vs control 99.5 % (200 and 200 requests): 38.5 points below, bound 5",
        "control": {"requests": 200, "successes": 199},
        "experiment": {"requests": 200, "successes": 122},
        "deviation_points": 38.5, "by": "web-1-4242",
    });
    let out = cli(
        &etcd,
        &[
            "set",
            "experiments/checkout-outage/result",
            &record.to_string(),
            "--no-wait",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("warning: experiments/checkout-outage/result is the processes' record"),
        "{}",
        out.stderr
    );
    let out = cli(
        &etcd,
        &["set", "experiments/checkout-outage", value, "--no-wait"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);

    // The listing: the recorded verdict, and the run the instance started (its
    // `running` record).
    eventually("the instance records its run", WAIT, || async {
        let out = cli(&etcd, &["experiments", "-o", "json"]);
        out.code == 0 && experiment(&out.json(), "slow-payments")["state"] == "running"
    })
    .await;
    let j = cli(&etcd, &["experiments", "-o", "json"]).json();
    assert_eq!(j["halt_experiments"], false);
    let aborted = experiment(&j, "checkout-outage");
    assert_eq!(aborted["state"], "aborted", "{j}");
    assert_eq!(aborted["current"], true, "{aborted}");
    assert_eq!(aborted["run"], run, "the CLI's run id is the library's");
    assert_eq!(aborted["settings"]["policy"], "payments");
    assert_eq!(aborted["control"]["requests"], 200);
    assert_eq!(aborted["control"]["success_percent"], 99.5);
    assert_eq!(aborted["experiment"]["success_percent"], 61.0);
    assert_eq!(aborted["deviation_points"], 38.5);
    assert_eq!(aborted["stopped_ms"], 1_764_000_008_500u64);
    assert_eq!(aborted["by"], "web-1-4242");
    let running = experiment(&j, "slow-payments");
    assert_eq!(running["current"], true, "{running}");
    assert!(running["left_ms"].as_u64() > Some(500_000), "{running}");
    assert!(running["reason"].is_null(), "{running}");
    let text = cli(&etcd, &["experiments"]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    for want in [
        "checkout-outage  ABORTED  policy payments, 10 % + 10 % of keys, bound 5 points",
        "started 2025-11-24 16:00:00 UTC, stopped 2025-11-24 16:00:08 UTC (after 8.5 s), by web-1-4242",
        "control 200 req, 99.5 % ok; experiment 200 req, 61.0 % ok; deviation 38.5 points",
        "reason: experiment success 61.0 % vs control 99.5 %",
        "slow-payments  RUNNING  policy payments",
        " left, by ",
    ] {
        assert!(
            text.stdout.contains(want),
            "{want:?} not in
{}",
            text.stdout
        );
    }

    // Halt every experiment with one write; the instance stops the run and records it.
    let out = cli(&etcd, &["halt-experiments", "--wait", "-o", "json"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let j = out.json();
    assert_eq!(j["halt_experiments"], true);
    assert_eq!(j["fleet"]["applied"], json!([{"id": "inst-a"}]));
    assert_eq!(
        global(&etcd).await.0,
        Some(json!({"halt_experiments": true}))
    );
    eventually("the run is halted and recorded", WAIT, || async {
        let j = cli(&etcd, &["experiments", "-o", "json"]).json();
        let halted = experiment(&j, "slow-payments");
        j["halt_experiments"] == true
            && halted["state"] == "halted"
            && halted["reason"] == "halted by global.halt_experiments"
    })
    .await;
    let j = cli(&etcd, &["experiments", "-o", "json"]).json();
    assert_eq!(experiment(&j, "checkout-outage")["state"], "aborted");
    let text = cli(&etcd, &["experiments"]).stdout;
    assert!(
        text.contains("global.halt_experiments: true — every experiment is halted"),
        "{text}"
    );

    // Resumed: the field is removed (a `false` here would hide a halt of the shared
    // layer); a halted run stays halted.
    let out = cli(&etcd, &["halt-experiments", "--resume", "--no-wait"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("a halted run stays halted"),
        "{}",
        out.stdout
    );
    assert_eq!(global(&etcd).await.0, Some(json!({})));
    let j = cli(&etcd, &["experiments", "-o", "json"]).json();
    assert_eq!(j["halt_experiments"], false);
    assert_eq!(experiment(&j, "slow-payments")["state"], "halted");
    // The fleet's layer halts too; resuming the app layer says it does not lift that.
    let out = cli(&etcd, &["halt-experiments", "--shared", "--no-wait"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        global(&etcd).await.1,
        Some(json!({"halt_experiments": true}))
    );
    let out = cli(&etcd, &["halt-experiments", "--resume", "--no-wait"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("experiments are still halted: the shared layer's `global`"),
        "{}",
        out.stderr
    );
    let out = cli(
        &etcd,
        &["halt-experiments", "--shared", "--resume", "--no-wait"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(global(&etcd).await.1, Some(json!({})));
}

#[test]
fn validate_and_schema_work_offline() {
    let dir = std::env::temp_dir().join(format!("substation-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("values.json");
    std::fs::write(
        &file,
        r#"{"policies/payments": {"timeout": {"ms": 250}}, "switches/new-search": {"percent": 150}, "global": {"shed_non_critical": true, "halt_experiments": true}, "experiments/outage": {"policy": "payments", "max_drop_points": 101}, "experiments/ok": {"policy": "payments"}}"#,
    )
    .unwrap();
    let out = cli_with(
        "http://127.0.0.1:9",
        &["validate", "--offline", file.to_str().unwrap()],
        None,
    );
    assert_eq!(out.code, 1, "{} {}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("ok       policies/payments"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("invalid  refused switches/new-search: percent: 150 is not in 0..=100"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("ok       global"), "{}", out.stdout);
    assert!(
        out.stdout.contains(
            "invalid  refused experiments/outage: max_drop_points: 101 is not in 0..=100"
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("ok       experiments/ok"),
        "{}",
        out.stdout
    );
    let out = cli_with(
        "http://127.0.0.1:9",
        &["validate", "--offline", "--for", "policies/x", "-"],
        Some(br#"{"kill": true}"#),
    );
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let _ = std::fs::remove_dir_all(&dir);

    for (kind, field) in [
        ("policy", "breaker"),
        ("switch", "variants"),
        ("global", "halt_experiments"),
        ("experiment", "max_drop_points"),
        ("experiment-result", "deviation_points"),
    ] {
        let out = cli_with("http://127.0.0.1:9", &["schema", kind], None);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let schema: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(schema["additionalProperties"], false, "{kind}");
        assert!(
            schema["properties"].get(field).is_some(),
            "{kind}: {schema}"
        );
    }
    // Usage errors are refusals (1), not clap's 2, which means a conflict here.
    let out = cli_with("http://127.0.0.1:9", &["set"], None);
    assert_eq!(out.code, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_right_ca_and_client_certificate_and_a_clear_error_with_the_wrong_ca() {
    skip_without_etcd!();
    let files = support::TlsFiles::generate();
    let etcd = Etcd::start_with(support::EtcdOptions {
        tls: Some(&files),
        client_cert_auth: true,
        ..Default::default()
    })
    .await;
    let (ca, cert, key, other) = (
        files.ca.to_str().unwrap(),
        files.client_cert.to_str().unwrap(),
        files.client_key.to_str().unwrap(),
        files.other_ca.to_str().unwrap(),
    );
    let out = cli(
        &etcd,
        &[
            "--cacert",
            ca,
            "--cert",
            cert,
            "--key",
            key,
            "set",
            "--new",
            "policies/p",
            r#"{"kill": true}"#,
            "--no-wait",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = cli(
        &etcd,
        &[
            "--cacert",
            ca,
            "--cert",
            cert,
            "--key",
            key,
            "get",
            "policies/p",
            "-o",
            "json",
        ],
    );
    assert_eq!(out.json()["app"]["value"], json!({"kill": true}));
    // The wrong CA: etcd unreachable (4), one line that names the certificate.
    let out = cli(
        &etcd,
        &[
            "--cacert",
            other,
            "--cert",
            cert,
            "--key",
            key,
            "get",
            "policies/p",
        ],
    );
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.to_lowercase().contains("certificate") || out.stderr.contains("TLS"),
        "{}",
        out.stderr
    );
    // A missing file: refused before connecting.
    let out = cli(
        &etcd,
        &["--cacert", "/nonexistent/ca.pem", "get", "policies/p"],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("cannot read /nonexistent/ca.pem"),
        "{}",
        out.stderr
    );
}
