//! `sp_wrapper --check`: what a job would meet on this minion, said one
//! line per check, then one summary line made for
//! `salt '*' cmd.run 'sp_wrapper --check'` across a fleet
//! (docs/diagnose.md).
//!
//! It reads the same `SP_*` environment a run reads (none at all is fine:
//! the defaults are checked) and changes nothing: no log file, no lock, no
//! directory created; the one probe file per directory is removed at once.
//! To the server it sends one `connect` under a job name and instance that
//! no Saltpeter run can have (`JOB_NAME`, `JOB_INSTANCE`), so the only thing
//! it touches there is its own connection's entry, gone when it closes.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::config::Config;
use crate::messages::{AckKind, Inbound};
use crate::os::{child, clock};
use crate::timings::Timings;
use crate::wire::{link, protocol};
use crate::{exit_codes, minion};

/// The job name of the check's `connect`. Saltpeter's job names are the
/// keys of its YAML crons; this one (a space, a `--`) is nobody's cron.
pub const JOB_NAME: &str = "sp_wrapper --check";
/// The instance of the check's `connect`. Saltpeter names every run
/// `<cron>_<unix seconds>`, so an instance without a `_<digits>` end
/// can never be a run's: the server keys a connection by
/// `<instance>:<machine>`, and this key is never a real job's.
pub const JOB_INSTANCE: &str = "sp_wrapper --check";
/// What stands for `SP_WEBSOCKET_URL` when it is not set: a
/// name that cannot resolve (`.invalid`, RFC 2606), never contacted.
const NO_URL: &str = "ws://sp-wrapper-check.invalid/";
/// The variables that name one run, which the check does not need: the
/// values that stand for them when they are not set.
const PLACEHOLDERS: [(&str, &str); 4] = [
    ("SP_WEBSOCKET_URL", NO_URL),
    ("SP_JOB_NAME", JOB_NAME),
    ("SP_JOB_INSTANCE", JOB_INSTANCE),
    ("SP_COMMAND", "true"),
];

/// The failures so far, for the summary: `<what>: <problem>; ...`.
struct Report {
    failures: String,
}

impl Report {
    fn say(&mut self, what: &str, outcome: Result<String, String>) {
        let (mark, text) = match &outcome {
            Ok(detail) => ("ok  ", detail),
            Err(problem) => ("FAIL", problem),
        };
        println!("{mark}  {what}: {text}");
        if outcome.is_err() {
            if !self.failures.is_empty() {
                self.failures.push_str("; ");
            }
            self.failures.push_str(what);
            self.failures.push_str(": ");
            self.failures.push_str(text);
        }
    }
}

/// Run every check; the exit code is `exit_codes::CHECK_FAILED` when one failed.
pub fn run() -> i32 {
    let env = |var: &str| std::env::var_os(var).map(|v| v.to_string_lossy().into_owned());
    let mut report = Report {
        failures: String::new(),
    };
    let version = format!("{} {}", protocol::VERSION, std::env::consts::ARCH);
    println!("ok    version: {version}");

    let cfg = config(&env, &mut report);
    minion::id::note_salt_ancestor();
    let (id, source) = minion::id::resolve(env("SP_MACHINE_ID").as_deref(), &env);
    report.say("machine id", Ok(format!("{id} (from {source})")));

    match &cfg {
        Some((cfg, url_given)) => check_setup(cfg, *url_given, &id, &mut report),
        None => println!("-     the rest: not checked (the configuration is invalid)"),
    }

    if report.failures.is_empty() {
        println!("sp_wrapper --check: OK {version} id={id} (from {source})");
        exit_codes::SUCCESS
    } else {
        println!(
            "sp_wrapper --check: FAILED {version} id={id}: {}",
            report.failures
        );
        exit_codes::CHECK_FAILED
    }
}

