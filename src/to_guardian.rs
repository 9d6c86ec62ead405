//! What the daemon tells its guardian (guardian.rs), over a close-on-exec,
//! non-blocking pipe: a handful of facts, one short line each, each told
//! once and before the daemon logs it or acts on it. The daemon writes them
//! (no-ops in a process with no guardian, such as the guardian itself or
//! `--foreground`); the guardian parses them (`Told`) once the daemon is gone.
//!
//! Each fact is told at most once, so the pipe holds at most a few hundred
//! bytes (the machine id is the longest line, and bounded): it can never
//! fill, however long the run and however often the link reconnects.

use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::exit_codes::KillReason;

/// The daemon's end of the pipe to its guardian (-1: no guardian). Set once,
/// in the daemon before it has threads; written from its main thread and
/// (the job's exit) from the waiter thread: each line is one `write` of
/// under `PIPE_BUF` bytes, so lines never interleave.
static TO_GUARDIAN: AtomicI32 = AtomicI32::new(-1);

/// Longest machine id told (hex-encoded, twice this on the wire): a longer
/// one the guardian resolves again itself.
const MACHINE_ID_MAX: usize = 1024;

/// In the daemon, right after the fork: this is the pipe to the guardian.
pub fn set_pipe(write_end: OwnedFd) {
    TO_GUARDIAN.store(write_end.into_raw_fd(), Ordering::Relaxed);
}

/// In the daemon: tell the guardian (a no-op without one).
fn tell(message: &str) {
    #[cfg(test)]
    if tests::captured(message) {
        return;
    }
    let fd = TO_GUARDIAN.load(Ordering::Relaxed);
    if fd >= 0 {
        // One atomic write; a dead guardian means EPIPE (SIGPIPE is
        // ignored), which changes nothing for the daemon. EAGAIN cannot
        // happen: every fact is told once, and all of them fit in the pipe.
        unsafe { libc::write(fd, message.as_ptr().cast(), message.len()) };
    }
}

fn stamp(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{} {}", since.as_secs(), since.subsec_nanos())
}

fn parse_stamp(secs: &str, nanos: &str) -> Option<SystemTime> {
    let nanos: u32 = nanos.parse().ok()?;
    (nanos < 1_000_000_000).then_some(())?;
    Some(UNIX_EPOCH + Duration::new(secs.parse().ok()?, nanos))
}

/// The job runs: its pid (= its process group) and when it was spawned.
pub fn job_started(pid: i32, at: SystemTime) {
    tell(&format!("J {pid} {}\n", stamp(at)));
}

/// The machine id the link resolved, which every frame carries: the guardian
/// must report under the same name (a generated id may differ the second
/// time, and the server drops frames from any other name).
pub fn machine_identified(machine: &str) {
    if machine.len() <= MACHINE_ID_MAX {
        let mut line = String::with_capacity(4 + 2 * machine.len());
        line.push_str("M ");
        for byte in machine.bytes() {
            line.push_str(&format!("{byte:02x}"));
        }
        line.push('\n');
        tell(&line);
    }
}

/// The server ACKed our `start`: from now on output may reach it, and a
/// second `start` (which makes the server reset the recorded output) must
/// never be sent. Until this is told, the guardian sends `start` itself:
/// before the ACK no output was sent, so a repeated `start` loses nothing.
pub fn start_acked() {
    tell("A\n");
}

/// A kill of the job begins (SIGTERM to its group is next), for its timeout
/// (`T`) or at the server's request (`R`): the job's retcode is then 124 or
/// 143, however it dies.
pub fn kill_started(reason: KillReason) {
    tell(match reason {
        KillReason::Timeout => "K T\n",
        KillReason::Request => "K R\n",
    });
}

/// The job's main process (the group's leader) exited with wait status
/// `status` at `at`, and is about to be reaped: told while it is still a
/// zombie, so that the guardian never takes its pid for the group's.
pub fn job_exited(status: i32, at: SystemTime) {
    tell(&format!("E {status} {}\n", stamp(at)));
}

/// No process of the job's group is left: its id may be reused, so the
/// guardian must never signal it.
pub fn job_group_gone() {
    tell("G\n");
}

/// Our `complete` went out (every output message before it was ACKed): the
/// guardian sends the same `complete` again, and nothing before it.
pub fn complete_sent() {
    tell("C\n");
}

/// The run's end is settled: the result is recorded (or refused), or written
/// to the log after the delivery window. Nothing is left for the guardian.
pub fn settled() {
    tell("D\n");
}

