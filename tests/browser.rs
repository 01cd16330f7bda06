//! The dashboard page in a real browser: the example's scenario (50 policies with
//! traffic, switches, chaos experiments at its edge, a settings source) served on
//! loopback, Debian's `chromedriver` driving headless Chromium over the W3C WebDriver
//! HTTP API, and the page's DOM checked through executed JavaScript while the test
//! breaks and heals things. Saves screenshots to `target/dashboard.png` and
//! `target/dashboard-experiments.png`.
//!
//! - Without `chromedriver` or `chromium` the test says so in one line and passes,
//!   unless `SUBSTATION_REQUIRE_BROWSER=1` (as `scripts/test.sh` sets): then it fails.
//! - Every wait is a condition polled against a generous deadline (a loaded 2-core CI
//!   machine); starting the WebDriver session is retried.
//! - chromedriver runs in a process group of its own; a watchdog (`sh`) holding a pipe
//!   from this process kills the group and every process whose command line names the
//!   temporary directory (Chromium, which starts a session of its own, by its profile
//!   there), then removes the directory, when the test ends — passing, failing, or
//!   killed without unwinding.

#![cfg(feature = "dashboard")]

#[allow(dead_code, reason = "the test uses part of the example's scenario")]
#[path = "../examples/dashboard/scenario.rs"]
mod scenario;

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use serde_json::{Value, json};
use substation::BoxError;
use substation::dashboard::Dashboard;
use tower::ServiceExt;

use self::scenario::{Options, Scenario, http_json};

/// How long a condition on the page may take to hold. The page sees a change within an
/// interval of the stream (1 s) or of its status poll (2 s); the rest is margin.
const DEADLINE: Duration = Duration::from_secs(40);
/// Attempts at starting chromedriver and a session (each a fresh port and profile).
const ATTEMPTS: usize = 3;

// ---------------------------------------------------------------------------------------
// Finding the browser
// ---------------------------------------------------------------------------------------

/// Where a program is: on `PATH`, else at Debian's path.
fn program(name: &str, debian: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|f| f.is_file())
        })
        .or_else(|| Some(PathBuf::from(debian)).filter(|p| p.is_file()))
}

/// chromedriver and Chromium, or `None` (after saying why) when the test must skip.
fn browser() -> Option<(PathBuf, PathBuf)> {
    let driver = program("chromedriver", "/usr/bin/chromedriver");
    let chromium = program("chromium", "/usr/bin/chromium");
    if let (Some(d), Some(c)) = (&driver, &chromium) {
        return Some((d.clone(), c.clone()));
    }
    let missing = [("chromedriver", &driver), ("chromium", &chromium)]
        .iter()
        .filter(|(_, p)| p.is_none())
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(" and ");
    assert!(
        std::env::var_os("SUBSTATION_REQUIRE_BROWSER").is_none_or(|v| v != "1"),
        "SUBSTATION_REQUIRE_BROWSER=1 but {missing} not found: install Debian's chromium and chromium-driver"
    );
    let _ = writeln!(
        std::io::stderr(),
        "browser test skipped: {missing} not found (Debian: apt-get install chromium chromium-driver)"
    );
    None
}

// ---------------------------------------------------------------------------------------
// chromedriver and its watchdog
// ---------------------------------------------------------------------------------------

/// The watchdog: `$1` chromedriver's pid (= its process group, Chromium's too), `$2` the
/// temporary directory. It ignores the signals a test runner sends to the whole group,
/// so that it outlives this process; when its stdin ends — the driver dropped, or this
/// process gone — it kills the group and removes the directory.
const WATCHDOG: &str = r#"trap '' INT TERM HUP
read -r line
kill -9 -- "-$1" 2>/dev/null
# Chromium leaves chromedriver's group (a session of its own): its processes are found
# by their profile directory, which is inside "$2".
for p in /proc/[0-9]*; do
  case "$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)" in
    *"$2"*) [ "${p#/proc/}" = "$$" ] || kill -9 "${p#/proc/}" 2>/dev/null ;;
  esac
done
i=0
while [ -e "/proc/$1" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ] \
  && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
rm -rf "$2""#;

/// chromedriver, one WebDriver session, and their clean-up.
struct Driver {
    chromedriver: Child,
    watchdog: Child,
    watchdog_stdin: Option<ChildStdin>,
    dir: PathBuf,
    base: String,
    session: Option<String>,
}

