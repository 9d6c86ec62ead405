//! What the daemon tells its guardian (guardian.rs), over a close-on-exec,
//! non-blocking pipe: five facts, one short line each, each told before the
//! daemon logs it or acts on it. The daemon writes them (`job_started`,
//! `start_sent`, `job_finished`, `job_group_gone`, `settled`: no-ops in a
//! process with no guardian, such as the guardian itself or `--foreground`);
//! the guardian parses them (`Told`) once the daemon is gone.

use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The daemon's end of the pipe to its guardian (-1: no guardian). Set once,
/// in the daemon before it has threads; written from its main thread.
static TO_GUARDIAN: AtomicI32 = AtomicI32::new(-1);

/// In the daemon, right after the fork: this is the pipe to the guardian.
pub fn set_pipe(write_end: OwnedFd) {
    TO_GUARDIAN.store(write_end.into_raw_fd(), Ordering::Relaxed);
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
pub struct Told {
    pub job: Option<(i32, SystemTime)>,
    pub start_sent: bool,
    /// The job's retcode and when its main process exited.
    pub job_ended: Option<(i32, SystemTime)>,
    pub group_gone: bool,
    pub settled: bool,
}

impl Told {
    pub fn parse(text: &str) -> Told {
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
}
