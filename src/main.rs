//! `sp_wrapper`: the Saltpeter job agent. Salt starts it on a minion with
//! `SP_*` variables; it returns to Salt at once, then (detached) runs the job
//! and reports it to the server over a WebSocket. docs/architecture.md has
//! the map; this file is the thin shell: flags, configuration, launch, and
//! the wiring of the threads around the supervisor.

mod child;
mod clock;
mod config;
mod daemon;
mod effects;
mod exit_codes;
mod frames;
#[cfg(test)]
mod fuzz;
mod guardian;
mod job;
mod link;
mod lockfile;
mod logger;
mod machine_id;
mod messages;
mod nss;
mod outbox;
mod output_cap;
mod pacing;
mod pipe;
mod protocol;
mod readers;
mod salt_yaml;
mod session;
mod spool;
mod supervisor;
mod tail;
mod utf8;
mod xorshift;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::Instant;

use config::Config;
use effects::Effects;
use job::JobLifecycle;
use link::LinkHandle;
use messages::{Event, LinkCommand, Stream};
use session::{Outcome, Session, Settings};
use supervisor::Supervisor;

/// How long the process waits at exit for the link thread to close the
/// connection cleanly (a close frame, then the server's reply).
const LINK_CLOSE_BOUND: std::time::Duration = std::time::Duration::from_secs(1);

use protocol::VERSION;

/// Memory beside the outbox's batches that also holds output: up to 4 MiB of
/// frames in flight (`session::WINDOW_BYTES`), recycled frame and batch
/// buffers, and up to `EVENT_QUEUE` reads of 64 KiB.
const OUTPUT_OVERHEAD: usize = 6 << 20;

/// Events that may wait for the supervisor (see `supervise`).
const EVENT_QUEUE: usize = 32;

/// How long a panic waits for its log line before the process aborts.
const PANIC_LOG_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// The job's process group, for the panic hook (0 = no job yet, or its
/// group is known to be gone: the id may be another process's by now).
static JOB_PGID: AtomicI32 = AtomicI32::new(0);
/// The job's main process (the group's leader) has been reaped: if its pid
/// is in use again, the group is gone (`child::signal_group_of_reaped`).
static JOB_LEADER_REAPED: AtomicBool = AtomicBool::new(false);

fn main() {
    std::process::exit(run());
}

fn usage() -> String {
    let mut text = format!(
        "sp_wrapper {VERSION}: runs one Saltpeter job and reports it to the server\n\n\
         usage: sp_wrapper [--foreground]    (configured by environment variables)\n\
         \x20      sp_wrapper --version | --help\n\n\
         --foreground  do not detach: show the job's output here too and exit with its result\n\n\
         variables:\n"
    );
    for (name, what) in config::VARIABLES {
        text.push_str(&format!("  {name:<22} {what}\n"));
    }
    text.push_str(
        "\nexit codes (and complete.retcode):\n\
         \x20 0 success; 1-123 the command's own; 1 also: invalid configuration at launch\n\
         \x20 124 killed after SP_TIMEOUT; 126/127 cannot execute / not found; 128+N died of signal N\n\
         \x20 143 killed on the server's request; 254 overlap refused (lock held); 255 wrapper error\n",
    );
    text
}

/// `--print-machine-id`: the id on stdout and where it came from on stderr;
/// `SP_MACHINE_ID` counts, as in a run.
fn print_machine_id() -> i32 {
    machine_id::note_salt_ancestor();
    let override_id = std::env::var("SP_MACHINE_ID").ok();
    let (id, source) = machine_id::resolve(override_id.as_deref(), |var| std::env::var(var).ok());
    println!("{id}");
    eprintln!("sp_wrapper: machine id from {source}");
    exit_codes::SUCCESS
}

