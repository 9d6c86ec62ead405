//! The guardian: a small single-threaded process that outlives the daemon,
//! so that the agent's own death (SIGKILL, the OOM killer, a crash or a
//! panic) never leaves the job running unsupervised, the overlap lock open
//! to a second run while the job runs, or the server's record open forever.
//!
//! It is the launcher's detached child (`daemon.rs`). It takes the overlap
//! lock, becomes the subreaper of its descendants, forks the daemon (which
//! inherits the lock's open file, so the lock stays held as long as either
//! process lives) and then blocks in `waitpid` on the daemon: no thread, no
//! timer, no wake-up while the daemon lives. It ignores SIGHUP, SIGINT and
//! SIGTERM (an operator's `pkill -HUP sp_wrapper` or `pkill sp_wrapper` is
//! for the daemon, which handles them) and, like the daemon, SIGPIPE.
//!
//! The daemon tells it five facts over a close-on-exec, non-blocking pipe,
//! one short line each (`job_started`, `start_sent`, `job_finished`,
//! `job_group_gone`, `settled`), each before it logs or acts on it, so that
//! a daemon killed at any instant has told the guardian all it has done.
//! The guardian reads them once the daemon is gone (they fit in the pipe),
//! before reaping it: until then the dead daemon is a zombie whose pid
//! still exists, so another start's sweep of stale spool files
//! (`spool::remove_stale`) leaves its spool alone until it is opened.
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
//!   copies the dead daemon's spool file into the job's log and removes it,
//!   releases the lock, and reports a result over a fresh WebSocket
//!   session: `exit_codes::AGENT_DIED` with a line of output saying what
//!   happened, retried for `REPORT_WINDOW`, then noted in the log.
//!
//! `--foreground` has no guardian: there the agent is the caller's child.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::IntoRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tungstenite::{Message, WebSocket};

use crate::config::Config;
use crate::exit_codes;
use crate::lockfile::Lock;
use crate::messages::{AckKind, Inbound, Stream};
use crate::protocol::Encoder;
use crate::{child, daemon, link, logger, machine_id, pipe, spool};

/// How long the group may take to die before the guardian reports anyway
/// (SIGKILL is immediate unless a process is in uninterruptible sleep); the
/// lock stays held until the group is gone, however long that takes.
const GROUP_WAIT: Duration = Duration::from_secs(5);
/// Longest pause between looks at the group while it is dying; later (a
/// process stuck past `GROUP_WAIT`, the lock still held for it),
/// `GROUP_RECHECK_SLOW`.
const GROUP_RECHECK: Duration = Duration::from_millis(20);
const GROUP_RECHECK_SLOW: Duration = Duration::from_secs(1);
/// Keep trying to report for this long (the daemon's own delivery window).
const REPORT_WINDOW: Duration = Duration::from_secs(60);
/// Between report attempts, as the link's reconnects.
const REPORT_RETRY: Duration = link::RETRY_INTERVAL;
/// For each answer of the server, but `complete`'s.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The server waits up to 30 s for the job state before answering `complete`.
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(35);

