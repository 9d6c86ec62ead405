//! The exit-code policy, in one place (PROTOCOL.md, "Exit codes").
//!
//! Two kinds of codes live here: what `sp_wrapper` itself exits with when it
//! cannot start a job (`LaunchError`, seen by Salt, recorded by the server as
//! "Wrapper execution failed"), and what `complete.retcode` says about a job
//! that ran. Pure functions, no I/O; used by the launcher, the guardian, the
//! daemon and the supervisor.

use std::fmt::{self, Display, Formatter};
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::ConfigError;

/// The job succeeded.
pub const SUCCESS: i32 = 0;
/// Our configuration was missing or invalid (a variable, a path, a user).
pub const CONFIG: i32 = 1;
/// `sp_wrapper --check`: at least one check failed (its `FAIL` line says
/// which); as a launch refused for its configuration.
pub const CHECK_FAILED: i32 = 1;
/// We killed the job because it ran past `SP_TIMEOUT` (as coreutils `timeout`).
pub const TIMEOUT: i32 = 124;
/// The shell could not be executed (permission, format).
pub const CANNOT_EXECUTE: i32 = 126;
/// The shell was not found.
pub const NOT_FOUND: i32 = 127;
/// We killed the job because the server asked (128 + SIGTERM, what the server records itself).
pub const KILLED_BY_REQUEST: i32 = 143;
/// Another instance of the job holds the lock and overlap is not allowed.
pub const OVERLAP: i32 = 254;
/// Anything else that went wrong inside the wrapper.
pub const WRAPPER_ERROR: i32 = 255;
/// The agent (the daemon) died before the job's result was delivered; its
/// guardian killed the job's process group and reports this, with a line of
/// output saying how the agent died. A wrapper error, as the server's own
/// 255; the line tells it from a job that exits 255 itself.
pub const AGENT_DIED: i32 = WRAPPER_ERROR;

/// Why we signalled the job's process group, if we did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillReason {
    Timeout,
    Request,
}

impl KillReason {
    pub fn retcode(self) -> i32 {
        match self {
            KillReason::Timeout => TIMEOUT,
            KillReason::Request => KILLED_BY_REQUEST,
        }
    }
}

/// The `retcode` reported for a job whose main process ended with the raw
/// `waitpid` status `status`.
///
/// When we killed the job the reason decides (124/143), however the process
/// chose to die: a job that traps SIGTERM and exits 0 was still cut short.
/// Otherwise the exit status passes through, and death by a signal we did not
/// send is 128+N, the shell convention.
pub fn job_retcode(status: i32, killed: Option<KillReason>) -> i32 {
    if let Some(reason) = killed {
        return reason.retcode();
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        WRAPPER_ERROR
    }
}

/// The code for a failure to start `/bin/sh` itself, as a shell would report it.
fn spawn_failure(err: &io::Error) -> i32 {
    match err.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => NOT_FOUND,
        _ => CANNOT_EXECUTE,
    }
}

/// Why a run could not start: every launch failure, whichever process met
/// it (the launcher, the guardian taking the lock, the daemon spawning the
/// job). Its `Display` is the one line Salt sees on stderr
/// (docs/exit-codes.md), and `exit_code` the code it exits with.
#[derive(Debug)]
pub enum LaunchError {
    /// A flag `sp_wrapper` does not know.
    UnknownFlag(String),
    /// An `SP_*` variable is missing or invalid.
    InvalidVariable(ConfigError),
    /// `SP_CWD` names no existing directory.
    CwdNotADirectory(PathBuf),
    /// `SP_USER` cannot be used: unknown to /etc/passwd and the host's NSS,
    /// not allowed for our uid, or the directory did not answer in time;
    /// the text says which (`child::lookup_user`, `child::check_user_allowed`).
    UnusableUser(String),
    /// Overlap is not allowed and `pid` (the holder's guardian, when the
    /// lock file says) holds the job's lock.
    Overlap { job: String, pid: Option<i32> },
    /// The lock file cannot be used (a symlink, not a regular file, no
    /// permission, ...): `error` says why.
    LockUnusable { path: PathBuf, error: String },
    /// `fork` failed (detaching, or the guardian forking the daemon).
    ForkFailed(io::Error),
    /// `/bin/sh` could not be started for `SP_COMMAND`.
    CannotRunShell(io::Error),
    /// In the launcher: the daemon said nothing within this time.
    NoReport(Duration),
    /// In the launcher: the daemon closed the status pipe without a report.
    DaemonGone,
    /// In the launcher: the detached side's failure as it came over the
    /// status pipe (`ERR <code> <line>`), its code decided there by
    /// `exit_code`; `None` if it was not a number.
    Reported { code: Option<i32>, line: String },
}

