//! Detaching from Salt, and the launch contract (PROTOCOL.md, "How the
//! server starts the wrapper").
//!
//! The launcher (the process Salt started) forks; the child calls `setsid`,
//! puts /dev/null on 0, 1 and 2 and closes every other inherited descriptor,
//! so Salt's pipes are released. That child becomes the guardian
//! (`guardian.rs`): it takes the lock and forks the daemon, which is in the
//! guardian's session but not its leader (it can never reacquire a
//! terminal). The daemon opens the log and starts the job, and only then
//! reports over a status pipe: `OK <pid>`, or `ERR <code> <message>` (the
//! guardian reports a lock failure the same way). The launcher prints the
//! result and exits with it, so Salt sees success only once the job really
//! runs, and otherwise one clear line with a meaningful code. The launcher
//! does not wait for the guardian, which lives as long as the daemon.
//!
//! Before any of that, `prepare` reads and checks the configuration in the
//! launcher itself, so a bad variable is one line to Salt with exit code 1.
//! Every failure here is an `exit_codes::LaunchError`, which decides its
//! code; `main` prints it and exits with that code.
//!
//! All of this happens before the process has any thread, as `fork` requires.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::config::Config;
use crate::exit_codes::LaunchError;
use crate::minion;
use crate::os::child;
use crate::timings::Timings;

/// How long the daemon waits for the launcher to exit after reporting.
const LAUNCHER_EXIT_WAIT_MS: i32 = 10;

/// What the launcher checked, handed to the daemon.
pub struct Launch {
    pub cfg: Config,
    /// `SP_USER`, looked up and allowed.
    pub user: Option<child::UserInfo>,
    /// Built here, once: the guardian and the daemon are forks of us.
    pub timings: Timings,
}

/// The configuration from the environment, checked: `SP_*` values, the
/// user, the working directory.
pub fn prepare() -> Result<Launch, LaunchError> {
    let cfg =
        Config::from_lookup(|var| std::env::var_os(var).map(|v| v.to_string_lossy().into_owned()))
            .map_err(LaunchError::InvalidVariable)?;
    let user = match &cfg.user {
        None => None,
        Some(name) => Some(
            child::lookup_user(name)
                .and_then(|u| child::check_user_allowed(&u).map(|_| u))
                .map_err(LaunchError::UnusableUser)?,
        ),
    };
    if let Some(cwd) = &cfg.cwd {
        if !cwd.is_dir() {
            return Err(LaunchError::CwdNotADirectory(cwd.clone()));
        }
    }
    // Before detaching: once detached, the salt-minion that started us is
    // no longer among our ancestors, and its `-c` names the config directory.
    if cfg.machine_id.is_none() {
        minion::id::note_salt_ancestor();
    }
    let timings = Timings::from_env().map_err(LaunchError::InvalidVariable)?;
    Ok(Launch { cfg, user, timings })
}

pub enum Detached {
    /// In the launcher: the daemon has reported that the job runs.
    Launcher,
    /// In the detached child (the guardian-to-be, then also the daemon after
    /// `guardian::fork_daemon`): report how the start went.
    Child(StatusReporter),
}

pub struct StatusReporter {
    pipe: File,
}

impl StatusReporter {
    pub fn started(mut self, pid: i32) {
        let _ = writeln!(self.pipe, "OK {pid}");
        // Let the launcher answer Salt before we start our threads and
        // connect: on a small machine they would compete with its last few
        // system calls. It has exited when the pipe has no reader (POLLERR);
        // the wait is bounded, and the job is already running meanwhile.
        let mut gone = libc::pollfd {
            fd: self.pipe.as_raw_fd(),
            events: 0,
            revents: 0,
        };
        unsafe { libc::poll(&mut gone, 1, LAUNCHER_EXIT_WAIT_MS) };
    }

    /// Tell the launcher why the run did not start: `ERR <code> <line>`,
    /// which it prints and exits with.
    pub fn failed(mut self, error: &LaunchError) {
        let _ = self.pipe.write_all(&failure_report(error));
    }
}

pub fn fork() -> io::Result<libc::pid_t> {
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        pid => Ok(pid),
    }
}

/// Fork into the launcher and a detached child. Must be called while
/// single-threaded. In the launcher, `Ok` once the daemon reported that the
/// job runs; `Err` if the fork failed or the daemon reported a failure.
pub fn detach(report_timeout: Duration) -> Result<Detached, LaunchError> {
    let (read_end, write_end) = crate::os::pipe::cloexec(0).map_err(LaunchError::ForkFailed)?;
    let child = fork().map_err(LaunchError::ForkFailed)?;
    if child > 0 {
        drop(write_end);
        // No waitpid: the child is the guardian and outlives us; init reaps it.
        return await_report(read_end, report_timeout).map(|()| Detached::Launcher);
    }
    drop(read_end);
    unsafe { libc::setsid() };
    release_stdio(write_end.as_raw_fd());
    Ok(Detached::Child(StatusReporter {
        pipe: File::from(write_end),
    }))
}

