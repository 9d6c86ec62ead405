//! The job process: looking up `SP_USER` (in `/etc/passwd`, else through
//! the host's NSS, `nss.rs`), spawning `/bin/sh -c "$SP_COMMAND"`
//! in a new session (its own process group) with its output on one pipe (or
//! two with `SP_OUTPUT=separate`), signalling that group, and the waiter
//! thread that reaps it and stamps the time of its exit.
//!
//! `spawn` runs in the daemon before any other thread exists, so the
//! `pre_exec` closure only makes async-signal-safe system calls on data
//! prepared beforehand (the group list is resolved before the fork).

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::messages::Event;
use crate::os::nss::{self, Nss, PasswdEntry};
use crate::os::threads::SpawnDetached;
use crate::to_guardian;

/// The job's main process (the group's leader) has exited and is reaped or
/// about to be: from then on a live process with its pid means the group is
/// gone and the id reused (`signal_group_of_reaped`). Set by the waiter while
/// the leader is still a zombie, before anything can reuse its pid.
static JOB_LEADER_REAPED: AtomicBool = AtomicBool::new(false);

/// The `SP_USER` account, resolved in the launcher (an unknown user fails there).
#[derive(Clone, Debug)]
pub struct UserInfo {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
    pub home: String,
    pub shell: String,
    /// Found through the host's NSS (`getent`), not in /etc/passwd.
    pub from_nss: bool,
}

fn c_string(bytes: *const libc::c_char) -> String {
    if bytes.is_null() {
        return String::new();
    }
    unsafe { CStr::from_ptr(bytes) }
        .to_string_lossy()
        .into_owned()
}

/// Look up the `SP_USER` account, with every group it belongs to.
///
/// The entry: `/etc/passwd` first (musl reads it, and asks nscd when one
/// runs), else the host's NSS through `getent passwd` (a user only the
/// directory knows). The groups: the primary one, plus what the host's NSS
/// gives at login (`getent initgroups`: `/etc/group` and the directory's
/// groups alike), or `/etc/group` alone on a host with no `getent`.
pub fn lookup_user(name: &str) -> Result<UserInfo, String> {
    lookup_user_with(name, &nss::GETENT_PATHS, nss::NSS_BUDGET)
}

fn lookup_user_with(
    name: &str,
    getent_paths: &[&str],
    budget: Duration,
) -> Result<UserInfo, String> {
    let c_name = CString::new(name).map_err(|_| "contains a NUL byte".to_string())?;
    let host_nss = nss::find_getent(getent_paths).map(|getent| (getent, Nss::new(getent, budget)));
    let local = files_passwd(&c_name)?;
    let from_nss = local.is_none();
    let entry = match local {
        Some(entry) => entry,
        None => match &host_nss {
            None => {
                return Err(format!(
                    "no such user {name:?} in /etc/passwd, and no getent ({}) to ask the host's NSS (LDAP, SSSD, AD): install getent (glibc) or use a local user",
                    getent_paths.join(" or ")
                ));
            }
            Some((getent, nss)) => nss.passwd(name)?.ok_or_else(|| {
                format!("no such user {name:?} (neither /etc/passwd nor the host's NSS through {getent} knows it)")
            })?,
        },
    };
    let others = match &host_nss {
        Some((_, nss)) => nss.initgroups(name)?,
        None => files_groups(&c_name, entry.gid)?,
    };
    // The primary group first (as `id -G` prints), then the others. Both
    // sources list each group once (glibc's and musl's getgrouplist), and
    // the kernel would take a repeat anyway: no set, no sort, which would
    // cost the static binary some KB it does not have to spare.
    let mut groups = vec![entry.gid];
    groups.extend(others.into_iter().filter(|&gid| gid != entry.gid));
    if groups.len() > nss::MAX_GROUPS {
        return Err(format!(
            "{} groups, more than the kernel's {}",
            groups.len(),
            nss::MAX_GROUPS
        ));
    }
    Ok(UserInfo {
        name: name.to_string(),
        uid: entry.uid,
        gid: entry.gid,
        groups,
        home: entry.home,
        shell: entry.shell,
        from_nss,
    })
}

