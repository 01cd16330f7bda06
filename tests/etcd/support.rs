//! The harness: real etcd processes (a single node or a 3-node cluster) on random loopback
//! ports in temporary directories, TLS material made with the `openssl` CLI, auth set-up
//! and a polling [`eventually`].
//!
//! - Every wait is a condition polled against a generous deadline: CI is a loaded 2-core
//!   machine, so nothing here sleeps for a fixed time and hopes.
//! - An etcd's stderr goes to `etcd.log` beside its data dir; `Drop` prints it only when
//!   the test is panicking, so passing tests stay quiet.
//! - Every etcd process has a watchdog (`sh`) holding a pipe from the test process: if the
//!   test process dies without running `Drop` (SIGKILL, abort), the watchdog SIGKILLs the
//!   etcd and removes its directory instead of leaving an orphan that holds ports and
//!   120 MiB of preallocated WAL.
//! - Ports are picked below the kernel's ephemeral range where there is room, so that no
//!   client connection's local port can take an etcd's port while it is down for a restart.
//! - Deadlines are real time: do not use these helpers with paused tokio time.

#![allow(
    dead_code,
    reason = "each test module uses a different part of the harness"
)]

use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::fs;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, Permission, TlsOptions};

/// How long an etcd may take to answer a first `get` after its process was spawned. Ready
/// in ≈ 0.1 s on an idle machine; the margin is for a loaded CI machine.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// Longest timeout of one readiness or status probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two polls of a condition.
const POLL: Duration = Duration::from_millis(10);
/// How many times a fresh start picks new ports after a port clash.
const FRESH_PORT_TRIES: usize = 20;
/// How long a restart on the same ports keeps retrying while a port is taken.
const SAME_PORT_DEADLINE: Duration = Duration::from_secs(20);
/// A key no test uses, read to check that etcd answers.
const PROBE_KEY: &str = "substation-harness-probe";

// ---------------------------------------------------------------------------------------
// Single node
// ---------------------------------------------------------------------------------------

/// How to start a single etcd; `EtcdOptions::default()` is what [`Etcd::start`] uses.
#[derive(Debug, Clone, Default)]
pub(crate) struct EtcdOptions<'a> {
    /// fsync the WAL and the backend as a production etcd does. Off by default
    /// (`--unsafe-no-fsync`): twice as fast, and the tests never pull the power.
    pub(crate) fsync: bool,
    /// Serve clients over TLS with this server certificate (peers stay plain http). The
    /// files are copied into the etcd's own directory: `TlsFiles` may be dropped first.
    pub(crate) tls: Option<&'a TlsFiles>,
    /// With `tls`: require client certificates signed by the CA (`--client-cert-auth`);
    /// [`Etcd::connect_options`] then presents `TlsFiles::client_cert`.
    pub(crate) client_cert_auth: bool,
    /// Extra command-line arguments, given last (a repeated flag takes the last value).
    pub(crate) extra_args: Vec<String>,
}