/// In the launcher: wait for the daemon's report; print it if the job runs.
fn await_report(read_end: OwnedFd, report_timeout: Duration) -> Result<(), LaunchError> {
    let mut poll = libc::pollfd {
        fd: read_end.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ready = unsafe { libc::poll(&mut poll, 1, report_timeout.as_millis() as i32) };
    if ready <= 0 {
        return Err(LaunchError::NoReport(report_timeout));
    }
    // One line, not to EOF: the daemon keeps the pipe open until we are gone.
    let mut report = Vec::with_capacity(256);
    let mut pipe = File::from(read_end);
    let mut chunk = [0u8; 256];
    while !report.contains(&b'\n') && report.len() < 64 * 1024 {
        match pipe.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => report.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let report = String::from_utf8_lossy(&report);
    read_report(report.lines().next().unwrap_or(""))?;
    println!("Wrapper started successfully");
    Ok(())
}

/// The status pipe's line: `OK <pid>`, or `ERR <code> <line>` as
/// `failure_report` wrote it; anything else (EOF) means the daemon died
/// before reporting.
fn read_report(line: &str) -> Result<(), LaunchError> {
    if line.starts_with("OK ") {
        return Ok(());
    }
    if let Some(rest) = line.strip_prefix("ERR ") {
        let (code, message) = rest.split_once(' ').unwrap_or((rest, ""));
        return Err(LaunchError::Reported {
            code: code.parse().ok(),
            line: message.to_string(),
        });
    }
    Err(LaunchError::DaemonGone)
}

/// `ERR <code> <line>`: a failure on the status pipe, on one line.
fn failure_report(error: &LaunchError) -> Vec<u8> {
    let mut report = format!("ERR {} {error}", error.exit_code()).into_bytes();
    for byte in report.iter_mut().filter(|byte| **byte == b'\n') {
        *byte = b' ';
    }
    report.push(b'\n');
    report
}

/// /dev/null on 0, 1, 2; close every other inherited descriptor but `keep`.
fn release_stdio(keep: RawFd) {
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
    close_inherited_fds(&[keep]);
}

/// Close every descriptor above 2 except `keep`. Uses /proc/self/fd, not
/// `close_range` (Linux 5.9; the fleet has 2.6.32), with a bounded loop as
/// the fallback when /proc is not mounted.
pub fn close_inherited_fds(keep: &[RawFd]) {
    let listed: Option<Vec<RawFd>> = std::fs::read_dir("/proc/self/fd").ok().map(|dir| {
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    });
    let candidates: Vec<RawFd> = match listed {
        Some(fds) => fds,
        None => {
            let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) };
            (3..max.clamp(256, 65_536) as RawFd).collect()
        }
    };
    for fd in candidates {
        if fd > 2 && !keep.contains(&fd) {
            unsafe { libc::close(fd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the guardian or the daemon reports is what the launcher prints
    /// and exits with: the same line, the same code.
    #[test]
    fn a_failure_crosses_the_status_pipe_unchanged() {
        let failures = [
            LaunchError::Overlap {
                job: "backup".into(),
                pid: Some(4242),
            },
            LaunchError::CannotRunShell(io::Error::from_raw_os_error(libc::ENOENT)),
            LaunchError::UnusableUser("two\nlines".into()),
        ];
        for failure in failures {
            let report = String::from_utf8(failure_report(&failure)).expect("UTF-8");
            let line = report.strip_suffix('\n').expect("one line");
            assert!(!line.contains('\n'), "{line:?}");
            let received = read_report(line).expect_err("a failure");
            assert_eq!(received.exit_code(), failure.exit_code(), "{line:?}");
            assert_eq!(
                received.to_string(),
                failure.to_string().replace('\n', " "),
                "{line:?}"
            );
        }
    }

    #[test]
    fn a_started_job_or_silence_is_read_as_such() {
        assert!(read_report("OK 4242").is_ok());
        assert_eq!(read_report("").expect_err("EOF").exit_code(), 255);
        let garbled = read_report("ERR x the line").expect_err("garbled");
        assert_eq!(garbled.exit_code(), 255);
        assert_eq!(garbled.to_string(), "the line");
    }
}