impl LaunchError {
    /// The code `sp_wrapper` exits with for this failure: the launch half of
    /// the policy, decided here only (docs/exit-codes.md, section 1).
    pub fn exit_code(&self) -> i32 {
        match self {
            LaunchError::UnknownFlag(_)
            | LaunchError::InvalidVariable(_)
            | LaunchError::CwdNotADirectory(_)
            | LaunchError::UnusableUser(_) => CONFIG,
            LaunchError::Overlap { .. } => OVERLAP,
            LaunchError::CannotRunShell(error) => spawn_failure(error),
            LaunchError::LockUnusable { .. }
            | LaunchError::ForkFailed(_)
            | LaunchError::NoReport(_)
            | LaunchError::DaemonGone => WRAPPER_ERROR,
            LaunchError::Reported { code, .. } => code.unwrap_or(WRAPPER_ERROR),
        }
    }
}

/// The lines of docs/exit-codes.md, byte for byte (tests and the e2e suite
/// match them). One `write!` per line: measured in the static binary, that
/// is smaller than `write_str` pieces (+64 B) or a table of `&dyn Display`
/// facts between fixed words (+1.6 KB).
impl Display for LaunchError {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            LaunchError::UnknownFlag(flag) => {
                write!(f, "sp_wrapper: unknown argument {flag:?} (see --help)")
            }
            LaunchError::InvalidVariable(error) => write!(f, "sp_wrapper: {error}"),
            LaunchError::CwdNotADirectory(cwd) => write!(
                f,
                "sp_wrapper: SP_CWD: {} is not an existing directory",
                cwd.display()
            ),
            LaunchError::UnusableUser(why) => write!(f, "sp_wrapper: SP_USER: {why}"),
            LaunchError::Overlap {
                job,
                pid: Some(pid),
            } => write!(
                f,
                "LOCKFILE ERROR: Job {job} already running (PID {pid}), overlap not allowed"
            ),
            LaunchError::Overlap { job, pid: None } => write!(
                f,
                "LOCKFILE ERROR: Job {job} already running (PID unknown), overlap not allowed"
            ),
            LaunchError::LockUnusable { path, error } => {
                write!(f, "LOCKFILE ERROR: SP_LOCKFILE {}: {error}", path.display())
            }
            LaunchError::ForkFailed(error) => write!(f, "sp_wrapper: fork failed: {error}"),
            LaunchError::CannotRunShell(error) => {
                write!(f, "sp_wrapper: cannot run /bin/sh for SP_COMMAND: {error}")
            }
            LaunchError::NoReport(waited) => write!(
                f,
                "sp_wrapper: the daemon did not report within {} s",
                waited.as_secs()
            ),
            LaunchError::DaemonGone => {
                f.write_str("sp_wrapper: the daemon exited before starting the job")
            }
            LaunchError::Reported { line, .. } => f.write_str(line),
        }
    }
}