/// One single-node etcd process on random loopback ports with a fresh data dir.
/// Dropping it kills the process and removes the directory.
#[derive(Debug)]
pub(crate) struct Etcd {
    member: Member,
    /// The CA's PEM when clients connect over TLS.
    ca_pem: Option<Vec<u8>>,
    /// The client certificate and key PEMs when the server requires one.
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl Etcd {
    /// Starts a single node with the defaults: no fsync, fast raft timing, plain http.
    /// Returns once a real `get` has succeeded.
    pub(crate) async fn start() -> Etcd {
        Etcd::start_with(EtcdOptions::default()).await
    }

    /// Starts a single node as `opts` says. Returns once a real `get` has succeeded.
    pub(crate) async fn start_with(opts: EtcdOptions<'_>) -> Etcd {
        let dir = TempDir::new("etcd");
        let mut spec = Spec {
            name: "s1".to_owned(),
            client_port: 0,
            peer_port: 0,
            initial_cluster: String::new(),
            token: unique_token(),
            heartbeat_ms: 10,
            election_ms: 100,
            fsync: opts.fsync,
            tls: false,
            client_cert_auth: false,
            extra_args: opts.extra_args.clone(),
        };
        let mut ca_pem = None;
        let mut identity = None;
        if let Some(tls) = opts.tls {
            let tls_dir = dir.path().join("tls");
            fs::create_dir(&tls_dir).expect("create the tls dir");
            for (from, to) in [
                (&tls.ca, "ca.pem"),
                (&tls.cert, "server.pem"),
                (&tls.key, "server.key"),
            ] {
                fs::copy(from, tls_dir.join(to)).expect("copy the TLS files");
            }
            spec.tls = true;
            spec.client_cert_auth = opts.client_cert_auth;
            ca_pem = Some(fs::read(&tls.ca).expect("read the CA"));
            if opts.client_cert_auth {
                identity = Some((
                    fs::read(&tls.client_cert).expect("read the client cert"),
                    fs::read(&tls.client_key).expect("read the client key"),
                ));
            }
        } else {
            assert!(!opts.client_cert_auth, "client_cert_auth needs tls");
        }
        let mut etcd = Etcd {
            member: Member::new(spec, dir),
            ca_pem,
            identity,
        };
        for attempt in 1.. {
            let [client, peer] = free_ports::<2>();
            etcd.member.spec.client_port = client;
            etcd.member.spec.peer_port = peer;
            etcd.member.spec.initial_cluster = format!("s1=http://127.0.0.1:{peer}");
            etcd.member.spawn();
            let options = etcd.connect_options();
            match wait_ready(&mut [&mut etcd.member], &options).await {
                Ok(()) => break,
                Err(Failure::PortClash) if attempt < FRESH_PORT_TRIES => {
                    etcd.member.stop();
                    etcd.member.wipe();
                }
                Err(failure) => panic!("etcd did not start: {failure:?}\n{}", etcd.member.log()),
            }
        }
        etcd
    }

    /// `http://127.0.0.1:PORT`, or `https://…` with TLS.
    pub(crate) fn endpoint(&self) -> String {
        self.member.endpoint()
    }

    /// Options a client of this etcd needs: the CA (and client certificate) with TLS,
    /// nothing otherwise. Add a user, timeouts or keep-alive to them as the test needs.
    pub(crate) fn connect_options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new();
        if let Some(ca) = &self.ca_pem {
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
            if let Some((cert, key)) = &self.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(tls);
        }
        options
    }

    /// A plain client for the test's own puts, deletes and compactions (with the right CA
    /// for a TLS server). It has no timeouts: wrap calls that may hang in one.
    pub(crate) async fn client(&self) -> Client {
        Client::connect([self.endpoint()], Some(self.connect_options()))
            .await
            .expect("etcd_client::Client::connect does not contact the server")
    }

    /// SIGKILLs the process and reaps it. Nothing happens if it is not running.
    pub(crate) fn kill(&mut self) {
        self.member.stop();
    }

    /// Starts the process again on the same ports and data dir (killing it first if it is
    /// running); returns once a real `get` has succeeded.
    pub(crate) async fn restart(&mut self) {
        self.member.stop();
        let options = self.connect_options();
        restart_member(&mut self.member, &options).await;
    }

    /// Kills the process, deletes its data and starts a new one-node cluster on the same
    /// ports: the revision starts over at 1. Returns once a real `get` has succeeded.
    pub(crate) async fn wipe_and_restart(&mut self) {
        self.member.stop();
        self.member.wipe();
        let options = self.connect_options();
        restart_member(&mut self.member, &options).await;
    }

    /// SIGSTOPs the process and waits until every one of its threads is stopped:
    /// connections stay open, nothing answers.
    pub(crate) fn freeze(&self) {
        self.member.freeze();
    }

    /// SIGCONTs a frozen process and waits until its threads run again.
    pub(crate) fn thaw(&self) {
        self.member.thaw();
    }

    /// etcd's stderr so far (every run of this etcd, restarts included).
    pub(crate) fn log(&self) -> String {
        self.member.log()
    }