fn run() -> i32 {
    let mut foreground = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--version" | "-V" => {
                println!("sp_wrapper {VERSION}");
                return exit_codes::SUCCESS;
            }
            "--help" | "-h" => {
                print!("{}", usage());
                return exit_codes::SUCCESS;
            }
            "--foreground" => foreground = true,
            // Hidden (not in --help): the machine id this agent would
            // report here, for tests/salt_id's comparison with Salt and for
            // an operator's check (docs/configuration.md, "The machine id").
            "--print-machine-id" => return print_machine_id(),
            other => {
                eprintln!("sp_wrapper: unknown argument {other:?} (see --help)");
                return exit_codes::CONFIG;
            }
        }
    }
    println!("Saltpeter Wrapper version {VERSION}");
    let _ = std::io::stdout().flush();

    let cfg = match Config::from_lookup(|var| {
        std::env::var_os(var).map(|v| v.to_string_lossy().into_owned())
    }) {
        Ok(cfg) => cfg,
        Err(e) => return fail(exit_codes::CONFIG, &format!("sp_wrapper: {e}")),
    };
    let user = match &cfg.user {
        None => None,
        Some(name) => {
            match child::lookup_user(name).and_then(|u| child::check_user_allowed(&u).map(|_| u)) {
                Ok(user) => Some(user),
                Err(e) => return fail(exit_codes::CONFIG, &format!("sp_wrapper: SP_USER: {e}")),
            }
        }
    };
    if let Some(cwd) = &cfg.cwd {
        if !cwd.is_dir() {
            return fail(
                exit_codes::CONFIG,
                &format!(
                    "sp_wrapper: SP_CWD: {} is not an existing directory",
                    cwd.display()
                ),
            );
        }
    }

    // Before detaching: once detached, the salt-minion that started us is
    // no longer among our ancestors, and its `-c` names the config directory.
    if cfg.machine_id.is_none() {
        machine_id::note_salt_ancestor();
    }

    if foreground {
        // `detach` does this for the guardian and daemon; here the job must not inherit
        // our launcher's descriptors either. No guardian: we are the caller's
        // child, and the caller sees us die.
        daemon::close_inherited_fds(&[]);
        let lock = match acquire_lock(&cfg) {
            Ok(lock) => lock,
            Err((code, message)) => return fail(code, &message),
        };
        let started = match start_job(&cfg, user.as_ref(), lock) {
            Ok(started) => started,
            Err((code, message)) => return fail(code, &message),
        };
        remove_stale_spools(&cfg);
        return supervise(&cfg, started, true).retcode;
    }
    let reporter = match daemon::detach() {
        Err(e) => {
            return fail(
                exit_codes::WRAPPER_ERROR,
                &format!("sp_wrapper: fork failed: {e}"),
            );
        }
        Ok(daemon::Detached::Launcher(code)) => return code,
        Ok(daemon::Detached::Child(reporter)) => reporter,
    };
    // The guardian takes the lock before the daemon exists, so the lock
    // outlives the daemon (guardian.rs).
    let lock = match acquire_lock(&cfg) {
        Ok(lock) => lock,
        Err((code, message)) => {
            reporter.failed(code, &message);
            return code;
        }
    };
    match guardian::fork_daemon(lock) {
        Err(e) => {
            let message = format!("sp_wrapper: fork failed: {e}");
            reporter.failed(exit_codes::WRAPPER_ERROR, &message);
            exit_codes::WRAPPER_ERROR
        }
        Ok(guardian::Role::Guardian(guardian)) => {
            // Only the daemon reports to the launcher: without our copy of the
            // pipe, a daemon that dies before reporting gives it EOF at once.
            drop(reporter);
            guardian.watch(&cfg)
        }
        Ok(guardian::Role::Daemon(lock)) => match start_job(&cfg, user.as_ref(), lock) {
            Err((code, message)) => {
                reporter.failed(code, &message);
                code
            }
            Ok(started) => {
                reporter.started(started.job.pid);
                remove_stale_spools(&cfg);
                // (The guardian was told the run is settled as soon as it
                // was, before the link closed and the lock was released.)
                supervise(&cfg, started, false);
                exit_codes::SUCCESS
            }
        },
    }
}

fn fail(code: i32, message: &str) -> i32 {
    eprintln!("{message}");
    code
}

/// What `start_job` hands to `supervise`.
struct Started {
    job: child::Job,
    lock: Option<lockfile::Lock>,
    log: Option<logger::LogHandle>,
    log_error: Option<String>,
    at: Instant,
}

/// The overlap lock, unless overlap is allowed, held by this process (the
/// guardian; with `--foreground`, the agent itself) and its children.
fn acquire_lock(cfg: &Config) -> Result<Option<lockfile::Lock>, (i32, String)> {
    if cfg.allow_overlap {
        return Ok(None);
    }
    match lockfile::Lock::acquire(&cfg.lockfile, std::process::id() as i32) {
        Ok(lock) => Ok(Some(lock)),
        Err(lockfile::LockError::Held { pid }) => {
            let pid = pid.map_or_else(|| "unknown".to_string(), |p| p.to_string());
            Err((
                exit_codes::OVERLAP,
                format!(
                    "LOCKFILE ERROR: Job {} already running (PID {pid}), overlap not allowed",
                    cfg.job_name
                ),
            ))
        }
        Err(lockfile::LockError::Io { path, error }) => Err((
            exit_codes::WRAPPER_ERROR,
            format!("LOCKFILE ERROR: SP_LOCKFILE {}: {error}", path.display()),
        )),
    }
}

/// Spool files of agents that died with their guardian (spool.rs), in the
/// places this job's daemon would put its own.
fn remove_stale_spools(cfg: &Config) {
    let temp = std::env::temp_dir();
    for path in spool::remove_stale(&[cfg.spool_dir.as_path(), temp.as_path()]) {
        log::info!(
            "removed {}, the spool file of an agent that is gone",
            path.display()
        );
    }
}

