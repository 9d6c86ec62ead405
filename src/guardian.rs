//! The guardian: a small process (one thread while the daemon lives) that
//! outlives the daemon, so that the agent's own death (SIGKILL, the OOM
//! killer, a crash or a panic) never leaves the job running unsupervised, the
//! overlap lock open to a second run while the job runs, or the server's
//! record open forever.
//!
//! It is the launcher's detached child (`launcher.rs`). It takes the overlap
//! lock, becomes the subreaper of its descendants, forks the daemon (which
//! inherits the lock's open file, so the lock stays held as long as either
//! process lives) and then blocks in `waitid(WNOWAIT)` on the daemon: no
//! thread, no timer, no wake-up while the daemon lives. It ignores SIGHUP,
//! SIGINT and SIGTERM (an operator's `pkill -HUP sp_wrapper` or `pkill
//! sp_wrapper` is for the daemon, which handles them) and, like the daemon,
//! SIGPIPE.
//!
//! The daemon tells it what it needs over a close-on-exec, non-blocking pipe
//! (`to_guardian.rs`): each fact once, one short line, before the daemon logs
//! or acts on it, so that a daemon killed at any instant has told the
//! guardian all it has done, and the pipe never fills.
//! The guardian reads them once the daemon is gone, before reaping it: until
//! then the dead daemon is a zombie whose pid still exists, so another
//! start's sweep of stale spool files (`spool::remove_stale`) leaves its
//! spool alone until it is opened.
//!
//! - The daemon said `settled` (the result is recorded, refused, or in the
//!   log), or never started the job (it told the launcher why): exit,
//!   reporting nothing.
//! - Otherwise the agent died with the job running or its result not
//!   delivered. Unless the daemon said the group is gone, the guardian
//!   SIGKILLs the job's process group at once and waits until no process of
//!   it is left (reaping the orphans it inherits as subreaper; on Linux
//!   before 3.4 init reaps them and `kill(-pgid, 0)` tells); once the job's
//!   leader is known reaped, a live process with its pid means the id was
//!   reused and the group is gone (`child::signal_group_of_reaped`). It
//!   releases the lock and reports the run through the daemon's own session
//!   code (`live.rs`: the same link thread, outbox and deadlines), under the
//!   daemon's machine id: `start` unless the server had ACKed the daemon's,
//!   the output the dead daemon had read and the server had not ACKed (its
//!   spool file, a write-ahead journal, becomes the outbox's), a line of
//!   output saying what happened, and `complete` with the job's own retcode
//!   when its main process had exited, else `exit_codes::AGENT_DIED`. After
//!   the daemon's `complete` went out, only that `complete` again. What the
//!   server does not take within the delivery window goes to the log.
//!
//! `--foreground` has no guardian: there the agent is the caller's child.

use std::fs::File;
use std::io::{self, Read};
use std::time::{Duration, Instant, SystemTime};

use crate::config::Config;
use crate::exit_codes::LaunchError;
use crate::messages::Stream;
use crate::os::lockfile::Lock;
use crate::os::{child, pipe, regular_file};
use crate::report::spool;
use crate::run::job::{Finished, JobLifecycle};
use crate::run::live::{self, LiveEffects};
use crate::run::supervisor::Supervisor;
use crate::timings::Timings;
use crate::to_guardian::Told;
use crate::wire::frames::FramePool;
use crate::{exit_codes, launcher, logger, to_guardian};

/// Longest pause between looks at the group while it is dying; later (a
/// process stuck past `Timings::group_wait`, the lock still held for it),
/// `GROUP_RECHECK_SLOW`.
const GROUP_RECHECK: Duration = Duration::from_millis(20);
const GROUP_RECHECK_SLOW: Duration = Duration::from_secs(1);

/// What a process is after `fork_daemon`.
pub enum Role {
    /// The guardian: `watch` the daemon, then exit.
    Guardian(Guardian),
    /// The daemon: start the job (both processes now hold the lock).
    Daemon(Option<Lock>),
}

