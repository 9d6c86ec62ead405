//! The supervisor wired to the real world, as both processes that report a
//! run use it: the daemon (the job it runs, `daemon.rs`) and the guardian
//! (the run of a daemon that died, `guardian.rs`). One protocol client: the
//! same link thread, session, outbox and deadlines for both.
//!
//! It owns `LiveEffects` (the `Effects` on the link thread, the job's process
//! group, the log file, our stdout and stderr) and the pieces built from the
//! configuration: the bounded event channel, the link thread with its
//! machine-id resolution, the outbox within `SP_BUFFER_MAX_MB`, the session.

use std::io::Write;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Instant, SystemTime};

use crate::config::Config;
use crate::messages::{Event, LinkCommand, Stream};
use crate::os::child;
use crate::report::outbox::Outbox;
use crate::report::output_cap;
use crate::run::effects::Effects;
use crate::run::session::{Session, Settings};
use crate::timings::Timings;
use crate::wire::frames::FramePool;
use crate::wire::link::LinkHandle;
use crate::wire::{link, protocol};
use crate::{logger, minion, to_guardian};

/// Memory beside the outbox's batches that also holds output: up to 4 MiB of
/// frames in flight (`pacing::MAX_IN_FLIGHT_BYTES`), recycled frame and batch
/// buffers, and up to `EVENT_QUEUE` reads of 64 KiB.
const OUTPUT_OVERHEAD: usize = 6 << 20;

/// Events that may wait for the supervisor. Bounded: at most this many reads
/// (64 KiB each) wait, so memory stays within SP_BUFFER_MAX_MB plus a few
/// MiB. A full queue blocks a sender only while the supervisor catches up;
/// the supervisor itself never blocks on another thread, so this cannot
/// deadlock.
const EVENT_QUEUE: usize = 32;

/// The job's process group, for the daemon's panic hook (0 = no job yet, or
/// its group is known to be gone: the id may be another process's by now).
pub static JOB_PGID: AtomicI32 = AtomicI32::new(0);

/// The channel every thread sends its `Event`s to the supervisor on.
pub fn event_channel() -> (SyncSender<Event>, Receiver<Event>) {
    sync_channel(EVENT_QUEUE)
}

/// Start the link thread to `SP_SERVER_URL`. The machine id may need DNS:
/// the link thread resolves it before its first connection, while the
/// supervisor already runs; `known_machine` (the id a dead daemon reported
/// under) is used as it is instead.
pub fn spawn_link(
    cfg: &Config,
    timings: &Timings,
    known_machine: Option<String>,
    events: SyncSender<Event>,
    frames: FramePool,
) -> std::io::Result<LinkHandle> {
    let machine_override = known_machine.or_else(|| cfg.machine_id.clone());
    let resolve_machine =
        move || minion::id::resolve(machine_override.as_deref(), &|var| std::env::var(var).ok()).0;
    link::spawn_link(cfg.url.clone(), *timings, events, frames, resolve_machine)
}

/// The outbox: SP_BUFFER_MAX_MB is the whole budget, so room is kept beside
/// the queued batches for what else holds output (frames in flight, buffer
/// pools, queued reads), and peak memory stays near the bound.
pub fn outbox(cfg: &Config, spool_candidates: Vec<std::path::PathBuf>) -> Outbox {
    let batch_memory = cfg
        .buffer_limit
        .saturating_sub(OUTPUT_OVERHEAD)
        .max(1 << 20);
    Outbox::new(batch_memory, spool_candidates, cfg.spool_limit)
}

/// The session that reports the job `job_pid`, spawned at `spawned_at`.
pub fn session(
    cfg: &Config,
    timings: &Timings,
    (job_pid, spawned_at): (i32, SystemTime),
    outbox: Outbox,
    frames: FramePool,
    at: Instant,
) -> Session {
    let settings = Settings {
        job_name: cfg.job_name.clone(),
        job_instance: cfg.job_instance.clone(),
        machine: String::new(),
        version: protocol::VERSION.to_string(),
        job_pid,
        spawned_at,
        output_interval: cfg.output_interval,
        timings: *timings,
    };
    Session::new(settings, outbox, frames, at)
}

/// `SP_OUTPUT_MAX_MB`, unless 0: what passes it goes to the `.leftout` file.
pub fn with_output_cap(cfg: &Config, session: Session) -> Session {
    match cfg.output_limit {
        Some(limit) => {
            let path = cfg.leftout_path(std::process::id());
            let job_bound = output_cap::JobBound {
                job: cfg.job_file_name(),
                bytes: cfg.leftout_job_limit,
                files: cfg.leftout_job_files,
            };
            let cap = output_cap::OutputCap::new(limit, cfg.leftout_limit, path, job_bound);
            session.with_output_cap(cap)
        }
        None => session,
    }
}

/// The live `Effects`.
pub struct LiveEffects {
    link: LinkHandle,
    pgid: i32,
    /// No process of the group is left: never signal that id again.
    group_gone: bool,
    log: Option<logger::LogHandle>,
}

impl LiveEffects {
    /// For the daemon: the job `pgid` runs.
    pub fn for_job(link: LinkHandle, pgid: i32, log: Option<logger::LogHandle>) -> Self {
        LiveEffects {
            link,
            pgid,
            group_gone: false,
            log,
        }
    }

    /// For the guardian: the job's group is gone or in the guardian's own
    /// hands (it kills it and holds the lock until it is gone), never the
    /// session's.
    pub fn for_ended_job(link: LinkHandle, log: Option<logger::LogHandle>) -> Self {
        LiveEffects {
            link,
            pgid: 0,
            group_gone: true,
            log,
        }
    }
}

impl Effects for LiveEffects {
    fn link(&mut self, command: LinkCommand) {
        self.link.send(command);
    }

    fn signal_group(&mut self, signal: i32) -> bool {
        !self.group_gone && child::signal_job_group(self.pgid, signal)
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

    // The guardian's calls below are no-ops outside a daemon with a guardian.

    fn machine_identified(&mut self, machine: &str) {
        to_guardian::machine_identified(machine);
    }

    fn start_acked(&mut self) {
        to_guardian::start_acked();
    }

    fn complete_sent(&mut self) {
        to_guardian::complete_sent();
    }

    fn job_group_gone(&mut self) {
        to_guardian::job_group_gone();
        self.group_gone = true;
        JOB_PGID.store(0, Ordering::Relaxed);
    }

    fn settled(&mut self) {
        to_guardian::settled();
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
        self.link.shutdown();
    }
}
