//! `substation`: the operator's tool for live settings in etcd — validated writes with
//! compare-and-swap, fleet confirmation, history and rollback, status, chaos
//! experiments, JSON Schema. See README.md, "Operating it", for a walk-through and the
//! reference.

mod commands;
mod experiments;
mod fleet;
mod store;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

/// Live settings of substation processes, in etcd: read, check, write, confirm.
#[derive(Debug, Parser)]
#[command(name = "substation", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Where settings live and how to reach etcd.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        global = true,
        env = "SUBSTATION_ENDPOINTS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub(crate) endpoints: String,
    /// The application's prefix (what its `EtcdSource::new` watches).
    #[arg(
        long,
        global = true,
        env = "SUBSTATION_PREFIX",
        default_value = "/substation/app/"
    )]
    pub(crate) prefix: String,
    /// The fleet's shared prefix (what its `EtcdSource::shared_prefix` watches).
    #[arg(long, global = true, env = "SUBSTATION_SHARED_PREFIX")]
    pub(crate) shared_prefix: Option<String>,
    /// etcd user (etcd's user/password authentication).
    #[arg(long, global = true, env = "SUBSTATION_USER")]
    pub(crate) user: Option<String>,
    /// The user's password (better from the environment than the command line).
    #[arg(
        long,
        global = true,
        env = "SUBSTATION_PASSWORD",
        hide_env_values = true
    )]
    pub(crate) password: Option<String>,
    /// CA certificate (PEM) to trust: connects with TLS (https:// endpoints).
    #[arg(long, global = true, env = "SUBSTATION_CACERT")]
    pub(crate) cacert: Option<PathBuf>,
    /// Client certificate (PEM), with --key.
    #[arg(
        long = "cert",
        id = "tls_cert",
        value_name = "FILE",
        global = true,
        env = "SUBSTATION_CERT"
    )]
    pub(crate) cert: Option<PathBuf>,
    /// Client key (PEM), with --cert.
    #[arg(
        long = "key",
        id = "tls_key",
        value_name = "FILE",
        global = true,
        env = "SUBSTATION_KEY"
    )]
    pub(crate) key: Option<PathBuf>,
    /// The server name to expect in etcd's certificate (default: the endpoint's host).
    #[arg(long, global = true)]
    pub(crate) tls_domain: Option<String>,
    /// Timeout of each etcd request, in milliseconds.
    #[arg(long, global = true, default_value_t = 5000)]
    pub(crate) request_timeout_ms: u64,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// For people.
    Text,
    /// One JSON document on stdout, errors included.
    Json,
}

/// Options of every write.
#[derive(Debug, Args, Clone)]
pub(crate) struct WriteOpts {
    /// Write the fleet's shared layer (under --shared-prefix) instead of the application's.
    #[arg(long)]
    pub(crate) shared: bool,
    /// Wait until every announced instance has applied the write (default on a terminal).
    #[arg(long, overrides_with = "no_wait")]
    pub(crate) wait: bool,
    /// Do not wait for the fleet.
    #[arg(long)]
    pub(crate) no_wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) timeout: f64,
}

impl WriteOpts {
    pub(crate) fn waits(&self) -> bool {
        if self.no_wait {
            false
        } else {
            self.wait || std::io::stdout().is_terminal()
        }
    }

    pub(crate) fn layer(&self) -> substation::live::Scope {
        if self.shared {
            substation::live::Scope::Shared
        } else {
            substation::live::Scope::App
        }
    }
}