pub struct Guardian {
    daemon: libc::pid_t,
    messages: File,
    lock: Option<Lock>,
}

/// In the detached child, holding the lock: fork the daemon. Must be called
/// while single-threaded. On failure the lock is released.
pub fn fork_daemon(lock: Option<Lock>) -> Result<Role, LaunchError> {
    // Orphans of the job come to us once the daemon is gone (Linux 3.4+).
    child::become_subreaper();
    let (read_end, write_end) = match pipe::cloexec(libc::O_NONBLOCK) {
        Ok(ends) => ends,
        Err(e) => {
            release(lock);
            return Err(LaunchError::ForkFailed(e));
        }
    };
    match launcher::fork() {
        Err(e) => {
            release(lock);
            Err(LaunchError::ForkFailed(e))
        }
        Ok(0) => {
            drop(read_end);
            // SIG_IGN would be inherited; the daemon handles these itself.
            set_signals(libc::SIG_DFL);
            to_guardian::set_pipe(write_end);
            Ok(Role::Daemon(lock))
        }
        Ok(daemon) => {
            drop(write_end);
            set_signals(libc::SIG_IGN);
            Ok(Role::Guardian(Guardian {
                daemon,
                messages: File::from(read_end),
                lock,
            }))
        }
    }
}

fn release(lock: Option<Lock>) {
    if let Some(lock) = lock {
        lock.release();
    }
}

/// SIGHUP, SIGINT and SIGTERM. (SIGPIPE stays ignored in both processes, as
/// Rust's runtime set it: a write to a dead peer must be EPIPE, not death.)
fn set_signals(disposition: libc::sighandler_t) {
    for signal in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM] {
        unsafe { libc::signal(signal, disposition) };
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => "a signal",
    }
}

/// How the daemon ended, from its wait status: "died of signal 9 (SIGKILL)".
fn how_it_ended(status: i32) -> String {
    if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        format!("died of signal {signal} ({})", signal_name(signal))
    } else if libc::WIFEXITED(status) {
        format!(
            "exited with status {} before finishing",
            libc::WEXITSTATUS(status)
        )
    } else {
        format!("ended (wait status {status:#x})")
    }
}

/// The job's process group, as far as the guardian knows it.
struct JobGroup {
    pgid: i32,
    /// Its leader (pid = pgid) was reaped, by the daemon or by us: from then
    /// on a live process with that pid means the id was reused.
    leader_reaped: bool,
    /// No process of it is left (the daemon said so, or we saw it): it is
    /// never signalled again, since its id may be an unrelated group's.
    gone: bool,
}

impl JobGroup {
    /// Signal the group; `false` when no process of it is left.
    fn signal(&mut self, signal: i32) -> bool {
        if self.gone {
            return false;
        }
        let alive = if self.leader_reaped {
            child::signal_group_of_reaped(self.pgid, signal)
        } else {
            child::signal_group(self.pgid, signal)
        };
        self.gone = !alive;
        alive
    }

    /// Reap whatever children are dead (orphans of the job, as subreaper),
    /// noting the leader among them.
    fn reap_orphans(&mut self) {
        let mut status = 0;
        loop {
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            if pid == self.pgid {
                self.leader_reaped = true;
            }
        }
    }

    /// SIGKILL the group until no process of it is left (zombies count
    /// until reaped), or until `deadline`. `Some(when it was found gone)`.
    fn kill_until_gone(&mut self, deadline: Option<Instant>) -> Option<SystemTime> {
        let longest = if deadline.is_some() {
            GROUP_RECHECK
        } else {
            GROUP_RECHECK_SLOW
        };
        let mut pause = Duration::from_millis(1);
        loop {
            self.reap_orphans();
            // Again each time: a process forked while the first SIGKILL was
            // being delivered must not survive it.
            if !self.signal(libc::SIGKILL) {
                return Some(crate::os::clock::now());
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return None;
            }
            let nap = deadline.map_or(pause, |d| pause.min(d - now));
            std::thread::sleep(nap);
            pause = (pause * 2).min(longest);
        }
    }
}

