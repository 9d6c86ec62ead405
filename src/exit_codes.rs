//! The exit-code policy, in one place (PROTOCOL.md, "Exit codes").
//!
//! Two kinds of codes live here: what `sp_wrapper` itself exits with when it
//! cannot start a job (seen by Salt, recorded by the server as
//! "Wrapper execution failed"), and what `complete.retcode` says about a job
//! that ran. Pure functions, no I/O; used by the launcher and the supervisor.

use std::io;

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
pub fn spawn_failure(err: &io::Error) -> i32 {
    match err.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => NOT_FOUND,
        _ => CANNOT_EXECUTE,
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
}