/// Checks of a new value.
#[derive(Debug, Args, Clone)]
pub(crate) struct NewOpts {
    /// Allow a policy or switch name that no announced instance knows (an experiment's
    /// name is new by nature: an unknown `policy` in it is only warned about).
    #[arg(long)]
    pub(crate) new: bool,
    /// Write even if announced instances would refuse the value with their code defaults
    /// (they keep their last good value).
    #[arg(long)]
    pub(crate) skip_fleet_check: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The stored value per layer, the code defaults instances announce, and the
    /// effective value, with the revision.
    Get {
        /// `policies/<name>`, `switches/<name>`, `experiments/<name>[/result]` or `global`.
        key: Option<String>,
        /// Every stored key and every name the fleet knows.
        #[arg(long, conflicts_with = "key")]
        all: bool,
    },
    /// Validate and write a whole value, if the key did not change since it was read.
    Set {
        /// `policies/<name>`, `switches/<name>`, `experiments/<name>[/result]` or `global`.
        key: String,
        /// The value (JSON); `-` reads it from standard input.
        json: String,
        /// Write only if the key's mod revision is this (from `get`); 0: only if absent.
        #[arg(long)]
        if_mod_revision: Option<i64>,
        #[command(flatten)]
        new: NewOpts,
        #[command(flatten)]
        write: WriteOpts,
    },
    /// Change some fields of the stored value: read, merge, validate, compare-and-swap
    /// (retried on conflict). `breaker.mode=force_open`, `timeout.ms=300`,
    /// `timeout.ms=null`; a value that is not JSON is a string.
    Patch {
        /// `policies/<name>`, `switches/<name>`, `experiments/<name>[/result]` or `global`.
        key: String,
        /// `field.path=value` assignments.
        #[arg(required = true)]
        assignments: Vec<String>,
        #[command(flatten)]
        new: NewOpts,
        #[command(flatten)]
        write: WriteOpts,
    },
    /// Delete the stored value (back to the layer below), if it did not change since read.
    Del {
        /// `policies/<name>`, `switches/<name>`, `experiments/<name>[/result]` or `global`.
        key: String,
        /// Delete only if the key's mod revision is this.
        #[arg(long)]
        if_mod_revision: Option<i64>,
        #[command(flatten)]
        write: WriteOpts,
    },
    /// What writing a value would change: the stored value and the effective one, field
    /// by field. Nothing is written.
    Diff {
        /// `policies/<name>`, `switches/<name>`, `experiments/<name>[/result]` or `global`.
        key: String,
        /// The value (JSON); `-` reads it from standard input.
        json: String,
        /// Compare with the shared layer.
        #[arg(long)]
        shared: bool,
    },
    /// Check values without writing: with --for, FILE holds one value; without, a JSON
    /// object of key → value. Needs no etcd (with etcd, also the fleet's code defaults).
    Validate {
        /// A file, or `-` for standard input.
        file: String,
        /// The key the file's value is for.
        #[arg(long = "for", value_name = "KEY")]
        key: Option<String>,
        /// Check against the library defaults only (no etcd).
        #[arg(long)]
        offline: bool,
    },
    /// The JSON Schema of a value (generated from the settings types).
    Schema {
        /// Which value.
        #[arg(value_enum, default_value_t = SchemaKind::Policy)]
        kind: SchemaKind,
    },
    /// Past values of a key, with their revisions, as far back as etcd keeps them.
    History {
        /// `policies/<name>`, `switches/<name>`, `experiments/<name>[/result]` or `global`.
        key: String,
        /// The shared layer's history.
        #[arg(long)]
        shared: bool,
    },
    /// Write a past value again (validated, compare-and-swap): the one before the
    /// current, or the one in force at --to.
    Rollback {
        /// `policies/<name>`, `switches/<name>`, `experiments/<name>[/result]` or `global`.
        key: String,
        /// The revision whose value to restore.
        #[arg(long)]
        to: Option<i64>,
        #[command(flatten)]
        new: NewOpts,
        #[command(flatten)]
        write: WriteOpts,
    },
    /// The fleet at a glance: instances, revisions, health, rejections, breakers.
    Status,
    /// Every chaos experiment (`experiments/<name>`) with its run's record
    /// (`experiments/<name>/result`): state, start, stop, reason, the cohorts' requests
    /// and success rates, the deviation. Read at one etcd revision.
    Experiments,
    /// Stop every chaos experiment at once (FIT's "halt all failures"): sets
    /// `global.halt_experiments` to true with compare-and-swap, as `patch` does;
    /// `--resume` removes it again. A halted run stays halted: delete its result
    /// (`del experiments/<name>/result`) to run it again.
    HaltExperiments {
        /// Remove `halt_experiments` from the layer's `global` value instead.
        #[arg(long)]
        resume: bool,
        #[command(flatten)]
        write: WriteOpts,
    },
    /// Changes as they happen, one line each (settings and instances). Ctrl-C stops.
    Watch {
        /// Only keys under this relative prefix (e.g. `policies/`).
        #[arg(id = "under", value_name = "UNDER")]
        under: Option<String>,
        /// Stop after this many lines (for scripts and tests).
        #[arg(long)]
        count: Option<usize>,
    },
}