/// Wait for our child `pid` to end, reaping it: its wait status.
fn reap(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break; // ECHILD cannot happen: it is our child
        }
    }
    status
}

impl Guardian {
    /// Wait for the daemon; if it died before its run was settled, take
    /// over. Returns the guardian's exit code (nobody waits for it).
    pub fn watch(self, cfg: &Config, timings: &Timings) -> i32 {
        let Guardian {
            daemon,
            mut messages,
            lock,
        } = self;
        // Wait without reaping (WNOWAIT): while the dead daemon is a zombie
        // its pid exists, and a concurrent start's sweep keeps its spool
        // file for us (spool::remove_stale); we reap it once that is open.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        while unsafe {
            libc::waitid(
                libc::P_PID,
                daemon as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        } < 0
        {
            if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break; // ECHILD cannot happen: the daemon is our child
            }
        }
        // The daemon is gone, so the pipe holds every line it wrote. (Its
        // end is non-blocking and close-on-exec: EOF, or at worst EAGAIN
        // if a child of it has not finished exec'ing yet.)
        let mut said = Vec::with_capacity(128);
        let mut chunk = [0u8; 128];
        loop {
            match messages.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => said.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let told = Told::parse(&String::from_utf8_lossy(&said));
        match told.job {
            Some(job) if !told.settled => take_over(cfg, timings, daemon, job, &told, lock),
            // Settled, or no job was started (the launcher was told why).
            _ => {
                reap(daemon);
                release(lock);
            }
        }
        exit_codes::SUCCESS
    }
}

fn take_over(
    cfg: &Config,
    timings: &Timings,
    daemon: libc::pid_t,
    (job_pid, spawned_at): (i32, SystemTime),
    told: &Told,
    lock: Option<Lock>,
) {
    let mut group = JobGroup {
        pgid: job_pid,
        leader_reaped: told.job_exited.is_some(),
        gone: told.group_gone,
    };
    // The job's main process may have exited without the daemon seeing it:
    // then it is our zombie now (we are the subreaper), its status ours to
    // read. Its exit time is not known; it was at or before now.
    // Not a death by SIGPIPE seen only now: the job's output pipe closed
    // with the daemon, so the job's next write killed it: our death, not
    // its own end (a SIGPIPE while the daemon lived would have been told).
    let job_exited = told.job_exited.or_else(|| {
        leader_exit_status(job_pid)
            .filter(|&status| {
                !(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGPIPE)
            })
            .map(|status| (status, crate::os::clock::now()))
    });
    // The job's own result whenever its main process had ended; `AGENT_DIED`
    // only for a job that was still running (and is killed now).
    let job_result = job_exited
        .map(|(status, exited_at)| (exit_codes::job_retcode(status, told.kill), exited_at));
    // A main process the daemon did not reap (it may have told its exit and
    // died before the reap) is our zombie: reaped first, so that a process
    // with its pid can only mean the id was reused. (Only it: the dead
    // daemon stays a zombie until its spool is open, see `watch`.)
    if job_exited.is_some() {
        let mut status = 0;
        if unsafe { libc::waitpid(job_pid, &mut status, libc::WNOHANG) } == job_pid {
            group.leader_reaped = true;
        }
    }
    let job_was_running = group.signal(libc::SIGKILL);
    // Opened before the dead daemon is reaped (see `watch`); an open file
    // outlives its name.
    let spool = adopt_spool(cfg, daemon, job_pid);
    let how = how_it_ended(reap(daemon));
    let gone_at = match job_exited {
        // The daemon saw the group empty after the job's exit: the run
        // ended then.
        Some((_, exited_at)) if told.group_gone => Some(exited_at),
        // SIGKILL is immediate unless a process is in uninterruptible
        // sleep; the lock stays held until the group is gone, however long.
        _ => group.kill_until_gone(Some(Instant::now() + timings.group_wait)),
    };
    let log = logger::init(cfg).ok().flatten();
    let job_retcode = job_result.map(|(retcode, _)| retcode);
    let what = what_happened(
        job_retcode,
        job_was_running,
        gone_at.is_none().then_some(timings.group_wait),
    );
    log::error!(
        "guardian: the agent (pid {daemon}) {how} while supervising the job (pid {job_pid}); {what}"
    );
    let mut lock = lock;
    if gone_at.is_some() {
        release(lock.take());
    }
    let (retcode, ended_at) = job_result.unwrap_or((
        exit_codes::AGENT_DIED,
        // The end of the run is when its last process was gone.
        gone_at.unwrap_or_else(crate::os::clock::now),
    ));
    // The record says what happened when it is not the job's own: a retcode
    // that is ours, or output that may be missing. A daemon that had sent
    // `complete` had every byte ACKed: the same `complete` again is all.
    let output_may_be_missing =
        !told.complete_sent && spool.as_ref().is_none_or(|adopted| adopted.memory_only);
    let line = (job_result.is_none() || output_may_be_missing)
        .then(|| format!("\n[sp_wrapper: the agent (pid {daemon}) {how}; {what}]\n"));
    let recorded = report(
        cfg,
        timings,
        Report {
            job: (job_pid, spawned_at),
            machine: told.machine.clone(),
            start_acked: told.start_acked,
            spool,
            line,
            retcode,
            ended_at,
        },
        log,
    );
    if recorded {
        log::info!("guardian: the server recorded retcode {retcode} for this run");
    }
    if let Some(lock) = lock {
        // Held until the last process of the job is gone, however long.
        group.kill_until_gone(None);
        log::info!("guardian: the job's last process is gone; lock released");
        lock.release();
    }
}

