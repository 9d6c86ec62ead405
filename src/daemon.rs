//! The daemon: the process that runs the job and supervises it (with
//! `--foreground`, the agent itself, undetached). It opens the log, spawns
//! the job in its own process group, starts the threads (readers, waiter,
//! signals, link) around the supervisor, and runs the supervisor to the end;
//! its panic hook kills the job's group, so a wrapper bug never leaves an
//! unsupervised job behind.

use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::exit_codes::LaunchError;
use crate::launcher::{Launch, StatusReporter};
use crate::messages::{Event, Stream};
use crate::os::threads::SpawnDetached;
use crate::os::{child, lockfile};
use crate::report::spool;
use crate::run::job::JobLifecycle;
use crate::run::live::{self, JOB_PGID, LiveEffects};
use crate::run::readers;
use crate::run::session::Outcome;
use crate::run::supervisor::Supervisor;
use crate::wire::frames::FramePool;
use crate::wire::protocol::VERSION;
use crate::{exit_codes, launcher, logger, to_guardian};

/// How long a panic waits for its log line before the process aborts.
const PANIC_LOG_WAIT: Duration = Duration::from_millis(500);

/// `--foreground`: take the lock, run the job; its result is our exit code.
pub fn run_in_foreground(launch: &Launch) -> Result<i32, LaunchError> {
    // `detach` does this for the guardian and daemon; here the job must not
    // inherit our caller's descriptors either.
    launcher::close_inherited_fds(&[]);
    let lock = lockfile::acquire_for_job(&launch.cfg)?;
    let started = start_job(launch, lock)?;
    remove_stale_spools(&launch.cfg);
    Ok(supervise(launch, started, true).retcode)
}

/// The detached daemon (the guardian's child, holding the lock with it):
/// start the job, tell the launcher how that went, supervise.
pub fn run_detached(
    launch: &Launch,
    lock: Option<lockfile::Lock>,
    reporter: StatusReporter,
) -> Result<i32, LaunchError> {
    let started = match start_job(launch, lock) {
        Ok(started) => started,
        Err(error) => {
            reporter.failed(&error);
            return Err(error);
        }
    };
    reporter.started(started.job.pid);
    remove_stale_spools(&launch.cfg);
    // (The guardian was told the run is settled as soon as it was,
    // before the link closed and the lock was released.)
    supervise(launch, started, false);
    Ok(exit_codes::SUCCESS)
}

/// What `start_job` hands to `supervise`.
struct Started {
    job: child::Job,
    lock: Option<lockfile::Lock>,
    log: Option<logger::LogHandle>,
    log_error: Option<String>,
    at: Instant,
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
fn start_job(launch: &Launch, lock: Option<lockfile::Lock>) -> Result<Started, LaunchError> {
    let cfg = &launch.cfg;
    block_wrapper_signals();
    child::become_subreaper();
    let (log, log_error) = match logger::init(cfg) {
        Ok(handle) => (handle, None),
        Err(e) => (None, Some(e)),
    };
    let job = match child::spawn(cfg, launch.user.as_ref()) {
        Ok(job) => job,
        Err(e) => {
            log::error!("cannot start the job: {e}");
            if let Some(lock) = lock {
                lock.release();
            }
            return Err(LaunchError::CannotRunShell(e));
        }
    };
    to_guardian::job_started(job.pid, job.spawned_at);
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
        .spawn_detached(move || {
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
            child::signal_job_group(pgid, libc::SIGKILL);
        }
        // So the log line is written by another thread, waited for briefly;
        // then the panic aborts the process and the guardian reports.
        let message = format!("sp_wrapper panicked: {info}; the job's process group was killed");
        let (done, logged) = crate::os::oneshot::oneshot();
        let writer = std::thread::Builder::new().spawn_detached(move || {
            log::error!("{message}");
            done.send(());
        });
        if writer.is_ok() {
            let _ = logged.recv_timeout(PANIC_LOG_WAIT);
        }
    }));
}

/// Wire the threads around the supervisor and run it to the end.
fn supervise(launch: &Launch, started: Started, foreground: bool) -> Outcome {
    let (cfg, timings) = (&launch.cfg, &launch.timings);
    let Started {
        job,
        lock,
        log,
        log_error,
        at,
    } = started;
    let (events, inbox) = live::event_channel();
    let frame_pool = FramePool::default();
    let threads = readers::spawn_reader(Stream::Stdout, job.stdout, events.clone())
        .and_then(|_| match job.stderr {
            Some(stderr) => readers::spawn_reader(Stream::Stderr, stderr, events.clone()),
            None => Ok(()),
        })
        .and_then(|_| child::spawn_waiter(job.pid, events.clone()))
        .and_then(|_| spawn_signal_thread(events.clone()))
        .and_then(|_| live::spawn_link(cfg, timings, None, events.clone(), frame_pool.clone()));
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
    let outbox = live::outbox(cfg, spool_candidates);
    let session = live::session(
        cfg,
        timings,
        (job.pid, job.spawned_at),
        outbox,
        frame_pool,
        at,
    );
    let session = live::with_output_cap(cfg, session);
    let effects = LiveEffects::for_job(link, job.pid, log);
    let lifecycle = JobLifecycle::new(cfg.timeout, !cfg.separate_streams, timings, at);
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