    /// The etcd's own directory: `data/` (its data dir), `etcd.log`, and `tls/` with
    /// copies of the TLS files. Removed on drop.
    pub(crate) fn dir(&self) -> &Path {
        self.member.dir.path()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.member.stop();
        if std::thread::panicking() {
            self.member.print_log();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------

/// A 3-member etcd cluster (heartbeat 25 ms, election timeout 250 ms) on random loopback
/// ports, plain http. Dropping it kills every member and removes their directories.
#[derive(Debug)]
pub(crate) struct Cluster {
    members: Vec<Member>,
}

impl Cluster {
    /// Starts 3 members, one at a time (see `spawn_in_turn`). Returns once a real `get`
    /// has succeeded through every member, so that the cluster is whole and any one
    /// member may be killed.
    pub(crate) async fn start() -> Cluster {
        let token = unique_token();
        let mut cluster = Cluster {
            members: (0..3)
                .map(|i| {
                    let spec = Spec {
                        name: format!("m{i}"),
                        client_port: 0,
                        peer_port: 0,
                        initial_cluster: String::new(),
                        token: token.clone(),
                        heartbeat_ms: 25,
                        election_ms: 250,
                        fsync: false,
                        tls: false,
                        client_cert_auth: false,
                        extra_args: Vec::new(),
                    };
                    Member::new(spec, TempDir::new("etcd"))
                })
                .collect(),
        };
        for attempt in 1.. {
            let ports = free_ports::<6>();
            let initial_cluster = (0..3)
                .map(|i| format!("m{i}=http://127.0.0.1:{}", ports[2 * i + 1]))
                .collect::<Vec<_>>()
                .join(",");
            for (i, m) in cluster.members.iter_mut().enumerate() {
                m.spec.client_port = ports[2 * i];
                m.spec.peer_port = ports[2 * i + 1];
                m.spec.initial_cluster = initial_cluster.clone();
            }
            match cluster.spawn_in_turn().await {
                Ok(()) => break,
                Err(Failure::PortClash) if attempt < FRESH_PORT_TRIES => {
                    for m in &mut cluster.members {
                        m.stop();
                        m.wipe();
                    }
                }
                Err(failure) => {
                    panic!("the cluster did not start: {failure:?}\n{}", cluster.logs())
                }
            }
        }
        cluster
    }

    /// Spawns the members one at a time, each once the previous one serves its peer
    /// port, then waits until each answers a `get`. Spawned all at once, each new member
    /// asks the others whether it was already bootstrapped and waits 1 s for every peer
    /// whose port is bound but not yet served: ≈ 2 s instead of ≈ 0.2 s.
    async fn spawn_in_turn(&mut self) -> Result<(), Failure> {
        for m in &mut self.members {
            m.spawn();
            wait_serving_peers(m).await?;
        }
        let mut members: Vec<&mut Member> = self.members.iter_mut().collect();
        wait_ready(&mut members, &ConnectOptions::new()).await
    }

    /// The members' client endpoints, `http://127.0.0.1:PORT`, in member order.
    pub(crate) fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// A plain client connected to every member. It has no timeouts, and keeps sending
    /// part of its requests to a killed member (they fail with `Unavailable`): retry.
    pub(crate) async fn client(&self) -> Client {
        Client::connect(self.endpoints(), None)
            .await
            .expect("etcd_client::Client::connect does not contact the server")
    }

    /// The index of the current leader, asked of each running member (maintenance
    /// status) until one says it is the leader.
    pub(crate) async fn leader(&self) -> usize {
        let deadline = Instant::now() + READY_DEADLINE;
        for round in 1u32.. {
            let timeout = probe_timeout(round);
            let probes: Vec<_> = (self.members.iter().enumerate())
                .filter(|(_, m)| m.running.is_some())
                .map(|(i, m)| (i, tokio::spawn(says_it_leads(m.endpoint(), timeout))))
                .collect();
            for (i, probe) in probes {
                if probe.await.unwrap_or(false) {
                    return i;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no member said it was the leader within {READY_DEADLINE:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(POLL).await;
        }
        unreachable!()
    }

    /// SIGKILLs member `i` and reaps it. Nothing happens if it is not running.
    pub(crate) fn kill(&mut self, i: usize) {
        self.members[i].stop();
    }

    /// Starts member `i` again on its ports and data dir (killing it first if it is
    /// running); returns once a real `get` through that member has succeeded, that is
    /// once it is back in the cluster and sees a leader.
    pub(crate) async fn restart(&mut self, i: usize) {
        self.members[i].stop();
        restart_member(&mut self.members[i], &ConnectOptions::new()).await;
    }

    /// SIGSTOPs member `i` and waits until every one of its threads is stopped.
    pub(crate) fn freeze(&self, i: usize) {
        self.members[i].freeze();
    }

    /// SIGCONTs member `i` and waits until its threads run again.
    pub(crate) fn thaw(&self, i: usize) {
        self.members[i].thaw();
    }

    /// Member `i`'s stderr so far.
    pub(crate) fn log(&self, i: usize) -> String {
        self.members[i].log()
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for m in &self.members {
            let _ = write!(all, "---- {} ----\n{}", m.spec.name, m.log());
        }
        all
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.stop();
        }
        if std::thread::panicking() {
            for m in &self.members {
                m.print_log();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------

/// TLS material made with the `openssl` CLI (EC P-256, valid 10 years) in a temporary
/// directory, removed on drop.
#[derive(Debug)]
pub(crate) struct TlsFiles {
    /// The CA that signed `cert` and `client_cert` (PEM).
    pub(crate) ca: PathBuf,
    /// The server certificate: SAN `IP:127.0.0.1` and `DNS:localhost` (PEM).
    pub(crate) cert: PathBuf,
    /// The server certificate's key (PKCS#8 PEM).
    pub(crate) key: PathBuf,
    /// An unrelated CA, which signed nothing here: the "wrong CA" (PEM).
    pub(crate) other_ca: PathBuf,
    /// A client certificate (CN `substation-client`) signed by `ca` (PEM).
    pub(crate) client_cert: PathBuf,
    /// The client certificate's key (PKCS#8 PEM).
    pub(crate) client_key: PathBuf,
    dir: TempDir,
}

impl TlsFiles {
    /// Generates a CA, a server certificate and a client certificate signed by it, and a
    /// second, unrelated CA.
    pub(crate) fn generate() -> TlsFiles {
        let dir = TempDir::new("tls");
        let d = dir.path();
        let ca_ext = [
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ];
        for (name, cn) in [
            ("ca", "substation test CA"),
            ("other-ca", "substation unrelated CA"),
        ] {
            let subject = format!("/CN={cn}");
            let mut args = vec!["req", "-x509", "-days", "3650", "-subj", &subject];
            args.extend(ca_ext);
            openssl(d, &args, name);
        }
        for (name, cn, ext) in [
            (
                "server",
                "localhost",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
            ),
            (
                "client",
                "substation-client",
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=clientAuth\n",
            ),
        ] {
            let subject = format!("/CN={cn}");
            openssl(d, &["req", "-new", "-subj", &subject], name);
            let ext_file = format!("{name}.ext");
            fs::write(d.join(&ext_file), ext).expect("write the extensions file");
            let csr = format!("{name}.csr");
            let pem = format!("{name}.pem");
            run_openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "3650",
                    "-extfile",
                    &ext_file,
                    "-out",
                    &pem,
                ],
            );
        }
        TlsFiles {
            ca: d.join("ca.pem"),
            cert: d.join("server.pem"),
            key: d.join("server.key"),
            other_ca: d.join("other-ca.pem"),
            client_cert: d.join("client.pem"),
            client_key: d.join("client.key"),
            dir,
        }
    }
}

/// TLS options trusting only the CA in the PEM file `ca` (no client certificate).
pub(crate) fn tls_options(ca: &Path) -> TlsOptions {
    TlsOptions::new().ca_certificate(Certificate::from_pem(fs::read(ca).expect("read the CA")))
}

/// `openssl req … -newkey ec` writing `NAME.key` and `NAME.pem` (or `NAME.csr` with `-new`).
fn openssl(dir: &Path, args: &[&str], name: &str) {
    let key = format!("{name}.key");
    let out = if args.contains(&"-x509") {
        format!("{name}.pem")
    } else {
        format!("{name}.csr")
    };
    let mut all = args.to_vec();
    all.extend([
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &out,
    ]);
    run_openssl(dir, &all);
}

fn run_openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run the openssl CLI (Debian's openssl package)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// Auth
// ---------------------------------------------------------------------------------------

/// Creates `root` (with the returned random password) and `user` with a role that may
/// only READ the keys under `read_prefix` (every key if it is empty), then enables auth.
/// `client` is switched to `root` so the test can go on writing with it.
pub(crate) async fn enable_auth(
    client: &mut Client,
    user: &str,
    password: &str,
    read_prefix: &str,
) -> String {
    let root_password = format!("root-{:016x}", random_u64());
    let role = format!("{user}-reader");
    client
        .user_add("root", root_password.as_str(), None)
        .await
        .expect("add root");
    client
        .user_grant_role("root", "root")
        .await
        .expect("grant root its role");
    client
        .role_add(role.as_str())
        .await
        .expect("add the reader role");
    client
        .role_grant_permission(role.as_str(), Permission::read(read_prefix).with_prefix())
        .await
        .expect("grant the reader role its permission");
    client
        .user_add(user, password, None)
        .await
        .expect("add the user");
    client
        .user_grant_role(user, role.as_str())
        .await
        .expect("grant the user its role");
    client.auth_enable().await.expect("enable auth");
    client
        .update_user(Some(("root".to_owned(), root_password.clone())))
        .await
        .expect("authenticate as root");
    root_password
}

// ---------------------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------------------

/// Polls `f` every few milliseconds until it returns true; panics with `what` once
/// `deadline` has passed. An attempt still running at the deadline is abandoned, but one
/// hanging attempt eats the whole deadline: give the requests inside `f` their own timeout.
pub(crate) async fn eventually<F, Fut>(what: &str, deadline: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if let Ok(true) = tokio::time::timeout(left, f()).await {
            return;
        }
        assert!(Instant::now() < end, "not within {deadline:?}: {what}");
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

/// Everything needed to (re)start one etcd process.
#[derive(Debug)]
struct Spec {
    name: String,
    client_port: u16,
    peer_port: u16,
    initial_cluster: String,
    token: String,
    heartbeat_ms: u32,
    election_ms: u32,
    fsync: bool,
    tls: bool,
    client_cert_auth: bool,
    extra_args: Vec<String>,
}

/// One etcd member: its directory (`data/`, `etcd.log`, `tls/`) and its process, if any.
#[derive(Debug)]
struct Member {
    spec: Spec,
    running: Option<Running>,
    dir: TempDir,
}

/// A running etcd and the watchdog that kills it if the test process dies.
#[derive(Debug)]
struct Running {
    etcd: Child,
    /// Length of `etcd.log` when this process was spawned: where its own lines begin.
    log_start: usize,
    watchdog: Child,
    /// Writing `done` tells the watchdog to exit quietly; EOF (the test process died)
    /// tells it to SIGKILL the etcd and remove the directory.
    watchdog_stdin: ChildStdin,
}

/// The watchdog: `$1` the etcd's pid, `$2` the directory to remove. It ignores the
/// signals a test runner sends to the whole process group, so that it outlives the test
/// process and cleans up. After the kill it waits (10 s at most) until the etcd is gone or
/// a zombie (nobody may reap it soon).
const WATCHDOG: &str = r#"trap '' INT TERM HUP
read -r line
if [ "$line" != done ]; then
  kill -9 "$1" 2>/dev/null
  i=0
  while [ -e "/proc/$1" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ] \
    && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  rm -rf "$2"
fi"#;

impl Drop for Member {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug)]
enum Failure {
    /// A port was taken (etcd exited at once with "address already in use").
    PortClash,
    /// The process exited for another reason.
    Exited(String, ExitStatus),
    /// No answer before the deadline.
    Timeout(String),
}

impl Member {
    fn new(spec: Spec, dir: TempDir) -> Member {
        Member {
            spec,
            running: None,
            dir,
        }
    }

    fn endpoint(&self) -> String {
        let scheme = if self.spec.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.spec.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.spec.peer_port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn spawn(&mut self) {
        assert!(
            self.running.is_none(),
            "{} is already running",
            self.spec.name
        );
        let s = &self.spec;
        let client_url = self.endpoint();
        let peer_url = self.peer_url();
        let data_dir = self.data_dir();
        let mut args: Vec<String> = vec![
            format!("--name={}", s.name),
            format!("--data-dir={}", data_dir.display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster={}", s.initial_cluster),
            "--initial-cluster-state=new".to_owned(),
            format!("--initial-cluster-token={}", s.token),
            format!("--heartbeat-interval={}", s.heartbeat_ms),
            format!("--election-timeout={}", s.election_ms),
            "--logger=zap".to_owned(),
            "--log-level=warn".to_owned(),
        ];
        if !s.fsync {
            args.push("--unsafe-no-fsync".to_owned());
        }
        if s.tls {
            let tls = self.dir.path().join("tls");
            args.push(format!("--cert-file={}", tls.join("server.pem").display()));
            args.push(format!("--key-file={}", tls.join("server.key").display()));
            if s.client_cert_auth {
                args.push("--client-cert-auth".to_owned());
                args.push(format!(
                    "--trusted-ca-file={}",
                    tls.join("ca.pem").display()
                ));
            }
        }
        args.extend(s.extra_args.iter().cloned());

        let log_start = fs::metadata(self.log_path()).map_or(0, |m| m.len() as usize);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open etcd.log");
        let mut cmd = Command::new(etcd_binary());
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // etcd reads ETCD_* variables as flags: none of the caller's may leak in.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        let etcd = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run {:?} ({e}): install Debian's etcd-server or set SUBSTATION_ETCD",
                etcd_binary()
            )
        });
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("substation-etcd-watchdog")
            .arg(etcd.id().to_string())
            .arg(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run the etcd watchdog (sh)");
        let watchdog_stdin = watchdog
            .stdin
            .take()
            .expect("the watchdog's stdin is piped");
        self.running = Some(Running {
            etcd,
            log_start,
            watchdog,
            watchdog_stdin,
        });
    }

    /// SIGKILL + wait (the watchdog is dismissed first). Nothing happens if not running.
    fn stop(&mut self) {
        if let Some(mut r) = self.running.take() {
            // The watchdog must be gone before the etcd is reaped: it must never signal
            // a pid that the system has given to another process.
            let _ = r.watchdog_stdin.write_all(b"done\n");
            drop(r.watchdog_stdin);
            let _ = r.watchdog.wait();
            let _ = r.etcd.kill();
            let _ = r.etcd.wait();
        }
    }

    /// The process's exit status if it has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        let r = self.running.as_mut()?;
        r.etcd.try_wait().expect("try_wait on etcd")
    }

    /// Deletes the data dir (the process must be stopped).
    fn wipe(&mut self) {
        assert!(self.running.is_none(), "wipe of a running etcd");
        match fs::remove_dir_all(self.data_dir()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("remove {}: {e}", self.data_dir().display()),
        }
    }

    /// SIGSTOP, then wait for the stop to take effect. `kill` returns once the signal is
    /// queued; on a busy machine the thread chosen to take it may wait for a CPU while
    /// another thread goes on answering requests (seen: answers 1 ms after `kill -STOP`).
    fn freeze(&self) {
        let pid = self.signal("STOP");
        wait_threads(pid, true);
    }

    fn thaw(&self) {
        let pid = self.signal("CONT");
        wait_threads(pid, false);
    }

    /// Sends `signal` to the etcd with the `kill` command; returns its pid.
    fn signal(&self, signal: &str) -> u32 {
        let r = self
            .running
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.spec.name));
        let pid = r.etcd.id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed: {status}");
        pid
    }

    fn log(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn print_log(&self) {
        eprintln!(
            "---- etcd {} ({}) log ----\n{}---- end of etcd {} log ----",
            self.spec.name,
            self.endpoint(),
            self.log(),
            self.spec.name
        );
    }

    /// Why the process exited, once it has.
    fn failure(&mut self) -> Option<Failure> {
        let status = self.exited()?;
        let start = self.running.as_ref().map_or(0, |r| r.log_start);
        let log = fs::read(self.log_path()).unwrap_or_default();
        let own = String::from_utf8_lossy(log.get(start..).unwrap_or(&log));
        if own.contains("address already in use") {
            Some(Failure::PortClash)
        } else {
            Some(Failure::Exited(self.spec.name.clone(), status))
        }
    }
}

/// Waits until a real `get` through each member's own endpoint succeeds. A member that
/// exits ends the wait at once. The members are probed concurrently, each probe with a
/// short timeout that grows round after round: a `get` sent before a leader exists can
/// hang for seconds (etcd's read-index request timeout) while a new one would succeed.
async fn wait_ready(members: &mut [&mut Member], options: &ConnectOptions) -> Result<(), Failure> {
    let deadline = Instant::now() + READY_DEADLINE;
    let mut ready = vec![false; members.len()];
    for round in 1u32.. {
        for m in members.iter_mut() {
            if let Some(failure) = m.failure() {
                return Err(failure);
            }
        }
        let timeout = probe_timeout(round);
        let probes: Vec<_> = (0..members.len())
            .filter(|&i| !ready[i])
            .map(|i| {
                (
                    i,
                    tokio::spawn(answers(
                        members[i].endpoint(),
                        members[i].peer_url(),
                        options.clone(),
                        timeout,
                    )),
                )
            })
            .collect();
        for (i, probe) in probes {
            ready[i] = probe.await.unwrap_or(false);
        }
        if ready.iter().all(|&r| r) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let names: Vec<_> = members.iter().map(|m| m.spec.name.clone()).collect();
            return Err(Failure::Timeout(format!(
                "{names:?} not ready within {READY_DEADLINE:?}"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
    unreachable!()
}

/// Waits until the member answers HTTP on its peer port (`GET /version`), which it does
/// before a quorum exists.
async fn wait_serving_peers(member: &mut Member) -> Result<(), Failure> {
    let deadline = Instant::now() + READY_DEADLINE;
    for round in 1u32.. {
        if let Some(failure) = member.failure() {
            return Err(failure);
        }
        let port = member.spec.peer_port;
        let timeout = probe_timeout(round);
        let serving = tokio::task::spawn_blocking(move || peer_version(port, timeout))
            .await
            .unwrap_or(false);
        if serving {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Failure::Timeout(format!(
                "{} did not serve its peer port within {READY_DEADLINE:?}",
                member.spec.name
            )));
        }
        tokio::time::sleep(POLL).await;
    }
    unreachable!()
}

/// Whether `GET /version` on the peer port answers 200 within `timeout` (blocking). Reads
/// the status line only: etcd does not always close the connection after its answer.
fn peer_version(port: u16, timeout: Duration) -> bool {
    use std::io::Read as _;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let request = b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if stream.write_all(request).is_err() {
        return false;
    }
    let mut response = Vec::new();
    let mut chunk = [0u8; 256];
    while !response.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut chunk) {
            Ok(n) if n > 0 => response.extend_from_slice(&chunk[..n]),
            _ => return false,
        }
    }
    response.starts_with(b"HTTP/1.1 200") || response.starts_with(b"HTTP/1.0 200")
}

/// 250 ms, growing by 250 ms a round up to [`PROBE_TIMEOUT`].
fn probe_timeout(round: u32) -> Duration {
    (Duration::from_millis(250) * round).min(PROBE_TIMEOUT)
}

/// Polls `/proc/PID/task/*/stat` until every thread of `pid` is stopped (`stopped`) or
/// none is. Blocking, but for a few milliseconds at most on an idle machine. Without
/// `/proc` it returns at once.
fn wait_threads(pid: u32, stopped: bool) {
    let deadline = Instant::now() + READY_DEADLINE;
    let states = || -> Option<Vec<bool>> {
        let mut all = Vec::new();
        for task in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
            let stat = fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
            // "tid (comm) S ...": the state follows the last ')'.
            let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
            all.push(state == "T" || state == "t");
        }
        Some(all)
    };
    while let Some(threads) = states() {
        if threads.iter().all(|&t| t == stopped) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "etcd {pid}: threads not {} within {READY_DEADLINE:?}",
            if stopped { "stopped" } else { "running" }
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Spawns a stopped member on its ports and waits until it answers; retries while a
/// port is still taken by something else.
async fn restart_member(member: &mut Member, options: &ConnectOptions) {
    let deadline = Instant::now() + SAME_PORT_DEADLINE;
    loop {
        member.spawn();
        match wait_ready(&mut [&mut *member], options).await {
            Ok(()) => return,
            Err(Failure::PortClash) if Instant::now() < deadline => {
                member.stop();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(failure) => panic!(
                "etcd {} did not restart: {failure:?}\n{}",
                member.spec.name,
                member.log()
            ),
        }
    }
}

/// Whether a linearizable `get` through `endpoint` succeeds within `timeout`, answered by
/// a member of the cluster whose member `peer_url` is (not by another test's etcd that got
/// the port while ours was failing on a port clash). An auth refusal counts as an answer:
/// etcd 3.4 checks permissions only after the read went through raft, and the harness
/// does not know the test's credentials.
async fn answers(
    endpoint: String,
    peer_url: String,
    options: ConnectOptions,
    timeout: Duration,
) -> bool {
    let attempt = async {
        let mut client = probe_client(&endpoint, &options, timeout).await?;
        if let Err(e) = client.get(PROBE_KEY, None).await {
            let refusal = e.to_string();
            let auth = [
                "user name is empty",
                "permission denied",
                "invalid auth token",
            ];
            if !auth.iter().any(|a| refusal.contains(a)) {
                return Err(e);
            }
        }
        let members = client.member_list().await?;
        Ok::<_, etcd_client::Error>(
            members
                .members()
                .iter()
                .any(|m| m.peer_urls().contains(&peer_url)),
        )
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Ok(true)))
}

/// Whether the member at `endpoint` says, within `timeout`, that it is the leader.
async fn says_it_leads(endpoint: String, timeout: Duration) -> bool {
    let attempt = async {
        let mut client = probe_client(&endpoint, &ConnectOptions::new(), timeout).await?;
        client.status().await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(status)) => {
            status.leader() != 0 && status.header().map(|h| h.member_id()) == Some(status.leader())
        }
        _ => false,
    }
}

/// A fresh client for one probe (no reconnect backoff carried over from a failed try).
async fn probe_client(
    endpoint: &str,
    options: &ConnectOptions,
    timeout: Duration,
) -> Result<Client, etcd_client::Error> {
    let options = options
        .clone()
        .with_connect_timeout(timeout)
        .with_timeout(timeout);
    Client::connect([endpoint], Some(options)).await
}

fn etcd_binary() -> PathBuf {
    std::env::var_os("SUBSTATION_ETCD").map_or_else(|| PathBuf::from("etcd"), PathBuf::from)
}

/// Whether a test that needs etcd must return at once because etcd cannot be run here
/// (not on `PATH`, or `SUBSTATION_ETCD` names nothing runnable). It says so once per
/// process, on the real stderr (not captured). With `SUBSTATION_REQUIRE_ETCD=1` (set by
/// `scripts/test.sh`) a missing etcd is a failure instead. Use [`skip_without_etcd!`].
pub(crate) fn etcd_missing() -> bool {
    static WHY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let why = WHY.get_or_init(|| {
        let ran = Command::new(etcd_binary())
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match ran {
            Ok(_) => None,
            Err(e) => Some(format!("cannot run {:?}: {e}", etcd_binary())),
        }
    });
    let Some(why) = why else {
        return false;
    };
    assert!(
        std::env::var_os("SUBSTATION_REQUIRE_ETCD").is_none_or(|v| v != "1"),
        "SUBSTATION_REQUIRE_ETCD=1 but {why}: install Debian's etcd-server or set SUBSTATION_ETCD"
    );
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        let _ = writeln!(
            std::io::stderr(),
            "skipping the tests that need etcd: {why} (install Debian's etcd-server or set \
             SUBSTATION_ETCD; SUBSTATION_REQUIRE_ETCD=1 makes this a failure)"
        );
    });
    true
}

/// Returns from the test (it passes) when etcd cannot be run here; see [`etcd_missing`].
#[macro_export]
macro_rules! skip_without_etcd {
    () => {
        if $crate::support::etcd_missing() {
            return;
        }
    };
}

// ---------------------------------------------------------------------------------------
// Ports, directories, randomness
// ---------------------------------------------------------------------------------------

/// `N` distinct free loopback ports, every listener held until all are chosen. Taken at
/// random below the kernel's ephemeral range when it leaves room (outgoing connections
/// never get those as local ports), else from the kernel (port 0). Never 2379/2380.
fn free_ports<const N: usize>() -> [u16; N] {
    let below_ephemeral = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|&low| low > 12_000);
    let mut held = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for port in &mut ports {
        let listener = (0..1000)
            .find_map(|_| {
                let candidate = match below_ephemeral {
                    Some(low) => 10_000 + (random_u64() % u64::from(low - 10_000)) as u16,
                    None => 0,
                };
                if candidate == 2379 || candidate == 2380 {
                    return None;
                }
                let l = TcpListener::bind(("127.0.0.1", candidate)).ok()?;
                let p = l.local_addr().ok()?.port();
                (p != 2379 && p != 2380).then_some(l)
            })
            .expect("no free loopback port");
        *port = listener.local_addr().expect("local_addr").port();
        held.push(listener);
    }
    drop(held);
    ports
}

/// A directory under the system temp dir, `substation-KIND-PID-N`, removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new(kind: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("substation-{kind}-{}-{n}", std::process::id()));
            match fs::create_dir(&path) {
                Ok(()) => return TempDir(path),
                // Left by an earlier process with the same pid.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("create {}: {e}", path.display()),
            }
        }
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn random_u64() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// A cluster token no other test's etcd has.
fn unique_token() -> String {
    format!("substation-{}-{:016x}", std::process::id(), random_u64())
}