/// Everything that can fail before the job runs, in the process that will
/// supervise it: the log, the spawn. `lock` is held already.
fn start_job(
    cfg: &Config,
    user: Option<&child::UserInfo>,
    lock: Option<lockfile::Lock>,
) -> Result<Started, (i32, String)> {
    block_wrapper_signals();
    child::become_subreaper();
    let (log, log_error) = match logger::init(cfg) {
        Ok(handle) => (handle, None),
        Err(e) => (None, Some(e)),
    };
    let job = match child::spawn(cfg, user) {
        Ok(job) => job,
        Err(e) => {
            log::error!("cannot start the job: {e}");
            if let Some(lock) = lock {
                lock.release();
            }
            return Err((
                exit_codes::spawn_failure(&e),
                format!("sp_wrapper: cannot run /bin/sh for SP_COMMAND: {e}"),
            ));
        }
    };
    guardian::job_started(job.pid, job.spawned_at);
    JOB_PGID.store(job.pid, Ordering::Relaxed);
    install_panic_hook();
    log::info!(
        "starting job (pid {}, wrapper {VERSION}): {}",
        job.pid,
        cfg.command
    );
    Ok(Started {
        job,
        lock,
        log,
        log_error,
        at: Instant::now(),
    })
}

/// The signals the wrapper handles itself, on its signal thread.
fn wrapper_signals() -> libc::sigset_t {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// SIGTERM, SIGINT and SIGHUP are handled by the signal thread with
/// `sigwait`, so every thread must have them blocked. `child::spawn`
/// unblocks them in the job.
fn block_wrapper_signals() {
    let set = wrapper_signals();
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

fn spawn_signal_thread(events: SyncSender<Event>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let set = wrapper_signals();
            loop {
                let mut signal = 0;
                if unsafe { libc::sigwait(&set, &mut signal) } == 0
                    && events.send(Event::Signal(signal)).is_err()
                {
                    return;
                }
            }
        })?;
    Ok(())
}

/// With `panic = "abort"` nothing unwinds: kill the job's group, log the
/// panic, abort; the guardian then reports. A wrapper bug never leaves an
/// unsupervised job behind.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        // Kill first: logging may never return. A panic inside a log call
        // holds the logger's lock, and logging again from this thread would
        // wait on it forever, leaving a hung daemon (which the guardian
        // cannot tell from a live one) and the job unsupervised.
        let pgid = JOB_PGID.load(Ordering::Relaxed);
        if pgid > 0 {
            if JOB_LEADER_REAPED.load(Ordering::Relaxed) {
                child::signal_group_of_reaped(pgid, libc::SIGKILL);
            } else {
                child::signal_group(pgid, libc::SIGKILL);
            }
        }
        // So the log line is written by another thread, waited for briefly;
        // then the panic aborts the process and the guardian reports.
        let message = format!("sp_wrapper panicked: {info}; the job's process group was killed");
        let (done, logged) = std::sync::mpsc::channel();
        let writer = std::thread::Builder::new().spawn(move || {
            log::error!("{message}");
            let _ = done.send(());
        });
        if writer.is_ok() {
            let _ = logged.recv_timeout(PANIC_LOG_WAIT);
        }
    }));
}

/// The live `Effects`: the link thread, the job's process group, the log
/// file, our own stdout and stderr.
struct LiveEffects {
    link: LinkHandle,
    pgid: i32,
    /// The job's leader is reaped: its pid may be reused once the group empties.
    leader_reaped: bool,
    /// No process of the group is left: never signal that id again.
    group_gone: bool,
    log: Option<logger::LogHandle>,
}

impl Effects for LiveEffects {
    fn link(&mut self, command: LinkCommand) {
        self.link.send(command);
    }

    fn signal_group(&mut self, signal: i32) -> bool {
        if self.group_gone {
            false
        } else if self.leader_reaped {
            child::signal_group_of_reaped(self.pgid, signal)
        } else {
            child::signal_group(self.pgid, signal)
        }
    }

    fn tee(&mut self, stream: Stream, text: &str) {
        let _ = match stream {
            Stream::Stdout => std::io::stdout().write_all(text.as_bytes()),
            Stream::Stderr => std::io::stderr().write_all(text.as_bytes()),
        };
    }

    fn reopen_log(&mut self) {
        if let Some(log) = &self.log {
            log.reopen();
        }
    }

    fn start_sent(&mut self) {
        guardian::start_sent();
    }

    fn job_finished(&mut self, retcode: i32, exited_at: std::time::SystemTime) {
        guardian::job_finished(retcode, exited_at);
        self.leader_reaped = true;
        JOB_LEADER_REAPED.store(true, Ordering::Relaxed);
    }