/// Which schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum SchemaKind {
    /// `policies/<name>`.
    Policy,
    /// `switches/<name>`.
    Switch,
    /// `global`.
    Global,
    /// `experiments/<name>`.
    Experiment,
    /// `experiments/<name>/result` (written by the processes).
    ExperimentResult,
}

/// Exit statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Done.
    Ok = 0,
    /// Refused or invalid: nothing was written.
    Refused = 1,
    /// The key changed since it was read: nothing was written.
    Conflict = 2,
    /// Written, but not every instance applied it.
    NotConverged = 3,
    /// etcd could not be reached (or refused the credentials).
    Unreachable = 4,
}

/// A failure: its exit status and one line saying what to do.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) exit: Exit,
    pub(crate) message: String,
    pub(crate) json: Value,
}

impl Failure {
    pub(crate) fn new(exit: Exit, message: impl Into<String>) -> Failure {
        Failure {
            exit,
            message: message.into(),
            json: Value::Null,
        }
    }

    pub(crate) fn with_json(mut self, json: Value) -> Failure {
        self.json = json;
        self
    }
}

/// What a command says: text for people, a JSON document, and the exit status.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) exit: Exit,
    pub(crate) text: String,
    pub(crate) json: Value,
}

fn exit_name(exit: Exit) -> &'static str {
    match exit {
        Exit::Ok => "ok",
        Exit::Refused => "refused",
        Exit::Conflict => "conflict",
        Exit::NotConverged => "not_converged",
        Exit::Unreachable => "unreachable",
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                Exit::Refused as u8
            } else {
                0
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(Exit::Refused as u8);
        }
    };
    let output = cli.global.output;
    let result = runtime.block_on(run(cli));
    match result {
        Ok(report) => {
            match output {
                Output::Text => {
                    if !report.text.is_empty() {
                        say(report.text.trim_end());
                    }
                }
                Output::Json if report.json.is_null() => {}
                Output::Json => say(&json_text(&report.json, report.exit)),
            }
            ExitCode::from(report.exit as u8)
        }
        Err(f) => {
            match output {
                Output::Text => eprintln!("error: {}", f.message),
                Output::Json => {
                    let mut doc = match f.json {
                        Value::Object(m) => Value::Object(m),
                        _ => json!({}),
                    };
                    doc["error"] = json!(f.message);
                    say(&json_text(&doc, f.exit));
                }
            }
            ExitCode::from(f.exit as u8)
        }
    }
}

/// A warning for people (standard error, text output only: the JSON document carries
/// its warnings in `warnings`).
pub(crate) fn warn(output: Output, message: &str) {
    if output == Output::Text {
        eprintln!("warning: {message}");
    }
}

/// Prints a line on stdout; a closed pipe (`| head`) is not an error.
pub(crate) fn say(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn json_text(doc: &Value, exit: Exit) -> String {
    let mut doc = doc.clone();
    if let Value::Object(m) = &mut doc {
        m.insert("exit".into(), json!(exit as u8));
        m.insert("status".into(), json!(exit_name(exit)));
    }
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

async fn run(cli: Cli) -> Result<Report, Failure> {
    let g = &cli.global;
    match cli.command {
        Command::Get { key, all } => commands::get(g, key, all).await,
        Command::Set {
            key,
            json,
            if_mod_revision,
            new,
            write,
        } => commands::set(g, &key, &json, if_mod_revision, &new, &write).await,
        Command::Patch {
            key,
            assignments,
            new,
            write,
        } => commands::patch(g, &key, &assignments, &new, &write).await,
        Command::Del {
            key,
            if_mod_revision,
            write,
        } => commands::del(g, &key, if_mod_revision, &write).await,
        Command::Diff { key, json, shared } => commands::diff(g, &key, &json, shared).await,
        Command::Validate { file, key, offline } => {
            commands::validate(g, &file, key.as_deref(), offline).await
        }
        Command::Schema { kind } => commands::schema(kind),
        Command::History { key, shared } => commands::history(g, &key, shared).await,
        Command::Rollback {
            key,
            to,
            new,
            write,
        } => commands::rollback(g, &key, to, &new, &write).await,
        Command::Status => fleet::status(g).await,
        Command::Experiments => experiments::list(g).await,
        Command::HaltExperiments { resume, write } => experiments::halt(g, resume, &write).await,
        Command::Watch { under, count } => fleet::watch(g, under.as_deref(), count).await,
    }
}