fn fresh_dir() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir =
        std::env::temp_dir().join(format!("substation-browser-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(dir.join("home")).expect("create the temporary directory");
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Driver {
    /// Starts chromedriver and a headless Chromium session, retrying with a fresh port
    /// and profile.
    async fn start(chromedriver: &Path, chromium: &Path) -> Driver {
        let mut errors = Vec::new();
        for attempt in 1..=ATTEMPTS {
            let mut driver = Driver::spawn(chromedriver);
            match driver.open_session(chromium, attempt).await {
                Ok(()) => return driver,
                Err(e) => {
                    errors.push(format!(
                        "attempt {attempt}: {e}\n{}",
                        driver.log().trim_end()
                    ));
                    drop(driver);
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
        panic!(
            "no WebDriver session after {ATTEMPTS} attempts:\n{}",
            errors.join("\n")
        );
    }

    fn spawn(chromedriver: &Path) -> Driver {
        let dir = fresh_dir();
        let home = dir.join("home");
        let port = free_port();
        let log = std::fs::File::create(dir.join("chromedriver.log")).expect("create the log");
        let chromedriver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            // Chromium's own files (crash database, caches) stay in the directory.
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("run chromedriver");
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("substation-browser-watchdog")
            .arg(chromedriver.id().to_string())
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run the watchdog (sh)");
        let watchdog_stdin = watchdog.stdin.take();
        Driver {
            chromedriver,
            watchdog,
            watchdog_stdin,
            dir,
            base: format!("http://127.0.0.1:{port}"),
            session: None,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("chromedriver.log")).unwrap_or_default()
    }

    async fn open_session(&mut self, chromium: &Path, attempt: usize) -> Result<(), BoxError> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.chromedriver.try_wait()? {
                return Err(format!("chromedriver exited: {status}").into());
            }
            let ready = http_json("GET", &format!("{}/status", self.base), None).await;
            if matches!(&ready, Ok((200, v)) if v["value"]["ready"] == true) {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!("chromedriver not ready in 30 s: {ready:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = self.dir.join(format!("profile-{attempt}"));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "timeouts": {"script": 30_000, "pageLoad": 60_000},
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    // A laptop's screen: the page must be readable there with 50 policies.
                    "--window-size=1440,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let (code, v) = http_json(
            "POST",
            &format!("{}/session", self.base),
            Some(&capabilities),
        )
        .await?;
        match v["value"]["sessionId"].as_str() {
            Some(id) if code == 200 => {
                self.session = Some(id.to_owned());
                Ok(())
            }
            _ => Err(format!("POST /session: {code} {v}").into()),
        }
    }

    /// A command of the session; its `value`, or the WebDriver error.
    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let session = self.session.as_deref().expect("a session");
        let url = format!("{}/session/{session}/{path}", self.base);
        let (code, v) = http_json(method, &url, body.as_ref())
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(code, 200, "{method} {path}: {v}");
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.command("POST", "url", Some(json!({ "url": url })))
            .await;
    }

    /// Runs `script` (a function body: `return …`) in the page.
    async fn js(&self, script: &str) -> Value {
        self.command(
            "POST",
            "execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Polls `script` until `done` holds for its value (which it returns); fails with
    /// `what` and the last value at the deadline.
    async fn until(&self, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let v = self.js(script).await;
            if done(&v) {
                eprintln!("{what}: {:.1} s", start.elapsed().as_secs_f64());
                return v;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{what}: not within {DEADLINE:?}; last: {v}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn screenshot(&self) -> Vec<u8> {
        let v = self.command("GET", "screenshot", None).await;
        base64(v.as_str().expect("a base64 PNG"))
    }

    /// Ends the session (Chromium quits).
    async fn quit(&mut self) {
        if let Some(session) = self.session.take() {
            let url = format!("{}/session/{session}", self.base);
            let _ = http_json("DELETE", &url, None).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = writeln!(
                std::io::stderr(),
                "--- chromedriver.log ---\n{}",
                self.log()
            );
        }
        // EOF: the watchdog kills the group (chromedriver is not reaped before it is
        // done, so its pid, the group's id, cannot have been reused) and removes the
        // directory.
        drop(self.watchdog_stdin.take());
        let _ = self.watchdog.wait();
        let _ = self.chromedriver.kill();
        let _ = self.chromedriver.wait();
    }
}

/// Standard base64 (what WebDriver's screenshot returns).
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .map(value)
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | u32::from(*d) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

// ---------------------------------------------------------------------------------------
// The dashboard mounted under a prefix of another server
// ---------------------------------------------------------------------------------------

/// Serves `dashboard` under `prefix` of a hyper server of its own, as an application
/// mounts it in its router (the prefix stripped before the dashboard sees the path;
/// anything else is the application's, here a 404). Returns the address.
async fn mount(dashboard: Dashboard, prefix: &'static str) -> (SocketAddr, AbortOnDrop) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local address");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let dashboard = dashboard.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                        let dashboard = dashboard.clone();
                        async move {
                            let rest = match req.uri().path().strip_prefix(prefix) {
                                Some("") => "/".to_owned(),
                                Some(rest) if rest.starts_with('/') => rest.to_owned(),
                                _ => {
                                    let mut not_found = http::Response::new(Either::Right(
                                        Full::new(Bytes::from_static(b"not found")),
                                    ));
                                    *not_found.status_mut() = http::StatusCode::NOT_FOUND;
                                    return Ok::<_, Infallible>(not_found);
                                }
                            };
                            *req.uri_mut() = rest.parse().expect("a path");
                            let response = dashboard.oneshot(req).await?;
                            Ok(response.map(Either::Left))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, AbortOnDrop(task))
}

/// A task stopped when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

/// The tiles' attributes: `{name: {state, requests, total, killed, rank}}`.
const TILES: &str = r#"
const out = {};
for (const e of document.querySelectorAll('[data-policy]')) {
  out[e.dataset.policy] = {
    state: e.dataset.state, requests: Number(e.dataset.requests || -1),
    total: Number(e.dataset.total || -1), killed: e.dataset.killed,
    rank: Number(e.dataset.rank), fallback: Number(e.dataset.fallbackPercent || 0),
  };
}
return out;"#;

/// The banner and the switches.
const BANNER: &str = r#"
const h = document.getElementById('health');
const switches = {};
for (const r of document.querySelectorAll('[data-switch]')) {
  switches[r.dataset.switch] = {
    on: r.dataset.on, percent: Number(r.dataset.percent), variants: r.dataset.variants,
    evaluations: Number(r.dataset.evaluations || 0), text: r.textContent,
  };
}
const rejections = Array.from(document.querySelectorAll('#rejections li[data-key]'),
  li => ({key: li.dataset.key, text: li.textContent}));
return {
  health: h.dataset.health, text: h.textContent, elements: h.children.length,
  rejections, markup: document.querySelectorAll('#rejections img, #rejections b, #health b').length,
  pwned: window.pwned === 1, switches,
  stream: document.getElementById('stream').dataset.stream,
};"#;

/// The experiments' rows: `{rows: {name: {state, badge, reason, text, …}}, shown, summary}`.
const EXPERIMENTS: &str = r#"
const rows = {};
for (const r of document.querySelectorAll('[data-experiment]')) {
  const badge = r.querySelector('.xstate');
  rows[r.dataset.experiment] = {
    state: r.dataset.state, policy: r.dataset.experimentPolicy, badge: badge ? badge.textContent : null,
    control: Number(r.dataset.controlRequests), experiment: Number(r.dataset.experimentRequests),
    controlSuccess: r.dataset.controlSuccess, experimentSuccess: r.dataset.experimentSuccess,
    deviation: r.dataset.deviation, reason: r.dataset.reason, text: r.textContent,
  };
}
return {
  rows, shown: !document.getElementById('experiments-section').hidden,
  summary: document.getElementById('sum-exp-wrap').textContent,
  markup: document.querySelectorAll('#experiments img').length, pwned: window.pwned === 2,
};"#;

fn tile<'a>(v: &'a Value, name: &str) -> &'a Value {
    &v[name]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_page_shows_the_policies_live_in_chromium() {
    let Some((chromedriver, chromium)) = browser() else {
        return;
    };
    let started = Instant::now();
    let scenario = Scenario::start(Options {
        extra: 42,
        ..Options::default()
    })
    .await
    .expect("start the scenario");
    let names = scenario.names();
    assert_eq!(names.len(), 50);
    let (mounted, _mounted) = mount(Dashboard::new(&scenario.substation), "/ops/dashboard").await;

    let mut driver = Driver::start(&chromedriver, &chromium).await;
    eprintln!(
        "chromedriver and a session: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    driver.goto(&scenario.url()).await;

    // A tile per policy, each with requests in its window and a total.
    let expected: Vec<String> = names.clone();
    let tiles = driver
        .until("a tile per policy, with counts", TILES, |v| {
            let Some(o) = v.as_object() else {
                return false;
            };
            let mut got: Vec<&String> = o.keys().collect();
            got.sort();
            got == expected.iter().collect::<Vec<_>>()
                && o.values()
                    .all(|t| t["requests"].as_i64() > Some(0) && t["total"].as_i64() > Some(0))
        })
        .await;
    // No experiment yet: no section. Two start now (one to be aborted by its judge).
    let none = driver.js(EXPERIMENTS).await;
    assert_eq!(none["shown"], false, "{none}");
    assert_eq!(none["rows"], json!({}), "{none}");
    scenario
        .start_experiments(60_000)
        .expect("start the experiments");

    // Counts increase between two reads.
    let later = driver
        .until("every total grew", TILES, |v| {
            names
                .iter()
                .all(|n| tile(v, n)["total"].as_i64() > tile(&tiles, n)["total"].as_i64())
        })
        .await;
    assert!(
        names.iter().all(|n| tile(&later, n)["state"] == "closed"),
        "all closed at first: {later}"
    );

    // The switches and the banner.
    driver
        .until("switches and a live banner", BANNER, |v| {
            let s = &v["switches"];
            v["health"] == "live"
                && v["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("Settings live"))
                && v["stream"] == "open"
                && s["new-checkout"]["percent"] == 25.0
                && s["new-checkout"]["on"] == "null"
                && s["ranking"]["variants"] == "control:70,ml-v2:30"
                && s["search-v2"]["on"] == "false"
                && s["search-v2"]["percent"] == 100.0
                && ["new-checkout", "ranking", "search-v2"]
                    .iter()
                    .all(|n| s[*n]["evaluations"].as_f64() > Some(0.0))
        })
        .await;

    // Break things: a dependency fails (its breaker opens), another is forced open,
    // another killed; the store goes away; a bad value (with markup in it) is refused;
    // a rollout moves.
    scenario.fail("payments", true);
    let source = &scenario.source;
    source
        .put("policies/search", r#"{"breaker": {"mode": "force_open"}}"#)
        .expect("force open");
    source
        .put("policies/reviews", r#"{"kill": true}"#)
        .expect("kill");
    scenario.store.stale(
        &scenario.substation,
        "etcd unreachable: <b>connection refused</b>",
    );
    source
        .put(
            "policies/pricing",
            r#"{"timeout": {"ms": "<img src=x onerror=window.pwned=1>"}}"#,
        )
        .expect_err("a string is no timeout");
    source
        .put("switches/new-checkout", r#"{"percent": 50}"#)
        .expect("roll out");
    let broken = driver
        .until(
            "payments open, search forced open, reviews killed",
            TILES,
            |v| {
                matches!(
                    tile(v, "payments")["state"].as_str(),
                    Some("open" | "half_open")
                ) && tile(v, "search")["state"] == "forced_open"
                    && tile(v, "reviews")["killed"] == "true"
                    && tile(v, "payments")["fallback"].as_f64() > Some(0.0)
                    // The page re-sorts 60 ms after a change (one layout per burst).
                    && ["payments", "search"]
                        .iter()
                        .all(|n| tile(v, n)["rank"].as_i64() < Some(2))
            },
        )
        .await;
    // The alarms come first.
    let mut first: Vec<&str> = ["payments", "search"]
        .into_iter()
        .filter(|n| tile(&broken, n)["rank"].as_i64() < Some(2))
        .collect();
    first.sort();
    assert_eq!(first, ["payments", "search"], "open first: {broken}");
    let banner = driver
        .until("stale banner, the rejection, the rollout", BANNER, |v| {
            v["health"] == "stale"
                && v["rejections"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r["key"] == "policies/pricing"))
                && v["switches"]["new-checkout"]["percent"] == 50.0
        })
        .await;
    // Operator data is text, never markup.
    let text = banner["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("<b>connection refused</b>"),
        "the reason, as text: {text}"
    );
    let rejection = banner["rejections"][0]["text"].as_str().unwrap_or_default();
    assert!(
        rejection.contains("<img src=x onerror=window.pwned=1>"),
        "the refused value's error, as text: {rejection}"
    );
    assert_eq!(banner["elements"], 0, "no element in the health banner");
    assert_eq!(banner["markup"], 0, "no element made from operator data");
    assert_eq!(banner["pwned"], false);
    // Let a few more events in, so that the sparklines show the episode.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let png = driver.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target/")
        .join("dashboard.png");
    std::fs::write(&target, &png).expect("write the screenshot");
    eprintln!("screenshot: {} ({} bytes)", target.display(), png.len());
    // Readable on a laptop: 50 tiles fit the 1440 × 900 window without scrolling.
    let fit = driver
        .js(
            "const tiles = document.querySelectorAll('[data-policy]'); \
             let bottom = 0; for (const t of tiles) bottom = Math.max(bottom, t.getBoundingClientRect().bottom); \
             return {bottom, height: window.innerHeight, width: window.innerWidth};",
        )
        .await;
    let (bottom, height) = (fit["bottom"].as_f64(), fit["height"].as_f64());
    assert!(
        bottom.zip(height).is_some_and(|(b, h)| b <= h),
        "50 tiles fit the window: {fit}"
    );

    // The experiment the judge stopped: its state and its reason, as text.
    let experiments = driver
        .until(
            "inventory-outage aborted, with its reason",
            EXPERIMENTS,
            |v| {
                v["rows"]["inventory-outage"]["state"] == "aborted"
                    && v["rows"]["recommendations-outage"].is_object()
            },
        )
        .await;
    let aborted = &experiments["rows"]["inventory-outage"];
    assert_eq!(experiments["shown"], true);
    assert_eq!(aborted["badge"], "ABORTED", "{aborted}");
    assert_eq!(aborted["policy"], "inventory", "{aborted}");
    let reason = aborted["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("experiment success 0.0 % vs control"),
        "{aborted}"
    );
    assert!(
        aborted["text"].as_str().is_some_and(|t| t.contains(reason)),
        "the reason shown: {aborted}"
    );
    assert!(
        aborted["control"].as_f64() >= Some(20.0) && aborted["experiment"].as_f64() >= Some(20.0),
        "{aborted}"
    );
    assert_eq!(aborted["experimentSuccess"], "0.0", "{aborted}");
    // The deviation is the control's success rate (the scenario's own breakages may
    // fail a control request too): experiment 0 %.
    assert_eq!(aborted["deviation"], aborted["controlSuccess"], "{aborted}");
    assert!(
        experiments["summary"]
            .as_str()
            .is_some_and(|t| t.contains("1 aborted")),
        "{experiments}"
    );
    // A verdict from the store (as another process, or an operator, writes it) is shown
    // as text too: `halted`, with markup in its reason.
    let run = scenario
        .substation
        .experiments()
        .into_iter()
        .find(|e| e.name == "recommendations-outage")
        .expect("the other experiment")
        .run;
    let halted = json!({
        "run": run, "state": "halted", "started_ms": 1, "stopped_ms": 2,
        "reason": "halted by hand <img src=x onerror=window.pwned=2>",
    });
    source
        .put(
            "experiments/recommendations-outage/result",
            &halted.to_string(),
        )
        .expect("a halted result");
    let experiments = driver
        .until("recommendations-outage halted", EXPERIMENTS, |v| {
            v["rows"]["recommendations-outage"]["state"] == "halted"
        })
        .await;
    let row = &experiments["rows"]["recommendations-outage"];
    assert_eq!(row["badge"], "HALTED", "{row}");
    assert!(
        row["text"]
            .as_str()
            .is_some_and(|t| t.contains("halted by hand <img src=x onerror=window.pwned=2>")),
        "{row}"
    );
    assert_eq!(
        experiments["markup"], 0,
        "no element made from operator data"
    );
    assert_eq!(experiments["pwned"], false);
    driver
        .js("document.getElementById('experiments-section').scrollIntoView();")
        .await;
    let png = driver.screenshot().await;
    let shot = target.with_file_name("dashboard-experiments.png");
    std::fs::write(&shot, &png).expect("write the screenshot");
    eprintln!("screenshot: {} ({} bytes)", shot.display(), png.len());
    driver.js("window.scrollTo(0, 0);").await;

    // Heal: the breaker closes, the forced mode and the kill are lifted, the store is
    // back, the value fixed.
    scenario.fail("payments", false);
    source.put("policies/search", "{}").expect("normal mode");
    source.put("policies/reviews", "{}").expect("revive");
    source.put("policies/pricing", "{}").expect("fix");
    scenario.store.live(&scenario.substation);
    driver
        .until("payments and search closed, reviews alive", TILES, |v| {
            tile(v, "payments")["state"] == "closed"
                && tile(v, "search")["state"] == "closed"
                && tile(v, "reviews")["killed"] == "false"
        })
        .await;
    driver
        .until("a live banner, nothing rejected", BANNER, |v| {
            v["health"] == "live" && v["rejections"].as_array().is_some_and(Vec::is_empty)
        })
        .await;

    // Mounted under a prefix and opened without its trailing slash, the page still
    // finds its stream and status.
    driver
        .goto(&format!("http://{mounted}/ops/dashboard"))
        .await;
    driver
        .until("the mounted page: every tile, live", TILES, |v| {
            v.as_object().is_some_and(|o| o.len() == 50)
                && v.as_object()
                    .is_some_and(|o| o.values().all(|t| t["total"].as_i64() > Some(0)))
        })
        .await;
    driver
        .until("the mounted page: the stream and banner", BANNER, |v| {
            v["health"] == "live" && v["stream"] == "open"
        })
        .await;

    driver.quit().await;
    eprintln!("browser test: {:.1} s", started.elapsed().as_secs_f64());
}