impl std::error::Error for LaunchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LaunchError::InvalidVariable(error) => Some(error),
            LaunchError::ForkFailed(error) | LaunchError::CannotRunShell(error) => Some(error),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> i32 {
        code << 8
    }

    #[test]
    fn exit_status_passes_through() {
        assert_eq!(job_retcode(exited(0), None), 0);
        assert_eq!(job_retcode(exited(3), None), 3);
        assert_eq!(job_retcode(exited(255), None), 255);
    }

    #[test]
    fn foreign_signal_is_128_plus_n() {
        assert_eq!(job_retcode(libc::SIGSEGV, None), 128 + libc::SIGSEGV);
        assert_eq!(job_retcode(libc::SIGKILL, None), 137);
    }

    #[test]
    fn our_kills_report_the_reason_not_the_signal() {
        assert_eq!(job_retcode(libc::SIGKILL, Some(KillReason::Timeout)), 124);
        assert_eq!(job_retcode(libc::SIGTERM, Some(KillReason::Request)), 143);
        // A job that traps SIGTERM and exits 0 was still killed.
        assert_eq!(job_retcode(exited(0), Some(KillReason::Request)), 143);
    }

    #[test]
    fn spawn_failures_map_like_a_shell() {
        let enoent = io::Error::from_raw_os_error(libc::ENOENT);
        let eacces = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(spawn_failure(&enoent), 127);
        assert_eq!(spawn_failure(&eacces), 126);
    }

    /// Every launch failure's line and code, as docs/exit-codes.md gives
    /// them (the integration and e2e tests match these lines).
    #[test]
    fn each_launch_failure_has_its_line_and_code() {
        let os = io::Error::from_raw_os_error;
        let cases: Vec<(LaunchError, &str, i32)> = vec![
            (
                LaunchError::UnknownFlag("--bogus".into()),
                "sp_wrapper: unknown argument \"--bogus\" (see --help)",
                1,
            ),
            (
                LaunchError::InvalidVariable(ConfigError {
                    var: "SP_TIMEOUT",
                    problem: "expected a whole number, got \"soon\"".into(),
                }),
                "sp_wrapper: SP_TIMEOUT: expected a whole number, got \"soon\"",
                1,
            ),
            (
                LaunchError::CwdNotADirectory("/nonexistent".into()),
                "sp_wrapper: SP_CWD: /nonexistent is not an existing directory",
                1,
            ),
            (
                LaunchError::UnusableUser("no such user \"x\"".into()),
                "sp_wrapper: SP_USER: no such user \"x\"",
                1,
            ),
            (
                LaunchError::Overlap {
                    job: "backup".into(),
                    pid: Some(4242),
                },
                "LOCKFILE ERROR: Job backup already running (PID 4242), overlap not allowed",
                254,
            ),
            (
                LaunchError::Overlap {
                    job: "backup".into(),
                    pid: None,
                },
                "LOCKFILE ERROR: Job backup already running (PID unknown), overlap not allowed",
                254,
            ),
            (
                LaunchError::LockUnusable {
                    path: "/tmp/x.lock".into(),
                    error: "refusing to use it as the lock file: it is a symlink".into(),
                },
                "LOCKFILE ERROR: SP_LOCKFILE /tmp/x.lock: refusing to use it as the lock file: it is a symlink",
                255,
            ),
            (
                LaunchError::ForkFailed(os(libc::EAGAIN)),
                "sp_wrapper: fork failed: Resource temporarily unavailable (os error 11)",
                255,
            ),
            (
                LaunchError::CannotRunShell(os(libc::EACCES)),
                "sp_wrapper: cannot run /bin/sh for SP_COMMAND: Permission denied (os error 13)",
                126,
            ),
            (
                LaunchError::CannotRunShell(os(libc::ENOENT)),
                "sp_wrapper: cannot run /bin/sh for SP_COMMAND: No such file or directory (os error 2)",
                127,
            ),
            (
                LaunchError::NoReport(Duration::from_secs(25)),
                "sp_wrapper: the daemon did not report within 25 s",
                255,
            ),
            (
                LaunchError::DaemonGone,
                "sp_wrapper: the daemon exited before starting the job",
                255,
            ),
            (
                LaunchError::Reported {
                    code: Some(254),
                    line: "LOCKFILE ERROR: as the guardian said".into(),
                },
                "LOCKFILE ERROR: as the guardian said",
                254,
            ),
            (
                LaunchError::Reported {
                    code: None,
                    line: "garbled".into(),
                },
                "garbled",
                255,
            ),
        ];
        for (error, line, code) in cases {
            assert_eq!(error.to_string(), line, "{error:?}");
            assert_eq!(error.exit_code(), code, "{error:?}");
        }
    }

    #[test]
    fn a_launch_failure_names_the_error_beneath_it() {
        use std::error::Error;
        let spawn = LaunchError::CannotRunShell(io::Error::from_raw_os_error(libc::ENOENT));
        let source = spawn.source().expect("the spawn error");
        assert_eq!(source.to_string(), "No such file or directory (os error 2)");
        assert!(LaunchError::DaemonGone.source().is_none());
    }
}
