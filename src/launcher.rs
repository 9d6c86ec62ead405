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
//!
//! All of this happens before the process has any thread, as `fork` requires.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::config::Config;
use crate::os::child;
use crate::{exit_codes, minion};

/// How long the daemon waits for the launcher to exit after reporting.
const LAUNCHER_EXIT_WAIT_MS: i32 = 10;
/// Salt gives the wrapper 30 s; answer before that even if the daemon hangs.
const REPORT_TIMEOUT: Duration = Duration::from_secs(25);

/// What the launcher checked, handed to the daemon.
pub struct Launch {
    pub cfg: Config,
    /// `SP_USER`, looked up and allowed.
    pub user: Option<child::UserInfo>,
}

/// The configuration from the environment, checked: `SP_*` values, the
/// user, the working directory. A problem is one line on stderr, and
/// `Err(its exit code)`.
pub fn prepare() -> Result<Launch, i32> {
    check().map_err(|(code, message)| {
        eprintln!("{message}");
        code
    })
}

fn check() -> Result<Launch, (i32, String)> {
    let cfg =
        Config::from_lookup(|var| std::env::var_os(var).map(|v| v.to_string_lossy().into_owned()))
            .map_err(|e| (exit_codes::CONFIG, format!("sp_wrapper: {e}")))?;
    let user = match &cfg.user {
        None => None,
        Some(name) => Some(
            child::lookup_user(name)
                .and_then(|u| child::check_user_allowed(&u).map(|_| u))
                .map_err(|e| (exit_codes::CONFIG, format!("sp_wrapper: SP_USER: {e}")))?,
        ),
    };
    if let Some(cwd) = &cfg.cwd {
        if !cwd.is_dir() {
            return Err((
                exit_codes::CONFIG,
                format!(
                    "sp_wrapper: SP_CWD: {} is not an existing directory",
                    cwd.display()
                ),
            ));
        }
    }
    // Before detaching: once detached, the salt-minion that started us is
    // no longer among our ancestors, and its `-c` names the config directory.
    if cfg.machine_id.is_none() {
        minion::id::note_salt_ancestor();
    }
    Ok(Launch { cfg, user })
}

pub enum Detached {
    /// In the launcher: the daemon has reported; exit with this code.
    Launcher(i32),
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

    pub fn failed(mut self, code: i32, message: &str) {
        let _ = writeln!(self.pipe, "ERR {code} {}", message.replace('\n', " "));
    }
}

pub fn fork() -> io::Result<libc::pid_t> {
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        pid => Ok(pid),
    }
}

/// Fork into the launcher and a detached child. Must be called while
/// single-threaded. If that fails, the launcher says so and exits 255.
pub fn detach() -> Detached {
    match fork_detached() {
        Ok(detached) => detached,
        Err(e) => {
            eprintln!("sp_wrapper: fork failed: {e}");
            Detached::Launcher(exit_codes::WRAPPER_ERROR)
        }
    }
}

fn fork_detached() -> io::Result<Detached> {
    let (read_end, write_end) = crate::os::pipe::cloexec(0)?;
    let child = fork()?;
    if child > 0 {
        drop(write_end);
        // No waitpid: the child is the guardian and outlives us; init reaps it.
        return Ok(Detached::Launcher(await_report(read_end)));
    }
    drop(read_end);
    unsafe { libc::setsid() };
    release_stdio(write_end.as_raw_fd());
    Ok(Detached::Child(StatusReporter {
        pipe: File::from(write_end),
    }))
}

/// In the launcher: wait for the daemon's report, print it, give the exit code.
fn await_report(read_end: OwnedFd) -> i32 {
    let mut poll = libc::pollfd {
        fd: read_end.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ready = unsafe { libc::poll(&mut poll, 1, REPORT_TIMEOUT.as_millis() as i32) };
    if ready <= 0 {
        eprintln!(
            "sp_wrapper: the daemon did not report within {} s",
            REPORT_TIMEOUT.as_secs()
        );
        return exit_codes::WRAPPER_ERROR;
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
    let line = report.lines().next().unwrap_or("");
    if line.starts_with("OK ") {
        println!("Wrapper started successfully");
        return exit_codes::SUCCESS;
    }
    if let Some(rest) = line.strip_prefix("ERR ") {
        let (code, message) = rest.split_once(' ').unwrap_or((rest, ""));
        eprintln!("{message}");
        return code.parse().unwrap_or(exit_codes::WRAPPER_ERROR);
    }
    eprintln!("sp_wrapper: the daemon exited before starting the job");
    exit_codes::WRAPPER_ERROR
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