    fn job_group_gone(&mut self) {
        guardian::job_group_gone();
        self.group_gone = true;
        JOB_PGID.store(0, Ordering::Relaxed);
    }

    fn settled(&mut self) {
        guardian::settled();
    }

    fn log_undelivered(&mut self, text: &str) {
        if let Some(log) = &self.log {
            if let Err(e) = log.append_raw(text) {
                log::error!(
                    "cannot write undelivered output to {}: {e}",
                    log.path().display()
                );
            }
        }
    }

    fn close_link(&mut self) {
        self.link.shutdown(LINK_CLOSE_BOUND);
    }
}

/// Wire the threads around the supervisor and run it to the end.
fn supervise(cfg: &Config, started: Started, foreground: bool) -> Outcome {
    let Started {
        job,
        lock,
        log,
        log_error,
        at,
    } = started;
    // Bounded: at most EVENT_QUEUE reads (64 KiB each) wait for the
    // supervisor, so memory stays within SP_BUFFER_MAX_MB plus a few MiB. A
    // full queue blocks a sender only while the supervisor catches up; the
    // supervisor itself never blocks on another thread, so this cannot deadlock.
    let (events, inbox) = sync_channel(EVENT_QUEUE);
    let frame_pool = frames::FramePool::default();
    // The machine id may need DNS: the link thread resolves it before its
    // first connection, while the readers and the supervisor already run.
    let machine_override = cfg.machine_id.clone();
    let resolve_machine =
        move || machine_id::resolve(machine_override.as_deref(), |var| std::env::var(var).ok()).0;
    let threads = readers::spawn_reader(Stream::Stdout, job.stdout, events.clone())
        .and_then(|_| match job.stderr {
            Some(stderr) => readers::spawn_reader(Stream::Stderr, stderr, events.clone()),
            None => Ok(()),
        })
        .and_then(|_| child::spawn_waiter(job.pid, events.clone()))
        .and_then(|_| spawn_signal_thread(events.clone()))
        .and_then(|_| {
            link::spawn_link(
                cfg.url.clone(),
                events.clone(),
                frame_pool.clone(),
                resolve_machine,
            )
        });
    let link = match threads {
        Ok(link) => link,
        Err(e) => {
            // Without its threads the wrapper cannot supervise: do not leave
            // the job running unobserved.
            log::error!("cannot start the wrapper's threads: {e}; killing the job");
            child::signal_group(job.pid, libc::SIGKILL);
            if !foreground {
                // Exit without telling the guardian we finished: it waits
                // until the group is gone, releases the lock and reports.
                std::process::exit(exit_codes::WRAPPER_ERROR);
            }
            if let Some(lock) = lock {
                lock.release();
            }
            return Outcome {
                retcode: exit_codes::WRAPPER_ERROR,
                delivered: false,
            };
        }
    };
    drop(events);
    let spool_candidates = spool::candidates(
        &cfg.spool_dir,
        &cfg.job_file_name(),
        std::process::id(),
        job.pid,
    );
    let settings = Settings {
        job_name: cfg.job_name.clone(),
        job_instance: cfg.job_instance.clone(),
        machine: String::new(),
        version: VERSION.to_string(),
        job_pid: job.pid,
        spawned_at: job.spawned_at,
        output_interval: cfg.output_interval,
    };
    // SP_BUFFER_MAX_MB is the whole budget: keep room beside the queued
    // batches for what else holds output (frames in flight, buffer pools,
    // queued reads), so peak memory stays near the bound.
    let batch_memory = cfg
        .buffer_limit
        .saturating_sub(OUTPUT_OVERHEAD)
        .max(1 << 20);
    let outbox = outbox::Outbox::new(batch_memory, spool_candidates, cfg.spool_limit);
    let effects = LiveEffects {
        link,
        pgid: job.pid,
        leader_reaped: false,
        group_gone: false,
        log,
    };
    let mut session = Session::new(settings, outbox, frame_pool, at);
    if let Some(limit) = cfg.output_limit {
        let path = cfg.leftout_path(std::process::id());
        session =
            session.with_output_cap(output_cap::OutputCap::new(limit, cfg.leftout_limit, path));
    }
    let lifecycle = JobLifecycle::new(cfg.timeout, !cfg.separate_streams, at);
    let mut supervisor = Supervisor::new(effects, session, lifecycle, foreground);
    if let Some(error) = log_error {
        supervisor.handle(
            Event::Output {
                stream: Stream::Stdout,
                text: format!("[WRAPPER LOG ERROR] {error}\n"),
            },
            at,
        );
    }
    log::info!("server {}", cfg.url.raw);
    let outcome = supervisor.run(inbox);
    log::info!(
        "wrapper done (retcode {}, delivered: {})",
        outcome.retcode,
        outcome.delivered
    );
    if let Some(lock) = lock {
        lock.release();
    }
    outcome
}