/// The wait status of the job's main process if it has exited and is our
/// zombie, unreaped (the daemon died before it could reap it). Not reaped
/// here: while it is a zombie its pid, the group's id, cannot be reused.
fn leader_exit_status(pid: i32) -> Option<i32> {
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) };
    // (WNOHANG with nothing exited yet leaves si_pid 0.)
    (rc == 0 && unsafe { info.si_pid() } == pid)
        .then(|| child::wait_status(info.si_code, unsafe { info.si_status() }))
}

/// The job's side of the story, for the log and the output line.
/// `alive_after`: processes of it were still alive that long after the kill.
fn what_happened(
    job_retcode: Option<i32>,
    was_running: bool,
    alive_after: Option<Duration>,
) -> String {
    let mut parts = Vec::new();
    if let Some(retcode) = job_retcode {
        parts.push(format!("the job had ended with retcode {retcode}"));
    }
    if was_running {
        parts.push("the job's process group was killed".to_string());
    } else if job_retcode.is_none() {
        parts.push("no process of the job was left".to_string());
    }
    if let Some(wait) = alive_after {
        parts.push(format!(
            "processes of it were still alive {} s later",
            wait.as_secs()
        ));
    }
    parts.join("; ")
}

/// The dead daemon's spool file (its journal), if it left one of its own:
/// only a regular file of our user with no other name. A file a local user
/// planted at the predictable name in /tmp, or a hard link to someone else's
/// file (no fs.protected_hardlinks before 3.6), must not reach the server or
/// the log.
fn adopt_spool(cfg: &Config, daemon: libc::pid_t, job_pid: i32) -> Option<spool::Adopted> {
    let rules = regular_file::Rules {
        single_link: true,
        owned_by_us: true,
        ..regular_file::Rules::default()
    };
    spool::candidates(&cfg.spool_dir, &cfg.job_file_name(), daemon as u32, job_pid)
        .into_iter()
        .find_map(|path| {
            let mut options = std::fs::OpenOptions::new();
            options.read(true).write(true);
            let (file, _) = regular_file::open(&path, &mut options, rules).ok()?;
            spool::Spool::adopt(file, &path)
        })
}