/// What the daemon told its guardian.
#[derive(Debug, Default, PartialEq)]
pub struct Told {
    pub job: Option<(i32, SystemTime)>,
    pub machine: Option<String>,
    pub start_acked: bool,
    /// Why the daemon was killing the job, when it died.
    pub kill: Option<KillReason>,
    /// The job's main process: its wait status and when it exited.
    pub job_exited: Option<(i32, SystemTime)>,
    pub group_gone: bool,
    pub complete_sent: bool,
    pub settled: bool,
}

fn unhex(text: &str) -> Option<String> {
    if text.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

impl Told {
    pub fn parse(text: &str) -> Told {
        let mut told = Told::default();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            match fields.as_slice() {
                ["J", pid, secs, nanos] => {
                    if let (Ok(pid), Some(at)) = (pid.parse::<i32>(), parse_stamp(secs, nanos)) {
                        if pid > 0 {
                            told.job = Some((pid, at));
                        }
                    }
                }
                ["M", hex] => told.machine = unhex(hex).filter(|id| !id.is_empty()),
                ["A"] => told.start_acked = true,
                ["K", "T"] => told.kill = Some(KillReason::Timeout),
                ["K", "R"] => told.kill = Some(KillReason::Request),
                ["E", status, secs, nanos] => {
                    if let (Ok(status), Some(at)) = (status.parse(), parse_stamp(secs, nanos)) {
                        told.job_exited = Some((status, at));
                    }
                }
                ["G"] => told.group_gone = true,
                ["C"] => told.complete_sent = true,
                ["D"] => told.settled = true,
                _ => {}
            }
        }
        told
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::RefCell;

    thread_local! {
        /// What this test thread told, while `capture` runs.
        static CAPTURED: RefCell<Option<String>> = const { RefCell::new(None) };
    }

    /// In tests: keep `message` if this thread is capturing.
    pub(super) fn captured(message: &str) -> bool {
        CAPTURED.with(|c| {
            c.borrow_mut()
                .as_mut()
                .map(|s| s.push_str(message))
                .is_some()
        })
    }

    /// What `run` tells the guardian, on this thread.
    pub(crate) fn capture(run: impl FnOnce()) -> String {
        CAPTURED.with(|c| *c.borrow_mut() = Some(String::new()));
        run();
        CAPTURED.with(|c| c.borrow_mut().take()).unwrap_or_default()
    }

    #[test]
    fn what_the_daemon_told_is_parsed_and_garbage_ignored() {
        let told = Told::parse("J 4242 1700000000 123456789\nA\n");
        assert_eq!(
            told,
            Told {
                job: Some((4242, UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789))),
                start_acked: true,
                ..Told::default()
            }
        );
        let told = Told::parse("J 4242 1 2\nM 6d2d31\nK T\nE 768 1700000001 5\nG\nC\nD\n");
        assert_eq!(told.machine.as_deref(), Some("m-1"));
        assert_eq!(told.kill, Some(KillReason::Timeout));
        assert_eq!(
            told.job_exited,
            Some((768, UNIX_EPOCH + Duration::new(1_700_000_001, 5)))
        );
        assert!(told.group_gone && told.complete_sent && told.settled);
        // An exit without its time is not an exit; nanoseconds stay nanoseconds.
        assert_eq!(Told::parse("E 3\n").job_exited, None);
        assert_eq!(Told::parse("E 3 1 1000000000\n").job_exited, None);
        assert_eq!(Told::parse(""), Told::default());
        assert_eq!(
            Told::parse("J -1 1 2\nJ x 1 2\nJ 5\nX\nM 6\nM zz\nM \nK X\n"),
            Told::default()
        );
    }

    #[test]
    fn every_fact_told_once_fits_the_pipe_many_times_over() {
        // The longest run's worth of facts, with the longest id told.
        let id = "x".repeat(MACHINE_ID_MAX);
        let at = SystemTime::now();
        let said = capture(|| {
            job_started(i32::MAX, at);
            machine_identified(&id);
            machine_identified(&"y".repeat(MACHINE_ID_MAX + 1)); // not told: too long
            start_acked();
            kill_started(KillReason::Request);
            job_exited(i32::MAX, at);
            job_group_gone();
            complete_sent();
            settled();
        });
        // The smallest pipe Linux gives (one page, when the user is over
        // pipe-user-pages-soft) still holds it all.
        assert!(said.len() < 4096, "{}", said.len());
        let told = Told::parse(&said);
        assert_eq!(told.machine, Some(id));
        assert_eq!(told.job.map(|(pid, _)| pid), Some(i32::MAX));
        assert!(told.start_acked && told.group_gone && told.complete_sent && told.settled);
        assert_eq!(told.kill, Some(KillReason::Request));
    }
}