/// The daemon's end of the pipe to its guardian (-1: no guardian). Set once,
/// in the daemon before it has threads; written from its main thread.
static TO_GUARDIAN: AtomicI32 = AtomicI32::new(-1);

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
pub fn fork_daemon(lock: Option<Lock>) -> io::Result<Role> {
    // Orphans of the job come to us once the daemon is gone (Linux 3.4+).
    child::become_subreaper();
    let (read_end, write_end) = match pipe::cloexec(libc::O_NONBLOCK) {
        Ok(ends) => ends,
        Err(e) => {
            release(lock);
            return Err(e);
        }
    };
    match daemon::fork() {
        Err(e) => {
            release(lock);
            Err(e)
        }
        Ok(0) => {
            drop(read_end);
            // SIG_IGN would be inherited; the daemon handles these itself.
            set_signals(libc::SIG_DFL);
            TO_GUARDIAN.store(write_end.into_raw_fd(), Ordering::Relaxed);
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

/// In the daemon: tell the guardian (a no-op without one).
fn tell(message: &str) {
    let fd = TO_GUARDIAN.load(Ordering::Relaxed);
    if fd >= 0 {
        // A few bytes, so one atomic write; a dead guardian means EPIPE
        // (SIGPIPE is ignored), which changes nothing for the daemon.
        unsafe { libc::write(fd, message.as_ptr().cast(), message.len()) };
    }
}

/// The job runs: its pid (= its process group) and when it was spawned.
pub fn job_started(pid: i32, at: SystemTime) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    tell(&format!(
        "J {pid} {} {}\n",
        since.as_secs(),
        since.subsec_nanos()
    ));
}

/// Our `start` went out on a connection: the server may hold a record (and
/// output) that a second `start` would reset. Said when it is sent, not when
/// it is ACKed: the server records `start` on receipt, and a daemon killed
/// between that and reading the ACK must not make us reset the record.
pub fn start_sent() {
    tell("S\n");
}

/// The job's result is fixed and its main process (the group's leader)
/// reaped, at `exited_at`: if the daemon dies delivering it, the guardian's
/// line says what it was.
pub fn job_finished(retcode: i32, exited_at: SystemTime) {
    let since = exited_at.duration_since(UNIX_EPOCH).unwrap_or_default();
    tell(&format!(
        "F {retcode} {} {}\n",
        since.as_secs(),
        since.subsec_nanos()
    ));
}

/// No process of the job's group is left: its id may be reused, so the
/// guardian must never signal it.
pub fn job_group_gone() {
    tell("G\n");
}

/// The run's end is settled: the result is recorded (or refused), or written
/// to the log after the delivery window. Nothing is left for the guardian.
pub fn settled() {
    tell("D\n");
}

/// What the daemon told its guardian.
#[derive(Debug, Default, PartialEq)]
struct Told {
    job: Option<(i32, SystemTime)>,
    start_sent: bool,
    /// The job's retcode and when its main process exited.
    job_ended: Option<(i32, SystemTime)>,
    group_gone: bool,
    settled: bool,
}

impl Told {
    fn parse(text: &str) -> Told {
        let mut told = Told::default();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            match fields.as_slice() {
                ["J", pid, secs, nanos] => {
                    if let (Ok(pid), Ok(secs), Ok(nanos)) =
                        (pid.parse::<i32>(), secs.parse(), nanos.parse())
                    {
                        if pid > 0 {
                            let at = UNIX_EPOCH + Duration::new(secs, nanos);
                            told.job = Some((pid, at));
                        }
                    }
                }
                ["S"] => told.start_sent = true,
                ["F", code, secs, nanos] => {
                    if let (Ok(code), Ok(secs), Ok(nanos)) =
                        (code.parse(), secs.parse(), nanos.parse())
                    {
                        told.job_ended = Some((code, UNIX_EPOCH + Duration::new(secs, nanos)));
                    }
                }
                ["G"] => told.group_gone = true,
                ["D"] => told.settled = true,
                _ => {}
            }
        }
        told
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
                return Some(crate::clock::now());
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
    pub fn watch(self, cfg: &Config) -> i32 {
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
            Some(job) if !told.settled => take_over(cfg, daemon, job, &told, lock),
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
    daemon: libc::pid_t,
    (job_pid, spawned_at): (i32, SystemTime),
    told: &Told,
    lock: Option<Lock>,
) {
    let mut group = JobGroup {
        pgid: job_pid,
        leader_reaped: told.job_ended.is_some(),
        gone: told.group_gone,
    };
    let job_was_running = group.signal(libc::SIGKILL);
    // Opened before the dead daemon is reaped (see `watch`); an open file
    // outlives its name.
    let spools: Vec<(PathBuf, File)> =
        spool::candidates(&cfg.spool_dir, &cfg.job_file_name(), daemon as u32, job_pid)
            .into_iter()
            .filter_map(|path| {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(&path)
                    .ok()?;
                // Only the daemon's own spool: a file a local user planted at
                // the predictable name in /tmp, or a hard link to someone
                // else's file (no fs.protected_hardlinks before 3.6), must not
                // reach the log.
                let meta = file.metadata().ok()?;
                let ours = meta.file_type().is_file()
                    && meta.uid() == unsafe { libc::geteuid() }
                    && meta.nlink() == 1;
                ours.then_some((path, file))
            })
            .collect();
    let how = how_it_ended(reap(daemon));
    let gone_at = match told.job_ended {
        // The daemon saw the group empty after the job's exit: the run
        // ended then.
        Some((_, exited_at)) if told.group_gone => Some(exited_at),
        _ => group.kill_until_gone(Some(Instant::now() + GROUP_WAIT)),
    };
    let log = logger::init(cfg).ok().flatten();
    let job_retcode = told.job_ended.map(|(retcode, _)| retcode);
    let what = what_happened(job_retcode, job_was_running, gone_at.is_some());
    log::error!(
        "guardian: the agent (pid {daemon}) {how} while supervising the job (pid {job_pid}); {what}"
    );
    let mut lock = lock;
    if gone_at.is_some() {
        release(lock.take());
    }
    for (path, file) in spools {
        save_spool(cfg, log.as_ref(), &path, &file);
    }
    let report = Report {
        encoder: Encoder::new(&cfg.job_name, &cfg.job_instance, &machine(cfg)),
        job_pid,
        spawned_at,
        send_start: !told.start_sent,
        text: format!("\n[sp_wrapper: the agent (pid {daemon}) {how}; {what}]\n"),
        // The end of the run is when its last process was gone.
        ended_at: gone_at.unwrap_or_else(crate::clock::now),
    };
    match report.deliver(cfg, Instant::now() + REPORT_WINDOW) {
        Ok(Reported::Recorded) => log::info!(
            "guardian: the server recorded retcode {} for this run",
            exit_codes::AGENT_DIED
        ),
        Ok(Reported::JobNotFound) => {
            log::warn!("guardian: the server no longer knows this job (JOB_NOT_FOUND)")
        }
        Err(e) => log::error!(
            "guardian: could not report the agent's death to the server within {} s: {e}",
            REPORT_WINDOW.as_secs()
        ),
    }
    if let Some(lock) = lock {
        // Held until the last process of the job is gone, however long.
        group.kill_until_gone(None);
        log::info!("guardian: the job's last process is gone; lock released");
        lock.release();
    }
}

/// The job's side of the story, for the log and the output line.
fn what_happened(job_retcode: Option<i32>, was_running: bool, gone: bool) -> String {
    let mut parts = Vec::new();
    if let Some(retcode) = job_retcode {
        parts.push(format!("the job had ended with retcode {retcode}"));
    }
    if was_running {
        parts.push("the job's process group was killed".to_string());
    } else if job_retcode.is_none() {
        parts.push("no process of the job was left".to_string());
    }
    if !gone {
        parts.push(format!(
            "processes of it were still alive {} s later",
            GROUP_WAIT.as_secs()
        ));
    }
    parts.join("; ")
}

/// The machine name the daemon used (the same function, the same answer).
fn machine(cfg: &Config) -> String {
    machine_id::resolve(cfg.machine_id.as_deref(), |var| std::env::var(var).ok()).0
}

/// Copy a dead daemon's spool file into the log between markers, like the
/// supervisor's undelivered output, then remove it.
fn save_spool(cfg: &Config, log: Option<&logger::LogHandle>, path: &std::path::Path, file: &File) {
    let (bytes, _) = spool::count_text(file);
    let saved = log.map(|log| -> io::Result<u64> {
        let mut out = log.raw_writer()?;
        use std::io::Write;
        writeln!(
            out,
            "==== sp_wrapper: UNDELIVERED OUTPUT of {} (retcode {}): the agent died; {bytes} bytes \
             below were spooled to disk by it and never read back for delivery ====",
            cfg.job_instance,
            exit_codes::AGENT_DIED
        )?;
        let mut tail = LastByte {
            out: &mut out,
            last: b'\n',
        };
        let copied = spool::copy_text(file, &mut tail)?;
        if tail.last != b'\n' {
            out.write_all(b"\n")?;
        }
        out.write_all(b"==== sp_wrapper: END OF UNDELIVERED OUTPUT ====\n")?;
        Ok(copied)
    });
    match saved {
        Some(Ok(copied)) => log::info!(
            "guardian: copied {copied} bytes of spooled output from {} into this log",
            path.display()
        ),
        Some(Err(e)) => log::error!(
            "guardian: cannot copy the spool file {} into the log: {e}",
            path.display()
        ),
        None => {}
    }
    let _ = std::fs::remove_file(path);
}

/// Passes writes through, remembering the last byte (so the end marker
/// starts on a line of its own, as in the supervisor's block).
struct LastByte<'a, W: std::io::Write> {
    out: &'a mut W,
    last: u8,
}

impl<W: std::io::Write> std::io::Write for LastByte<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.out.write(buf)?;
        if written > 0 {
            self.last = buf[written - 1];
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

enum Reported {
    Recorded,
    JobNotFound,
}

/// The result the guardian reports for the run.
struct Report {
    encoder: Encoder,
    job_pid: i32,
    spawned_at: SystemTime,
    /// The server has no `start` of ours: send one with the original spawn
    /// time. Not otherwise: a second `start` resets the recorded output.
    send_start: bool,
    text: String,
    ended_at: SystemTime,
}

type Socket = WebSocket<link::Counted>;

impl Report {
    /// Sessions until one gets an answer to `complete`, or `deadline`.
    fn deliver(&self, cfg: &Config, deadline: Instant) -> Result<Reported, String> {
        loop {
            let error = match self.session(cfg) {
                Ok(reported) => return Ok(reported),
                Err(e) => e,
            };
            if Instant::now() + REPORT_RETRY >= deadline {
                return Err(error);
            }
            log::debug!("guardian: report attempt failed: {error}");
            std::thread::sleep(REPORT_RETRY);
        }
    }

    /// connect, start (if the server has none), sync, the output line,
    /// complete: the daemon's own sequence (docs/delivery.md), blocking.
    fn session(&self, cfg: &Config) -> Result<Reported, String> {
        let mut ws = link::open(&cfg.url)?;
        let result = self.converse(&mut ws);
        let _ = ws.close(None);
        let _ = ws.flush();
        result
    }

    fn converse(&self, ws: &mut Socket) -> Result<Reported, String> {
        send(ws, self.encoder.connect(crate::clock::now()))?;
        if self.send_start {
            send(
                ws,
                self.encoder
                    .start(self.spawned_at, self.job_pid, crate::protocol::VERSION),
            )?;
        }
        send(ws, self.encoder.sync_request(crate::clock::now(), -1, 0))?;
        let answer_by = Instant::now() + ANSWER_TIMEOUT;
        let (mut connect_acked, mut start_acked) = (false, false);
        let last_seq = loop {
            match next_frame(ws, answer_by)? {
                Inbound::Ack {
                    kind: AckKind::Connect,
                    ..
                } => connect_acked = true,
                Inbound::Ack {
                    kind: AckKind::Start,
                    ..
                } => start_acked = true,
                Inbound::SyncResponse { last_seq } if connect_acked => break last_seq,
                _ => {}
            }
        };
        let mut seq = u64::try_from(last_seq + 1).unwrap_or(0);
        // The server answers in order: a start it did not ACK by now, it
        // ignored (unknown instance); it would ignore output too.
        if !self.send_start || start_acked {
            seq = self.send_output(ws, seq)?;
        }
        send(
            ws,
            self.encoder
                .complete(self.ended_at, exit_codes::AGENT_DIED, seq),
        )?;
        let answer_by = Instant::now() + COMPLETE_TIMEOUT;
        loop {
            match next_frame(ws, answer_by)? {
                Inbound::Ack {
                    kind: AckKind::Complete,
                    ..
                } => return Ok(Reported::Recorded),
                Inbound::Error { code, .. } if code == "JOB_NOT_FOUND" => {
                    return Ok(Reported::JobNotFound);
                }
                _ => {}
            }
        }
    }

    /// The output line as `seq` (renumbered on a NACK); the next seq.
    fn send_output(&self, ws: &mut Socket, mut seq: u64) -> Result<u64, String> {
        let frame = |seq| {
            self.encoder.output(
                String::new(),
                crate::clock::now(),
                Stream::Stdout,
                seq,
                &self.text,
            )
        };
        send(ws, frame(seq))?;
        let answer_by = Instant::now() + ANSWER_TIMEOUT;
        let mut renumbered = 0;
        loop {
            match next_frame(ws, answer_by)? {
                Inbound::Ack {
                    kind: AckKind::Output,
                    seq: Some(acked),
                } if acked == seq as i64 => return Ok(seq + 1),
                Inbound::Nack { expected_seq } if renumbered < 3 && expected_seq >= 0 => {
                    renumbered += 1;
                    seq = expected_seq as u64;
                    send(ws, frame(seq))?;
                }
                _ => {}
            }
        }
    }
}

fn send(ws: &mut Socket, frame: String) -> Result<(), String> {
    ws.send(Message::text(frame))
        .map_err(|e| format!("send failed: {e}"))
}

/// The next decodable text frame, waiting until `deadline` at most.
fn next_frame(ws: &mut Socket, deadline: Instant) -> Result<Inbound, String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("the server did not answer in time".into());
        }
        ws.get_ref()
            .set_read_timeout(Some(left))
            .map_err(|e| format!("socket setup: {e}"))?;
        match ws.read() {
            Ok(Message::Text(text)) => {
                if let Ok(frame) = crate::protocol::decode(text.as_str()) {
                    return Ok(frame);
                }
            }
            Ok(_) => {}
            Err(e) if link::would_block(&e) => {
                return Err("the server did not answer in time".into());
            }
            Err(e) => return Err(format!("receive failed: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_daemon_told_is_parsed_and_garbage_ignored() {
        let told = Told::parse("J 4242 1700000000 123456789\nS\n");
        assert_eq!(
            told,
            Told {
                job: Some((4242, UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789))),
                start_sent: true,
                job_ended: None,
                group_gone: false,
                settled: false,
            }
        );
        let told = Told::parse("J 4242 1 2\nS\nF 3 1700000001 5\nG\nD\n");
        assert_eq!(
            told.job_ended,
            Some((3, UNIX_EPOCH + Duration::new(1_700_000_001, 5)))
        );
        assert!(told.group_gone && told.settled);
        // A result without its exit time is not a result.
        assert_eq!(Told::parse("F 3\n").job_ended, None);
        assert_eq!(Told::parse(""), Told::default());
        assert_eq!(Told::parse("J -1 1 2\nJ x 1 2\nJ 5\nX\n"), Told::default());
    }

    #[test]
    fn the_jobs_side_is_described() {
        assert_eq!(
            what_happened(None, true, true),
            "the job's process group was killed"
        );
        assert_eq!(
            what_happened(None, false, true),
            "no process of the job was left"
        );
        assert_eq!(
            what_happened(Some(0), false, true),
            "the job had ended with retcode 0"
        );
        assert_eq!(
            what_happened(Some(3), true, false),
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