/// What the guardian reports of a dead daemon's run.
struct Report {
    job: (i32, SystemTime),
    /// The machine id the daemon reported under, if it had one.
    machine: Option<String>,
    /// The server ACKed the daemon's `start`: never send another (a second
    /// one resets the recorded output). Before that ACK no output went out,
    /// so a repeated `start` loses nothing.
    start_acked: bool,
    spool: Option<spool::Adopted>,
    /// A line of output saying what happened, after the spooled output.
    line: Option<String>,
    retcode: i32,
    ended_at: SystemTime,
}

/// Report the dead daemon's run through the daemon's own session code
/// (`live.rs`): `start` unless the daemon's was ACKed, the output in its
/// journal the server had not ACKed (or a line saying what may be missing),
/// the line, then `complete` with the retcode and `ended_at`. Whatever is not delivered within the session's delivery
/// window goes to the log. `true` when the server recorded the result.
fn report(cfg: &Config, timings: &Timings, report: Report, log: Option<logger::LogHandle>) -> bool {
    let (events, inbox) = live::event_channel();
    let frames = FramePool::default();
    let link = match live::spawn_link(cfg, timings, report.machine, events, frames.clone()) {
        Ok(link) => link,
        Err(e) => {
            log::error!("guardian: cannot start the link thread to report: {e}");
            return false;
        }
    };
    let now = Instant::now();
    let mut outbox = live::outbox(cfg, Vec::new());
    match report.spool {
        Some(adopted) => {
            log::info!(
                "guardian: {} bytes of output in {} the server had not acknowledged go to it",
                adopted.pending,
                adopted.spool.path().display()
            );
            outbox.adopt_spool(
                adopted,
                "\n[sp_wrapper: the agent died; output it held only in memory (its spool \
                 file could not be written) is missing here]\n",
            );
        }
        // (Only when the record says anything: not after the daemon's `complete`.)
        None if report.line.is_some() => outbox.push(
            Stream::Stdout,
            "\n[sp_wrapper: the agent died without a spool file; output the server had not \
             acknowledged, if any, is missing here]\n",
        ),
        None => {}
    }
    let mut session = live::session(cfg, timings, report.job, outbox, frames, now);
    if report.start_acked {
        session = session.with_start_acked();
    }
    if let Some(line) = &report.line {
        session.on_output(Stream::Stdout, line, now);
    }
    let finished = Finished {
        retcode: report.retcode,
        at: now,
        exited_at: report.ended_at,
    };
    session.on_job_finished(finished, now);
    let effects = LiveEffects::for_ended_job(link, log);
    let supervisor = Supervisor::new(effects, session, JobLifecycle::ended(finished), false);
    supervisor.run(inbox).delivered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jobs_side_is_described() {
        assert_eq!(
            what_happened(None, true, None),
            "the job's process group was killed"
        );
        assert_eq!(
            what_happened(None, false, None),
            "no process of the job was left"
        );
        assert_eq!(
            what_happened(Some(0), false, None),
            "the job had ended with retcode 0"
        );
        assert_eq!(
            what_happened(Some(3), true, Some(Duration::from_secs(5))),
            "the job had ended with retcode 3; the job's process group was killed; \
             processes of it were still alive 5 s later"
        );
    }

    #[test]
    fn the_daemons_end_is_described() {
        assert_eq!(how_it_ended(libc::SIGKILL), "died of signal 9 (SIGKILL)");
        assert_eq!(how_it_ended(libc::SIGABRT), "died of signal 6 (SIGABRT)");
        assert_eq!(
            how_it_ended(3 << 8),
            "exited with status 3 before finishing"
        );
    }
}