/// The configuration a run would get, and whether `SP_WEBSOCKET_URL` was
/// given. The variables that only name one run need not be set: the check
/// is of the minion (`PLACEHOLDERS`).
fn config(env: &dyn Fn(&str) -> Option<String>, report: &mut Report) -> Option<(Config, bool)> {
    let lookup = |var: &str| {
        let value = env(var).filter(|v| !v.is_empty());
        value.or_else(|| {
            let (_, placeholder) = PLACEHOLDERS.iter().find(|(name, _)| *name == var)?;
            Some(placeholder.to_string())
        })
    };
    match Config::from_lookup(lookup) {
        Ok(cfg) => {
            report.say("configuration", Ok("the SP_* variables are valid".into()));
            let url_given = cfg.url.raw != NO_URL;
            Some((cfg, url_given))
        }
        Err(e) => {
            report.say("configuration", Err(e.to_string()));
            None
        }
    }
}

fn check_setup(cfg: &Config, url_given: bool, machine: &str, report: &mut Report) {
    if url_given {
        report.say("server", server(cfg, machine));
    } else {
        println!("-     server: not checked (SP_WEBSOCKET_URL is not set)");
    }
    if cfg.spool_dir.as_os_str() == cfg.log_dir.as_os_str() {
        report.say("log and spool dir", directory(&cfg.log_dir));
    } else {
        report.say("log dir", directory(&cfg.log_dir));
        report.say("spool dir", directory(&cfg.spool_dir));
    }
    if let Some(dir) = cfg.lockfile.parent() {
        report.say("lock dir", directory(dir));
    }
    report.say("SP_USER", user(cfg.user.as_deref()));
}

/// The server accepts a WebSocket and ACKs our `connect`, each step within
/// `Timings::check_bound` (this process's timings are built here, once).
fn server(cfg: &Config, machine: &str) -> Result<String, String> {
    let timings = Timings::from_env().map_err(|e| e.to_string())?;
    let url = &cfg.url.raw;
    let frame = protocol::Encoder::new(JOB_NAME, JOB_INSTANCE, machine).connect(clock::now());
    let answer = link::ask_once(&cfg.url, frame, &timings).map_err(|e| format!("{url}: {e}"))?;
    match protocol::decode(&answer) {
        Ok(Inbound::Ack {
            kind: AckKind::Connect,
            ..
        }) => Ok(format!("{url} ACKed a connect")),
        _ => Err(format!(
            "{url}: answered {:?}, not a connect ACK",
            answer.get(..200).unwrap_or(&answer)
        )),
    }
}

/// `dir` (or, when it is missing, the directory a job would create it in)
/// takes a new file, and how much room it has.
fn directory(dir: &Path) -> Result<String, String> {
    let mut existing = dir;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    if !existing.is_dir() {
        return Err(format!("{} is not a directory", existing.display()));
    }
    // A name no agent file has (log, lock, spool, leftout), removed at once.
    let probe = existing.join(format!(".sp_wrapper-check.{}", std::process::id()));
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&probe)
        .and_then(|mut file| {
            // A byte, not just a name: a full disk refuses it.
            let wrote = file.write_all(b"x");
            unsafe { libc::fstatvfs(file.as_raw_fd(), &mut stats) };
            let _ = std::fs::remove_file(&probe);
            wrote
        });
    if let Err(e) = written {
        return Err(format!("{}: cannot write: {e}", existing.display()));
    }
    let free_mb = (stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64) >> 20;
    let (missing, parent) = match existing.as_os_str() == dir.as_os_str() {
        true => ("", Path::new("")),
        false => (" missing, a job creates it: ", existing),
    };
    Ok(format!(
        "{}{missing}{} writable, {free_mb} MB free",
        dir.display(),
        parent.display()
    ))
}

/// `SP_USER` found (in /etc/passwd, or through the host's NSS) and allowed.
fn user(name: Option<&str>) -> Result<String, String> {
    let Some(name) = name else {
        let uid = unsafe { libc::geteuid() };
        return Ok(format!("not set: the job runs as uid {uid}"));
    };
    let found = child::lookup_user(name).and_then(|u| child::check_user_allowed(&u).map(|_| u));
    let user = found.map_err(|e| format!("{name}: {e}"))?;
    let from = match user.from_nss {
        true => "the host's NSS",
        false => "/etc/passwd",
    };
    Ok(format!("{name}: uid {}, from {from}", user.uid))
}