/// `name` in /etc/passwd (or nscd), through musl's `getpwnam_r`.
fn files_passwd(c_name: &CStr) -> Result<Option<PasswdEntry>, String> {
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(format!(
            "getpwnam_r failed: {}",
            io::Error::from_raw_os_error(rc)
        ));
    }
    if found.is_null() {
        return Ok(None);
    }
    Ok(Some(PasswdEntry {
        uid: entry.pw_uid,
        gid: entry.pw_gid,
        home: c_string(entry.pw_dir),
        shell: c_string(entry.pw_shell),
    }))
}

/// The groups /etc/group (or nscd) gives `name`, through musl's `getgrouplist`.
fn files_groups(c_name: &CStr, gid: libc::gid_t) -> Result<Vec<libc::gid_t>, String> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut count = groups.len() as libc::c_int;
        let rc =
            unsafe { libc::getgrouplist(c_name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            return Ok(groups);
        }
        if groups.len() >= nss::MAX_GROUPS {
            return Err("getgrouplist: too many groups".to_string());
        }
        let wanted = (count.max(0) as usize).max(groups.len() * 2);
        groups.resize(wanted, 0);
    }
}

/// Is `SP_USER` allowed for us? Root may be anyone; others only themselves.
pub fn check_user_allowed(user: &UserInfo) -> Result<(), String> {
    let euid = unsafe { libc::geteuid() };
    if euid == 0 || euid == user.uid {
        Ok(())
    } else {
        Err(format!(
            "running as uid {euid}, not root: cannot switch to user {:?}",
            user.name
        ))
    }
}

/// A running job.
pub struct Job {
    pub pid: i32,
    /// Wall-clock time of the spawn: the run's starttime on the server.
    pub spawned_at: SystemTime,
    /// The job's stdout, and its stderr too when output is merged.
    pub stdout: File,
    /// Only with `SP_OUTPUT=separate`: stderr on a pipe of its own.
    pub stderr: Option<File>,
}

/// A pipe for the job's output: (our read end, the job's write end), both
/// close-on-exec (std dups the write end onto the job's 1 and 2, which
/// clears the flag there).
fn output_pipe() -> io::Result<(File, OwnedFd)> {
    let (read_end, write_end) = crate::os::pipe::cloexec(0)?;
    Ok((File::from(read_end), write_end))
}

/// Start the job. The error is the `spawn` error as the OS gave it.
pub fn spawn(cfg: &Config, user: Option<&UserInfo>) -> io::Result<Job> {
    let mut command = Command::new("/bin/sh");
    command.arg("-c").arg(&cfg.command).stdin(Stdio::null());
    // Merged (the default): stdout and stderr are one pipe, as `2>&1` in a
    // terminal, so the text reads in the order the job wrote it. Two pipes
    // read by two threads have no common order.
    let merged_reader = if cfg.separate_streams {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        None
    } else {
        let (reader, writer) = output_pipe()?;
        command
            .stdout(Stdio::from(writer.try_clone()?))
            .stderr(Stdio::from(writer));
        Some(reader)
    };
    if let Some(cwd) = &cfg.cwd {
        command.current_dir(cwd);
    }
    // Switch only when it changes something: a user running as itself needs
    // (and, unprivileged, may have) no setgroups.
    let switch =
        user.filter(|u| unsafe { libc::geteuid() } == 0 || u.uid != unsafe { libc::geteuid() });
    if let Some(user) = user {
        command
            .env("HOME", &user.home)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name)
            .env(
                "SHELL",
                if user.shell.is_empty() {
                    "/bin/sh"
                } else {
                    &user.shell
                },
            );
    }
    let ids = switch.map(|u| (u.uid, u.gid, u.groups.clone()));
    unsafe {
        command.pre_exec(move || {
            // The job must start with a clean signal state. The daemon blocks
            // SIGTERM/SIGINT/SIGHUP for its signal thread, and fork and execve
            // keep the calling thread's mask (POSIX, any libc); std's fork path
            // does not promise to reset it. A job with SIGTERM blocked would
            // only die of SIGKILL.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE] {
                libc::signal(signal, libc::SIG_DFL);
            }
            // A new session: the job gets its own process group (pgid = pid),
            // so the whole tree can be signalled, and no controlling terminal.
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some((uid, gid, groups)) = &ids {
                // Order matters: groups and gid need root, so uid goes last.
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(*gid) != 0
                    || libc::setuid(*uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // Paranoia: dropping privileges must be irreversible.
                if *uid != 0 && libc::setuid(0) == 0 {
                    return Err(io::Error::from_raw_os_error(libc::EPERM));
                }
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let spawned_at = crate::os::clock::now();
    // Our copies of the merged pipe's write end went into `command`: drop
    // them, or the reader would never see end-of-file.
    drop(command);
    let pipe = |p: Option<OwnedFd>| p.map(File::from);
    let (stdout, stderr) = match merged_reader {
        Some(reader) => (Some(reader), None),
        None => (
            pipe(child.stdout.take().map(OwnedFd::from)),
            pipe(child.stderr.take().map(OwnedFd::from)),
        ),
    };
    let Some(stdout) = stdout else {
        return Err(io::Error::other("spawned job has no output pipe"));
    };
    if cfg.separate_streams && stderr.is_none() {
        return Err(io::Error::other("spawned job has no stderr pipe"));
    }
    Ok(Job {
        pid: child.id() as i32,
        spawned_at,
        stdout,
        stderr,
    })
}

/// Send `signal` to the job's whole process group. `false`: the group is gone.
pub fn signal_group(pgid: i32, signal: i32) -> bool {
    // Negative pid = process group. ESRCH means no process is left in it.
    let rc = unsafe { libc::kill(-pgid, signal) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// `signal_group` for a group whose leader we know was reaped. The kernel
/// never hands out a pid still in use as a process group's id, so if a
/// process with the leader's pid exists now, the group was empty and its id
/// was reused (CentOS 6's pid_max is 32768): the group is gone, and
/// signalling that id would hit an unrelated group. Without /proc, the
/// plain signal (a reuse in that window would need the pids to wrap).
pub fn signal_group_of_reaped(pgid: i32, signal: i32) -> bool {
    let proc_mounted = Path::new("/proc/self").exists();
    if proc_mounted && Path::new(&format!("/proc/{pgid}")).exists() {
        return false;
    }
    signal_group(pgid, signal)
}

/// Signal the job's group (`pgid`), in the daemon: once the leader is
/// reaped, only if its id is not reused (`signal_group_of_reaped`).
pub fn signal_job_group(pgid: i32, signal: i32) -> bool {
    if JOB_LEADER_REAPED.load(Ordering::SeqCst) {
        signal_group_of_reaped(pgid, signal)
    } else {
        signal_group(pgid, signal)
    }
}

/// A wait status from what `waitid` says of a child (`si_code`, `si_status`).
pub fn wait_status(code: i32, status: i32) -> i32 {
    match code {
        libc::CLD_EXITED => (status & 0xff) << 8,
        libc::CLD_DUMPED => (status & 0x7f) | 0x80,
        _ => status & 0x7f, // CLD_KILLED
    }
}

/// Become the reaper of our orphaned descendants (Linux 3.4+), so zombies of
/// the job's children are ours to reap and "the group is gone" can be seen.
/// On older kernels this fails and init reaps them instead.
pub fn become_subreaper() {
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

/// The waiter thread: reaps every child (the job and, as subreaper, its
/// orphans) and reports the job's status once. Ends when no child is left.
pub fn spawn_waiter(job_pid: i32, events: SyncSender<Event>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("waiter".into())
        .stack_size(64 * 1024)
        .spawn_detached(move || {
            loop {
                // Look before reaping (WNOWAIT): while the job's leader is a
                // zombie its pid cannot be reused, so the guardian is told
                // its exit and every later signal checks for reuse before
                // the pid is freed.
                let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                let rc = unsafe {
                    libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT)
                };
                if rc < 0 {
                    match io::Error::last_os_error().raw_os_error() {
                        Some(libc::EINTR) => continue,
                        _ => return, // ECHILD: nothing left to reap
                    }
                }
                let pid = unsafe { info.si_pid() };
                // The job's own status, or an orphan of it reaped as subreaper:
                // either may be the last member of the group the supervisor waits on.
                let event = if pid == job_pid {
                    // Stamped here, when it happened, not when handled or sent.
                    let at = crate::os::clock::now();
                    let status = wait_status(info.si_code, unsafe { info.si_status() });
                    JOB_LEADER_REAPED.store(true, Ordering::SeqCst);
                    to_guardian::job_exited(status, at);
                    Event::ChildExited { status, at }
                } else {
                    Event::Reaped
                };
                let mut status = 0;
                while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
                    && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
                {
                }
                if events.send(event).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn a_childs_wait_status_is_read_from_waitid_as_waitpid_gives_it() {
        for script in ["exit 3", "exit 0", "kill -TERM $$", "kill -KILL $$"] {
            let child = Command::new("/bin/sh")
                .args(["-c", script])
                .spawn()
                .expect("sh");
            let pid = child.id() as i32;
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let rc = unsafe {
                libc::waitid(
                    libc::P_PID,
                    pid as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT,
                )
            };
            assert_eq!(rc, 0, "waitid: {}", io::Error::last_os_error());
            let seen = wait_status(info.si_code, unsafe { info.si_status() });
            let mut child = child;
            let status = child.wait().expect("wait");
            assert_eq!(
                seen,
                std::os::unix::process::ExitStatusExt::into_raw(status),
                "{script}"
            );
        }
    }

    /// What glibc (the host's NSS) says of `name`: `id -u`, `id -g`, `id -G`.
    fn id_says(name: &str) -> (u32, u32, BTreeSet<u32>) {
        let id = |flag: &str| {
            let out = Command::new("id")
                .args([flag, name])
                .output()
                .expect("run id");
            assert!(out.status.success(), "id {flag} {name}: {out:?}");
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(|w| w.parse::<u32>().expect("a number"))
                .collect::<Vec<u32>>()
        };
        (id("-u")[0], id("-g")[0], id("-G").into_iter().collect())
    }

    #[test]
    fn a_local_user_has_the_ids_and_groups_the_hosts_nss_gives() {
        let user = lookup_user("root").expect("root exists");
        let (uid, gid, groups) = id_says("root");
        assert_eq!((user.uid, user.gid), (uid, gid));
        assert_eq!(user.groups[0], gid, "primary group first");
        assert_eq!(user.groups.iter().copied().collect::<BTreeSet<_>>(), groups);
        assert_eq!(user.name, "root");
    }

    #[test]
    fn with_no_getent_a_local_user_still_resolves_from_the_files() {
        let user = lookup_user_with("root", &["/nonexistent/getent"], nss::NSS_BUDGET)
            .expect("root is in /etc/passwd");
        assert_eq!((user.uid, user.gid), (0, 0));
        assert!(user.groups.contains(&0));
    }

    #[test]
    fn an_unknown_user_names_the_cause_in_one_line() {
        let name = "sp-no-such-user-Zq7";
        let error = lookup_user_with(
            name,
            &["/nonexistent/getent", "/nonexistent/bin/getent"],
            nss::NSS_BUDGET,
        )
        .expect_err("unknown");
        assert!(
            error.contains("no getent (/nonexistent/getent or /nonexistent/bin/getent)")
                && error.contains("/etc/passwd")
                && !error.contains('\n'),
            "{error}"
        );
        let error = lookup_user(name).expect_err("unknown");
        assert!(
            error.contains("no such user") && error.contains("NSS"),
            "{error}"
        );
        assert!(lookup_user("bad\0name").is_err());
    }
}
