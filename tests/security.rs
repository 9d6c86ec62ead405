//! Security and bad input: races on the lock, planted symlinks and hard
//! links, the privilege drop, path escapes through the job name, inherited
//! descriptors, file modes, signals, and a hostile server. The wrapper runs
//! as root on every machine; nothing a local user, the job or the network
//! does may turn that into harm. docs/security.md states what each test
//! proves.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    Harness, Launch, Launched, TestDir, assert_same, log_text, log_text_at, pid_alive, pid_from,
    wait_until,
};

const MACHINE: &str = "test-minion";
const RESULT_WAIT: Duration = Duration::from_secs(60);

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Names in `dir` (empty if it does not exist).
fn entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A line of `/proc/<pid>/status`, e.g. `SigIgn`, without its label.
fn proc_status(pid: &str, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// Wait until `count` wrapper runs logged their end in `log`: the server's
/// ACK of `complete` reached them and they exited. (Dropping the harness
/// earlier would leave them retrying for their delivery window.)
fn wait_wrappers_done(log: &Path, count: usize) {
    assert!(
        wait_until(Duration::from_secs(20), || log_text_at(log)
            .matches("wrapper done")
            .count()
            >= count),
        "the wrapper did not finish: {}",
        log_text_at(log)
    );
}

// ---------------------------------------------------------------------------
// The overlap lock
// ---------------------------------------------------------------------------

#[test]
fn twenty_simultaneous_launches_run_the_job_exactly_once() {
    let dir = TestDir::new("race");
    let mut server = Harness::start(&dir);
    let instances: Vec<String> = (0..20).map(|i| format!("race_{i}")).collect();
    for instance in &instances {
        server.add_job("race", instance, &[MACHINE]);
    }
    let ran = dir.join("ran");
    let lock = dir.join("race.lock");
    let start = Arc::new(Barrier::new(instances.len()));
    let launches: Vec<_> = instances
        .iter()
        .map(|instance| {
            let launch = Launch::new(
                &server.url(),
                "race",
                instance,
                &format!("echo ran $SP_JOB_INSTANCE >> {}; sleep 3", ran.display()),
                &dir,
            )
            .env("SP_ALLOW_OVERLAP", "false")
            .env("SP_LOCKFILE", utf8(&lock));
            let start = start.clone();
            let instance = instance.clone();
            thread::spawn(move || {
                let command = launch.command();
                start.wait();
                (instance, Launch::run_command(command))
            })
        })
        .collect();
    let results: Vec<(String, Launched)> = launches
        .into_iter()
        .map(|t| t.join().expect("launch thread"))
        .collect();
    let winners: Vec<&(String, Launched)> =
        results.iter().filter(|(_, r)| r.code == Some(0)).collect();
    let refused: Vec<&(String, Launched)> = results
        .iter()
        .filter(|(_, r)| r.code == Some(254))
        .collect();
    assert_eq!(winners.len(), 1, "exactly one launch starts: {results:#?}");
    assert_eq!(refused.len(), 19, "the others are refused: {results:#?}");
    for (instance, launched) in &refused {
        assert!(
            launched
                .stderr
                .contains("LOCKFILE ERROR: Job race already running"),
            "{instance}: {launched:?}"
        );
    }
    // The winner's job runs to its end and is the only one that ever ran.
    let result = server
        .wait_result("race", MACHINE, RESULT_WAIT)
        .expect("the winner's result recorded");
    wait_wrappers_done(&dir.join("race.log"), 1);
    assert_eq!((result.retcode, result.starts), (Some(0), 1), "{result:?}");
    assert_eq!(
        std::fs::read_to_string(&ran).expect("the job ran"),
        format!("ran {}\n", winners[0].0),
        "exactly one job ran, the winner's"
    );
    assert!(
        wait_until(Duration::from_secs(10), || !lock.exists()),
        "the lock is released when the winner ends"
    );
}

/// Launch a job that would touch a marker against a lock path planted by
/// `plant`; it must fail naming the lock, and the job must not run.
fn refused_lock_path(name: &str, plant: impl FnOnce(&TestDir, &Path)) -> (TestDir, Launched) {
    let dir = TestDir::new(name);
    let mut server = Harness::start(&dir);
    server.add_job(name, &format!("{name}_1"), &[MACHINE]);
    let lock = dir.join("job.lock");
    plant(&dir, &lock);
    let marker = dir.join("job-ran");
    let launched = Launch::new(
        &server.url(),
        name,
        &format!("{name}_1"),
        &format!("touch {}", marker.display()),
        &dir,
    )
    .env("SP_ALLOW_OVERLAP", "false")
    .env("SP_LOCKFILE", utf8(&lock))
    .run();
    if launched.code == Some(0) {
        // A bug: let the daemon finish before the assertions fail.
        let _ = server.wait_result(name, MACHINE, RESULT_WAIT);
        wait_wrappers_done(&dir.join(&format!("{name}.log")), 1);
    }
    assert_ne!(launched.code, Some(0), "{name}: the launch must fail");
    assert_eq!(launched.code, Some(255), "{name}: {launched:?}");
    assert!(
        launched.stderr.contains("LOCKFILE ERROR: SP_LOCKFILE")
            && launched.stderr.contains(utf8(&lock)),
        "{name}: the message names the lock: {launched:?}"
    );
    assert!(!marker.exists(), "{name}: the job must not run");
    (dir, launched)
}

/// Content, modification time and inode, to prove a file was not written.
fn fingerprint(path: &Path) -> (String, i64, i64, u64) {
    let meta = std::fs::metadata(path).expect("metadata");
    (
        std::fs::read_to_string(path).expect("read"),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ino(),
    )
}

#[test]
fn a_symlinked_lockfile_is_refused_and_its_target_untouched() {
    let mut planted = None;
    let (dir, launched) = refused_lock_path("symlink", |dir, lock| {
        let target = dir.join("precious");
        std::fs::write(&target, "root's data\n").expect("write");
        planted = Some((target.clone(), fingerprint(&target)));
        std::os::unix::fs::symlink(&target, lock).expect("symlink");
    });
    assert!(launched.stderr.contains("symlink"), "{launched:?}");
    let (target, before) = planted.expect("planted");
    assert_eq!(fingerprint(&target), before, "content and mtime untouched");
    assert!(
        std::fs::symlink_metadata(dir.join("job.lock"))
            .expect("still there")
            .file_type()
            .is_symlink(),
        "the planted link is left alone"
    );

    // A dangling symlink must not create its target either.
    let (dir, _) = refused_lock_path("dangling", |dir, lock| {
        std::os::unix::fs::symlink(dir.join("created-through-link"), lock).expect("symlink");
    });
    assert!(!dir.join("created-through-link").exists());
}

#[test]
fn a_lock_path_that_is_a_fifo_or_a_directory_is_refused_without_hanging() {
    let (_, launched) = refused_lock_path("fifo", |_, lock| {
        let path = std::ffi::CString::new(utf8(lock)).expect("path");
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o666) }, 0, "mkfifo");
    });
    assert!(
        launched.elapsed < Duration::from_secs(5),
        "a FIFO must not block the open: {launched:?}"
    );
    refused_lock_path("directory", |_, lock| {
        std::fs::create_dir(lock).expect("mkdir");
    });
}

/// O_NOFOLLOW does not stop a hard link: a local user who links
/// `/tmp/sp_wrapper_<job>.lock` to a file of root's (possible on the fleet's
/// 2.6.32 kernels, which have no `fs.protected_hardlinks`) must not get that
/// file truncated and overwritten with a PID by the next root run.
#[test]
fn a_hard_linked_lockfile_is_refused_and_its_target_untouched() {
    let mut planted = None;
    let (_dir, _) = refused_lock_path("hardlink", |dir, lock| {
        let target = dir.join("precious");
        std::fs::write(&target, "root:$6$secret-hash:19000:0:99999:7:::\n").expect("write");
        planted = Some((target.clone(), fingerprint(&target)));
        std::fs::hard_link(&target, lock).expect("hard link");
    });
    let (target, before) = planted.expect("planted");
    assert_eq!(
        fingerprint(&target),
        before,
        "the hard-linked file was written through"
    );
}

// ---------------------------------------------------------------------------
// Privileges
// ---------------------------------------------------------------------------

/// Ignored by default, so a plain `cargo test` as a user shows it as ignored
/// with the reason rather than as passed; `./build.sh test` (CI, as root)
/// runs it with `--include-ignored`, and there it fails if it cannot run.
#[test]
#[ignore = "needs root and a user nobody: run as root with --include-ignored (./build.sh test does)"]
fn sp_user_gets_the_users_ids_groups_environment_and_no_capabilities() {
    assert!(
        is_root(),
        "SP_USER switching needs root: this test cannot run as uid {}",
        unsafe { libc::geteuid() }
    );
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let Some(entry) = passwd.lines().find(|l| l.starts_with("nobody:")) else {
        panic!("no user nobody in /etc/passwd: the SP_USER test cannot run here");
    };
    let fields: Vec<&str> = entry.split(':').collect();
    let (uid, gid, home, shell) = (fields[2], fields[3], fields[5], fields[6]);
    let groups_of_nobody = std::process::Command::new("id")
        .args(["-G", "nobody"])
        .output()
        .expect("id -G nobody");
    let expected_groups: BTreeSet<String> = String::from_utf8_lossy(&groups_of_nobody.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert!(
        !expected_groups.is_empty(),
        "id -G nobody: {groups_of_nobody:?}"
    );

    let dir = TestDir::new("user");
    let mut server = Harness::start(&dir);
    server.add_job("asuser", "asuser_1", &[MACHINE]);
    // Root's own environment, as a root Salt minion would pass it: the job
    // must get nobody's instead.
    let launch = Launch::new(
        &server.url(),
        "asuser",
        "asuser_1",
        "id -u; id -g; id -G; echo \"$HOME\"; echo \"$USER\"; echo \"$LOGNAME\"; \
         echo \"$SHELL\"; grep -E '^(Uid|Gid|CapPrm|CapEff|CapAmb):' /proc/self/status",
        &dir,
    )
    .env("SP_USER", "nobody")
    .env("SP_CWD", "/")
    .env("HOME", "/root")
    .env("USER", "root")
    .env("LOGNAME", "root")
    .env("SHELL", "/bin/bash");
    let launched = launch.run();
    assert_eq!(launched.code, Some(0), "{launched:?}");
    let result = server
        .wait_result("asuser", MACHINE, RESULT_WAIT)
        .expect("result recorded");
    wait_wrappers_done(&dir.join("asuser.log"), 1);
    assert_eq!(result.retcode, Some(0), "{result:?}");
    let lines: Vec<&str> = result.ret.lines().collect();
    assert!(lines.len() >= 7, "{:?}", result.ret);
    let expected_shell = if shell.is_empty() { "/bin/sh" } else { shell };
    assert_eq!(
        (lines[0], lines[1], lines[3], lines[4], lines[5], lines[6]),
        (uid, gid, home, "nobody", "nobody", expected_shell),
        "uid, gid, HOME, USER, LOGNAME, SHELL: {:?}",
        result.ret
    );
    let groups: BTreeSet<String> = lines[2].split_whitespace().map(str::to_string).collect();
    assert_eq!(groups, expected_groups, "supplementary groups");
    assert!(!groups.contains("0"), "root's group 0 leaked: {groups:?}");
    // Real, effective, saved and filesystem ids all dropped (a saved uid of 0
    // would let the job become root again), and no capability left.
    let status: Vec<&str> = lines[7..].to_vec();
    let field = |name: &str| {
        status
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(field("Uid"), [uid; 4], "{status:?}");
    assert_eq!(field("Gid"), [gid; 4], "{status:?}");
    for cap in ["CapPrm", "CapEff"] {
        let mask = field(cap);
        assert!(
            mask.len() == 1 && mask[0].bytes().all(|b| b == b'0'),
            "{cap} not empty: {status:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------

/// Run `name` with the log in `<test>/logs` and the DEFAULT lock file, and
/// check the files it used are `<logs>/<encoded>.log` and
/// `/tmp/sp_wrapper_<encoded>.lock`, and that nothing else was created next
/// to the log directory or in /tmp (there: no new name containing `tag`, a
/// part of the name unique to this run; other tests share /tmp).
fn contained_run(
    dir: &TestDir,
    server: &mut Harness,
    name: &str,
    instance: &str,
    encoded: &str,
    tag: &str,
) {
    let logs = dir.join("logs");
    let default_lock = PathBuf::from(format!("/tmp/sp_wrapper_{encoded}.lock"));
    let _ = std::fs::remove_file(&default_lock);
    let test_dir_before = entries(&dir.path);
    let tmp_before = entries(Path::new("/tmp"));
    server.add_job(name, instance, &[MACHINE]);
    // The job shows its grandparent (the guardian, the daemon's parent, which
    // holds the lock) and what the lock file holds.
    let command = format!(
        "cut -d' ' -f4 /proc/$PPID/stat; cat {}",
        default_lock.display()
    );
    let launched = Launch::new(&server.url(), name, instance, &command, dir)
        .env("SP_WRAPPER_LOGDIR", utf8(&logs))
        .env("SP_ALLOW_OVERLAP", "false")
        .unset("SP_LOCKFILE")
        .run();
    assert_eq!(launched.code, Some(0), "{name:?}: {launched:?}");
    let result = server
        .wait_result(name, MACHINE, RESULT_WAIT)
        .expect("result recorded");
    let lines: Vec<&str> = result.ret.lines().collect();
    wait_wrappers_done(&logs.join(format!("{encoded}.log")), 1);
    assert!(
        lines.len() == 2 && lines[0] == lines[1] && lines[0].parse::<i32>().is_ok(),
        "{name:?}: the default lock {} was held by the guardian: {:?}",
        default_lock.display(),
        result.ret
    );
    assert!(
        wait_until(Duration::from_secs(10), || !default_lock.exists()),
        "{name:?}: the lock is removed at the end"
    );
    assert!(
        entries(&logs).contains(&format!("{encoded}.log")),
        "{name:?}: log {encoded}.log in {}: {:?}",
        logs.display(),
        entries(&logs)
    );
    let new_here: Vec<String> = entries(&dir.path)
        .difference(&test_dir_before)
        .cloned()
        .collect();
    assert!(
        new_here.iter().all(|n| n == "logs"),
        "{name:?}: created next to the log directory: {new_here:?}"
    );
    let new_in_tmp: Vec<String> = entries(Path::new("/tmp"))
        .difference(&tmp_before)
        .filter(|n| n.contains(tag))
        .cloned()
        .collect();
    assert!(
        new_in_tmp.is_empty(),
        "{name:?}: left in /tmp: {new_in_tmp:?}"
    );
}

#[test]
fn job_names_cannot_escape_the_log_and_lock_directories() {
    let dir = TestDir::new("escape");
    let mut server = Harness::start(&dir);
    let logs = dir.join("logs");
    // Unique per test run: the default lock is in the shared /tmp.
    let tag = std::process::id();

    let escape = format!("../escape-{tag}");
    contained_run(
        &dir,
        &mut server,
        &escape,
        "escape_1",
        &format!("%2E.%2Fescape-{tag}"),
        &format!("escape-{tag}"),
    );
    assert!(!Path::new(&format!("/tmp/escape-{tag}.lock")).exists());
    assert!(!Path::new("/tmp/sp_wrapper_..").exists());
    assert!(!dir.join(&format!("escape-{tag}.log")).exists());

    let nested = format!("nested-{tag}/dir/job");
    let nested_dir_before = Path::new(&format!("/tmp/sp_wrapper_nested-{tag}")).exists();
    contained_run(
        &dir,
        &mut server,
        &nested,
        "nested_1",
        &format!("nested-{tag}%2Fdir%2Fjob"),
        &format!("nested-{tag}"),
    );
    assert!(!logs.join(format!("nested-{tag}")).exists());
    assert!(!nested_dir_before && !Path::new(&format!("/tmp/sp_wrapper_nested-{tag}")).exists());

    // The longest accepted name (200 bytes once encoded) works.
    let longest = "y".repeat(200);
    server.add_job(&longest, "longest_1", &[MACHINE]);
    let launched = Launch::new(&server.url(), &longest, "longest_1", "echo ok", &dir)
        .env("SP_WRAPPER_LOGDIR", utf8(&logs))
        .run();
    assert_eq!(launched.code, Some(0), "{launched:?}");
    let result = server
        .wait_result(&longest, MACHINE, RESULT_WAIT)
        .expect("result recorded");
    wait_wrappers_done(&logs.join(format!("{longest}.log")), 1);
    assert_eq!(result.ret, "ok\n");
    assert!(logs.join(format!("{longest}.log")).exists());

    // Longer ones are refused at launch, naming the variable, creating nothing.
    let logs_before = entries(&logs);
    for (what, name) in [
        ("300 bytes", "x".repeat(300)),
        ("201 bytes once encoded", "/".repeat(67)),
        ("multibyte", "é".repeat(40)),
    ] {
        let launched = Launch::new(&server.url(), &name, "long_1", "true", &dir)
            .env("SP_WRAPPER_LOGDIR", utf8(&logs))
            .env("SP_ALLOW_OVERLAP", "false")
            .run();
        assert_eq!(launched.code, Some(1), "{what}: {launched:?}");
        assert!(
            launched.stderr.contains("SP_JOB_NAME") && launched.stderr.contains("too long"),
            "{what}: {launched:?}"
        );
    }
    assert_eq!(entries(&logs), logs_before, "refused names created files");
}

// ---------------------------------------------------------------------------
// Descriptors and file modes
// ---------------------------------------------------------------------------

#[test]
fn the_job_inherits_only_stdin_stdout_and_stderr() {
    let dir = TestDir::new("fds");
    let mut server = Harness::start(&dir);
    let leak = std::fs::File::create(dir.join("leaked-file")).expect("file");
    let leak_fd = std::os::fd::AsRawFd::as_raw_fd(&leak);
    // `ls` is not the last command, so the shell forks it (rather than
    // exec'ing it) and stays idle in wait(): at that moment the shell ($$)
    // holds exactly what it inherited, since sh opens nothing for `-c`. The
    // directory `ls` opens is in ls's own table, not the shell's. Then:
    // what is on the job's stdin, and the descriptors of its parent (the
    // daemon, or the foreground wrapper).
    let job = "ls /proc/$$/fd; echo --; readlink /proc/$$/fd/0; echo --; \
               readlink /proc/$PPID/fd/*; true";
    for (instance, foreground) in [("fds_1", false), ("fds_2", true)] {
        server.add_job("fds", instance, &[MACHINE]);
        let mut launch = Launch::new(&server.url(), "fds", instance, job, &dir);
        if foreground {
            launch = launch.arg("--foreground");
        }
        let mut command = launch.command();
        unsafe {
            // The launcher hands over extra descriptors without close-on-exec,
            // as a careless parent (Salt, a shell, cron) may.
            command.pre_exec(move || {
                for target in [7, 100] {
                    if libc::dup2(leak_fd, target) < 0
                        || libc::fcntl(target, libc::F_SETFD, 0) < 0
                        || libc::fcntl(target, libc::F_GETFD) & libc::FD_CLOEXEC != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let launched = Launch::run_command(command);
        assert_eq!(launched.code, Some(0), "{launched:?}");
        let result = server
            .wait_result("fds", MACHINE, RESULT_WAIT)
            .expect("result recorded");
        wait_wrappers_done(&dir.join("fds.log"), if foreground { 2 } else { 1 });
        let sections: Vec<&str> = result.ret.split("--\n").collect();
        assert_eq!(sections.len(), 3, "{:?}", result.ret);
        assert_eq!(
            sections[0], "0\n1\n2\n",
            "the job's descriptors (foreground: {foreground})"
        );
        assert_eq!(sections[1], "/dev/null\n", "the job's stdin");
        assert!(
            !sections[2].contains("leaked-file"),
            "the wrapper kept the inherited descriptor (foreground: {foreground}): {}",
            sections[2]
        );
    }
}

#[test]
fn the_log_and_its_directory_are_not_world_readable_whatever_the_umask() {
    let dir = TestDir::new("perms");
    let mut server = Harness::start(&dir);
    server.add_job("perms", "perms_1", &[MACHINE]);
    let logs = dir.join("new/logs");
    let mut command = Launch::new(&server.url(), "perms", "perms_1", "echo secret-token", &dir)
        .env("SP_WRAPPER_LOGDIR", utf8(&logs))
        .command();
    unsafe {
        // The most permissive umask: the modes must be explicit.
        command.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let launched = Launch::run_command(command);
    assert_eq!(launched.code, Some(0), "{launched:?}");
    server
        .wait_result("perms", MACHINE, RESULT_WAIT)
        .expect("result recorded");
    wait_wrappers_done(&logs.join("perms.log"), 1);
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o7777;
    let log = logs.join("perms.log");
    assert!(
        log_text_at(&log).contains("starting job"),
        "the log was written"
    );
    assert_eq!(mode(&log) & 0o007, 0, "log mode {:o}", mode(&log));
    assert_eq!(mode(&log), 0o640, "log mode");
    for created in [dir.join("new"), logs.clone()] {
        assert_eq!(
            mode(&created),
            0o750,
            "directory {} created by the wrapper",
            created.display()
        );
    }
}

// ---------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------

/// Run `launch` with `ignored` set to SIG_IGN in the launcher, as a parent
/// started with `nohup` (SIGHUP) or as a background job of a script (SIGINT)
/// leaves them: dispositions survive exec and fork.
fn run_ignoring(launch: &Launch, ignored: &'static [i32]) -> Launched {
    let mut command = launch.command();
    unsafe {
        command.pre_exec(move || {
            for &signal in ignored {
                if libc::signal(signal, libc::SIG_IGN) == libc::SIG_ERR {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Launch::run_command(command)
}

fn signal_kills_the_job_and_reports_143(signal: i32, name: &str, ignored: &'static [i32]) {
    let dir = TestDir::new(name);
    let mut server = Harness::start(&dir);
    let instance = format!("{name}_1");
    server.add_job(name, &instance, &[MACHINE]);
    let daemon_file = dir.join("daemon.pid");
    let sleeper_file = dir.join("sleeper.pid");
    let command = format!(
        "echo $PPID > {}; sleep 60 & echo $! > {}; echo waiting; wait",
        daemon_file.display(),
        sleeper_file.display()
    );
    let launched = run_ignoring(
        &Launch::new(&server.url(), name, &instance, &command, &dir),
        ignored,
    );
    assert_eq!(launched.code, Some(0), "{launched:?}");
    let daemon = pid_from(&daemon_file);
    assert!(
        std::fs::read_link(format!("/proc/{daemon}/exe")).is_ok_and(|exe| exe
            .to_string_lossy()
            .contains(&common::wrapper_image_name())),
        "the job's parent is the wrapper"
    );
    assert!(
        wait_until(Duration::from_secs(20), || server
            .result(name, MACHINE)
            .ret
            .contains("waiting")),
        "output flows"
    );
    // Signal once `sleep` has really been exec'd: a signal that lands in a
    // shell's fork-to-exec window is a race inside the job, not the wrapper.
    let sleeper = pid_from(&sleeper_file);
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(
            format!("/proc/{sleeper}/comm")
        )
        .is_ok_and(|c| c.trim() == "sleep")),
        "sleep started"
    );
    let signalled = Instant::now();
    assert_eq!(unsafe { libc::kill(daemon, signal) }, 0, "kill");
    let result = server
        .wait_result(name, MACHINE, RESULT_WAIT)
        .expect("result recorded");
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "the job must die of SIGTERM, not wait for SIGKILL: {:?}",
        signalled.elapsed()
    );
    assert_eq!(result.retcode, Some(143), "{result:?}");
    assert!(
        result.ret.contains("[Job terminated by user request]"),
        "{:?}",
        result.ret
    );
    assert!(
        wait_until(Duration::from_secs(5), || !pid_alive(sleeper)),
        "the job's background process was killed too"
    );
    wait_wrappers_done(&dir.join(&format!("{name}.log")), 1);
    assert!(!pid_alive(daemon), "the wrapper exited");
}

#[test]
fn sigterm_to_the_wrapper_kills_the_job_and_reports_143() {
    signal_kills_the_job_and_reports_143(libc::SIGTERM, "sigterm", &[]);
}

/// Also when the launcher ignored SIGINT and SIGTERM: the wrapper must still
/// hear them (it blocks them and takes them with sigwait; Linux never
/// discards a blocked signal as ignored).
#[test]
fn sigint_to_the_wrapper_kills_the_job_and_reports_143_even_if_ignored_by_its_launcher() {
    signal_kills_the_job_and_reports_143(
        libc::SIGINT,
        "sigint",
        &[libc::SIGINT, libc::SIGTERM, libc::SIGQUIT],
    );
}

/// Start a job that writes `$PPID` to `daemon.pid`, then waits for `go` and
/// prints `after`; returns the daemon's pid.
fn waiting_job(
    server: &mut Harness,
    dir: &TestDir,
    name: &str,
    after: &str,
    ignored: &'static [i32],
) -> i32 {
    let instance = format!("{name}_1");
    server.add_job(name, &instance, &[MACHINE]);
    let command = format!(
        "echo $PPID > {}; echo before; while [ ! -f {} ]; do sleep 0.05; done; echo {after}",
        dir.join("daemon.pid").display(),
        dir.join("go").display()
    );
    let launched = run_ignoring(
        &Launch::new(&server.url(), name, &instance, &command, dir),
        ignored,
    );
    assert_eq!(launched.code, Some(0), "{launched:?}");
    let daemon = pid_from(&dir.join("daemon.pid"));
    assert!(
        wait_until(Duration::from_secs(20), || server
            .result(name, MACHINE)
            .ret
            .contains("before")),
        "output flows"
    );
    daemon
}

/// Launched under `nohup` (SIGHUP ignored), as a wrapper started by hand may be.
#[test]
fn sighup_makes_the_wrapper_reopen_its_log() {
    let dir = TestDir::new("sighup");
    let mut server = Harness::start(&dir);
    let daemon = waiting_job(&mut server, &dir, "hup", "after-rotation", &[libc::SIGHUP]);
    let log = dir.join("hup.log");
    let rotated = dir.join("hup.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    assert_eq!(unsafe { libc::kill(daemon, libc::SIGHUP) }, 0, "kill");
    assert!(
        wait_until(Duration::from_secs(10), || log.exists()),
        "SIGHUP reopened the log at its path"
    );
    std::fs::write(dir.join("go"), "").expect("go");
    let result = server
        .wait_result("hup", MACHINE, RESULT_WAIT)
        .expect("result recorded");
    assert_eq!(
        (result.ret.as_str(), result.retcode),
        ("before\nafter-rotation\n", Some(0))
    );
    // What happened after the SIGHUP (the output sent after the rotation,
    // the end) is in the new file; the start only in the old one.
    assert!(
        wait_until(Duration::from_secs(10), || log_text(&dir, "hup")
            .contains("wrapper done")),
        "{}",
        log_text(&dir, "hup")
    );
    let new = log_text(&dir, "hup");
    assert!(
        new.contains("SIGHUP: log file reopened") && new.contains("job finished with retcode 0"),
        "{new}"
    );
    assert!(!new.contains("starting job"), "{new}");
    let old = std::fs::read_to_string(&rotated).expect("rotated log");
    assert!(
        old.contains("starting job") && !old.contains("wrapper done"),
        "{old}"
    );
}

#[test]
fn sigpipe_never_kills_the_wrapper() {
    let dir = TestDir::new("sigpipe");
    let mut server = Harness::start(&dir);
    let daemon = waiting_job(&mut server, &dir, "pipe", "survived", &[]);
    // The wrapper ignores SIGPIPE (bit 13 of SigIgn), so even one sent on
    // purpose does nothing; a closed socket is an error value instead.
    let ignored = u64::from_str_radix(&proc_status(&daemon.to_string(), "SigIgn"), 16)
        .expect("SigIgn of the daemon");
    assert_ne!(
        ignored & (1 << (libc::SIGPIPE - 1)),
        0,
        "SigIgn {ignored:x}"
    );
    for _ in 0..3 {
        assert_eq!(unsafe { libc::kill(daemon, libc::SIGPIPE) }, 0, "kill");
    }
    std::fs::write(dir.join("go"), "").expect("go");
    let result = server
        .wait_result("pipe", MACHINE, RESULT_WAIT)
        .expect("result recorded: SIGPIPE did not kill the wrapper");
    assert_eq!(
        (result.ret.as_str(), result.retcode),
        ("before\nsurvived\n", Some(0))
    );
    assert!(
        wait_until(Duration::from_secs(10), || log_text(&dir, "pipe")
            .contains("wrapper done")),
        "{}",
        log_text(&dir, "pipe")
    );
}

/// The signal dispositions of `grep`, a plain child of whoever runs it:
/// (SigBlk, SigIgn) as bit masks.
fn signal_masks(status_lines: &str) -> (u64, u64) {
    let field = |name: &str| {
        status_lines
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or_else(|| panic!("no {name} in {status_lines:?}"))
    };
    (field("SigBlk"), field("SigIgn"))
}

/// The wrapper blocks SIGTERM, SIGINT and SIGHUP and ignores SIGPIPE for
/// itself; the job must start with none of that, even when the launcher
/// had them ignored, and with nothing else added to what any child of the
/// launcher gets.
#[test]
fn the_job_starts_with_no_blocked_or_ignored_signals() {
    const PROBE: &str = "grep -E '^Sig(Blk|Ign):' /proc/self/status";
    const OURS: &[i32] = &[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE];
    // What a child of this test process starts with anyway (glibc's
    // posix_spawn, for one, leaves its internal signals 32 and 33 ignored).
    let baseline = std::process::Command::new("sh")
        .args(["-c", PROBE])
        .output()
        .expect("baseline");
    let (_, baseline_ignored) = signal_masks(&String::from_utf8_lossy(&baseline.stdout));
    let dir = TestDir::new("sigstate");
    let mut server = Harness::start(&dir);
    const NONE: &[i32] = &[];
    for (instance, ignored) in [("sigstate_1", NONE), ("sigstate_2", OURS)] {
        server.add_job("sigstate", instance, &[MACHINE]);
        let launched = run_ignoring(
            &Launch::new(&server.url(), "sigstate", instance, PROBE, &dir),
            ignored,
        );
        assert_eq!(launched.code, Some(0), "{launched:?}");
        let result = server
            .wait_result("sigstate", MACHINE, RESULT_WAIT)
            .expect("result recorded");
        wait_wrappers_done(
            &dir.join("sigstate.log"),
            if instance == "sigstate_1" { 1 } else { 2 },
        );
        let (blocked, ignored_in_job) = signal_masks(&result.ret);
        assert_eq!(
            blocked, 0,
            "the job starts with signals blocked: {blocked:x}"
        );
        for &signal in OURS {
            assert_eq!(
                ignored_in_job & (1 << (signal - 1)),
                0,
                "the job starts with signal {signal} ignored (launcher ignored {ignored:?})"
            );
        }
        assert_eq!(
            ignored_in_job & !baseline_ignored,
            0,
            "the wrapper added ignored signals: {ignored_in_job:x} vs {baseline_ignored:x}"
        );
    }
}

// ---------------------------------------------------------------------------
// A hostile server
// ---------------------------------------------------------------------------

/// A server with the real endpoint's per-socket sequencing that greets every
/// connection with garbage, answers `sync_request` with an absurd number
/// first, sprinkles garbage between its ACKs, and on the first two
/// connections sends a message over the 1 MiB cap (one 2 MiB frame, then a
/// 2.5 MiB message in 64 KiB fragments) after which it goes silent but keeps
/// the socket open: only the wrapper can end those connections.
mod hostile {
    use std::collections::BTreeMap;
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};
    use std::thread;

    use serde_json::{Value, json};
    use tungstenite::Message;
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};

    #[derive(Default, Debug)]
    pub struct Seen {
        pub appended: String,
        pub retcode: Option<i64>,
        pub connections: u32,
        /// Connections that got an oversized message.
        pub oversized: Vec<u32>,
        /// ... and that the wrapper then closed (we never do).
        pub closed_by_wrapper: Vec<u32>,
        /// Frames the wrapper sent, by type.
        pub received: BTreeMap<String, u32>,
    }

    /// Sent on every connection before the `connect` ACK.
    fn greeting(instance: &str) -> Vec<Message> {
        let mut texts: Vec<String> = [
            "not json {",
            "",
            "[1,2]",
            "42",
            "\"x\"",
            "null",
            "{}",
            r#"{"type":7}"#,
            r#"{"type":null}"#,
            r#"{"type":"ack","ack_type":"output","seq":"0"}"#,
            r#"{"type":"ack","ack_type":"output","seq":1.5}"#,
            r#"{"type":"ack","ack_type":"output"}"#,
            r#"{"type":"ack","ack_type":"output","seq":99999999999999999999999}"#,
            r#"{"type":"ack","ack_type":"output","seq":999999}"#,
            r#"{"type":"ack","ack_type":"output","seq":-3}"#,
            r#"{"type":"ack","ack_type":"complete","seq":0}"#,
            r#"{"type":"nack","expected_seq":"x"}"#,
            r#"{"type":"nack"}"#,
            r#"{"type":"nack","nack_type":"out_of_order","expected_seq":-5,"received_seq":0}"#,
            r#"{"type":"nack","nack_type":"out_of_order","expected_seq":4611686018427387904,"received_seq":0}"#,
            r#"{"type":"sync_response","last_seq":"7"}"#,
            r#"{"type":"sync_response","last_seq":123456789}"#,
            r#"{"type":"kill","job_instance":{"x":1}}"#,
            r#"{"type":"surprise","data":[1,2,3]}"#,
            r#"{"type":"ACK","ack_type":"output","seq":0}"#,
            r#"{"type":"error","code":"JOB_NOT_FOUND","message":"not in answer to complete"}"#,
            r#"{"type":"error","code":"SOMETHING","message":"noise"}"#,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        texts.extend(kills_for_others(instance));
        let mut frames: Vec<Message> = texts.into_iter().map(Message::text).collect();
        frames.push(Message::binary(vec![0u8, 159, 146, 150]));
        frames
    }

    fn kills_for_others(instance: &str) -> Vec<String> {
        vec![
            json!({"type": "kill", "job_name": "other", "job_instance": "someone_else", "machine": super::MACHINE}).to_string(),
            json!({"type": "kill", "job_name": "hostile", "job_instance": instance, "machine": "another-machine"}).to_string(),
        ]
    }

    /// Sent between ACKs: nothing here may retire, renumber, kill or end.
    fn interjection(instance: &str, expected: u64) -> Vec<Message> {
        let mut texts = vec![
            r#"{"type":"ack","ack_type":"output","seq":999999}"#.to_string(),
            r#"{"type":"ack","ack_type":"output","seq":-3}"#.to_string(),
            r#"{"type":"ack","ack_type":"output","seq":9223372036854775807}"#.to_string(),
            r#"{"type":"nack","nack_type":"out_of_order","expected_seq":-5,"received_seq":0}"#
                .to_string(),
            r#"{"type":"nack","nack_type":"out_of_order","expected_seq":4611686018427387904,"received_seq":0}"#
                .to_string(),
            json!({"type": "nack", "nack_type": "out_of_order", "expected_seq": expected + 1000, "received_seq": expected}).to_string(),
            r#"{"type":"sync_response","last_seq":999999}"#.to_string(),
            r#"{"type":"sync_response","last_seq":-1}"#.to_string(),
            r#"{"type":"ack","ack_type":"output","seq":"1"}"#.to_string(),
            r#"{"type":"surprise"}"#.to_string(),
            "]".to_string(),
        ];
        texts.extend(kills_for_others(instance));
        let mut frames: Vec<Message> = texts.into_iter().map(Message::text).collect();
        frames.push(Message::binary(b"binary noise".to_vec()));
        frames
    }

    /// First answer to `sync_request`, per connection: each claims more than
    /// was ever sent, or is negative.
    const ABSURD_SYNC: [i64; 4] = [123_456_789, -5, 1 << 62, i64::MAX];

    fn oversized(connection: u32) -> Vec<Message> {
        if connection == 1 {
            let pad = "x".repeat(2 << 20);
            return vec![Message::text(format!(
                "{{\"type\":\"surprise\",\"pad\":\"{pad}\"}}"
            ))];
        }
        // 40 fragments of 64 KiB: each under the cap, the message over it.
        let mut frames = vec![Message::Frame(Frame::message(
            b"{\"type\":\"surprise\",\"pad\":\"".to_vec(),
            OpCode::Data(Data::Text),
            false,
        ))];
        for _ in 0..40 {
            frames.push(Message::Frame(Frame::message(
                vec![b'y'; 64 << 10],
                OpCode::Data(Data::Continue),
                false,
            )));
        }
        frames.push(Message::Frame(Frame::message(
            b"\"}".to_vec(),
            OpCode::Data(Data::Continue),
            true,
        )));
        frames
    }

    /// What the server does beyond the garbage it always sends.
    #[derive(Clone, Copy)]
    pub enum Plan {
        /// On connections 1 and 2, after two ACKs: a message over 1 MiB,
        /// then silence on a socket kept open.
        Oversized,
        /// On every connection, before the `connect` ACK: this many frames
        /// of ~1 MB each whose strings the wrapper may be tempted to log.
        LogFlood(usize),
    }

    /// Frames under the size cap whose every string is long: an error, a kill
    /// for another instance, an unknown type.
    fn flood(count: usize) -> Vec<Message> {
        let long = "z".repeat(1_000_000 / 3);
        (0..count)
            .map(|i| {
                Message::text(match i % 3 {
                    0 => json!({"type": "error", "code": long, "message": long}).to_string(),
                    1 => json!({"type": "kill", "job_name": long, "job_instance": long, "machine": long})
                        .to_string(),
                    _ => json!({"type": long}).to_string(),
                })
            })
            .collect()
    }

    pub fn start(instance: &'static str, plan: Plan) -> (u16, Arc<Mutex<Seen>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = shared.clone();
                thread::spawn(move || serve(stream, instance, plan, &seen));
            }
        });
        (port, seen)
    }

    fn serve(stream: std::net::TcpStream, instance: &str, plan: Plan, seen: &Mutex<Seen>) {
        let Ok(mut ws) = tungstenite::accept(stream) else {
            return;
        };
        let connection = {
            let mut s = seen.lock().expect("seen");
            s.connections += 1;
            s.connections
        };
        let mut expected = 0u64;
        let mut last_acked = -1i64;
        let mut acked_here = 0u32;
        let mut silent = false;
        let ended = |silent: bool| {
            if silent {
                seen.lock()
                    .expect("seen")
                    .closed_by_wrapper
                    .push(connection);
            }
        };
        loop {
            let message = match ws.read() {
                Ok(message) => message,
                Err(_) => return ended(silent),
            };
            let Message::Text(text) = message else {
                continue;
            };
            let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            let kind = frame["type"].as_str().unwrap_or("?").to_string();
            *seen
                .lock()
                .expect("seen")
                .received
                .entry(kind.clone())
                .or_default() += 1;
            if silent {
                continue;
            }
            let mut replies: Vec<Message> = Vec::new();
            match kind.as_str() {
                "connect" => {
                    replies.extend(greeting(instance));
                    if let Plan::LogFlood(count) = plan {
                        replies.extend(flood(count));
                    }
                    replies.push(Message::text(
                        json!({"type": "ack", "ack_type": "connect"}).to_string(),
                    ));
                }
                "start" if frame["job_instance"] == instance => {
                    replies.push(Message::text(
                        json!({"type": "ack", "ack_type": "start"}).to_string(),
                    ));
                }
                "sync_request" => {
                    let absurd = ABSURD_SYNC[(connection as usize - 1) % ABSURD_SYNC.len()];
                    for last_seq in [absurd, last_acked] {
                        replies.push(Message::text(
                            json!({"type": "sync_response", "last_seq": last_seq}).to_string(),
                        ));
                    }
                }
                "output" => {
                    let Some(seq) = frame["seq"].as_u64() else {
                        continue;
                    };
                    if seq == expected {
                        seen.lock()
                            .expect("seen")
                            .appended
                            .push_str(frame["data"].as_str().unwrap_or_default());
                        expected += 1;
                        last_acked = seq as i64;
                        acked_here += 1;
                    }
                    // Appended now, or a duplicate: ACK it; a gap: NACK it.
                    if seq < expected {
                        replies.push(Message::text(
                            json!({"type": "ack", "ack_type": "output", "seq": seq}).to_string(),
                        ));
                    } else {
                        replies.push(Message::text(
                            json!({"type": "nack", "nack_type": "out_of_order", "expected_seq": expected, "received_seq": seq})
                                .to_string(),
                        ));
                    }
                    if acked_here % 2 == 0 && seq + 1 == expected {
                        replies.extend(interjection(instance, expected));
                    }
                    let oversize = matches!(plan, Plan::Oversized) && connection <= 2;
                    if oversize && acked_here == 2 && seq + 1 == expected {
                        replies.extend(oversized(connection));
                        seen.lock().expect("seen").oversized.push(connection);
                        silent = true;
                    }
                }
                "complete" => {
                    seen.lock().expect("seen").retcode = frame["retcode"].as_i64();
                    replies.push(Message::text(
                        json!({"type": "ack", "ack_type": "complete", "seq": frame["seq"]})
                            .to_string(),
                    ));
                }
                _ => {}
            }
            for reply in replies {
                if ws.send(reply).is_err() {
                    return ended(silent);
                }
            }
        }
    }
}

#[test]
fn a_hostile_server_cannot_break_delivery_or_the_job() {
    let dir = TestDir::new("hostile");
    let (port, seen) = hostile::start("hostile_1", hostile::Plan::Oversized);
    // 2,000 numbered lines over about 2 s, then exit 5.
    let command = "i=0; while [ $i -lt 2000 ]; do echo \"line $i\"; i=$((i+1)); \
                   if [ $((i % 100)) -eq 0 ]; then sleep 0.1; fi; done; exit 5";
    let launched = Launch::new(
        &format!("ws://127.0.0.1:{port}"),
        "hostile",
        "hostile_1",
        command,
        &dir,
    )
    .env("SP_OUTPUT_INTERVAL_MS", "100")
    .run();
    assert_eq!(launched.code, Some(0), "{launched:?}");
    assert!(
        wait_until(Duration::from_secs(90), || seen
            .lock()
            .expect("seen")
            .retcode
            .is_some()),
        "no complete; seen {:?}; log: {}",
        seen.lock().expect("seen").received,
        log_text(&dir, "hostile")
    );
    wait_wrappers_done(&dir.join("hostile.log"), 1);
    let seen = seen.lock().expect("seen");
    let log = log_text(&dir, "hostile");
    assert_eq!(seen.retcode, Some(5), "the job's own result: not killed");
    let expected: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    assert_same(&seen.appended, &expected, "output through a hostile server");
    assert_eq!(
        seen.oversized,
        [1, 2],
        "both oversized messages were sent: {seen:?}"
    );
    assert_eq!(
        seen.closed_by_wrapper,
        [1, 2],
        "the wrapper itself dropped the connections that sent them: {seen:?}"
    );
    assert!(seen.connections >= 3, "{seen:?}");
    assert!(
        log.matches("connection lost: receive failed").count() >= 2,
        "{log}"
    );
    assert!(
        !seen.received.contains_key("killed") && !seen.received.contains_key("error"),
        "the wrapper neither obeyed a foreign kill nor reported an error: {:?}",
        seen.received
    );
    // The garbage really reached the supervisor (and was ignored there).
    assert!(
        log.contains("ignored a kill for another instance")
            && log.contains("ignored a frame from the server"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

/// Whatever a server sends, the wrapper's log grows by a bounded amount per
/// frame: strings from the network are cut before they are logged, or a
/// server could fill the minion's /var/log (the default log level, normal).
#[test]
fn a_hostile_server_cannot_fill_the_disk_through_the_log() {
    let dir = TestDir::new("flood");
    let (port, seen) = hostile::start("flood_1", hostile::Plan::LogFlood(30));
    let launched = Launch::new(
        &format!("ws://127.0.0.1:{port}"),
        "flood",
        "flood_1",
        "echo hi",
        &dir,
    )
    .env("SP_WRAPPER_LOGLEVEL", "normal")
    .run();
    assert_eq!(launched.code, Some(0), "{launched:?}");
    assert!(
        wait_until(Duration::from_secs(60), || seen
            .lock()
            .expect("seen")
            .retcode
            .is_some()),
        "no complete"
    );
    assert!(
        wait_until(Duration::from_secs(10), || log_text(&dir, "flood")
            .contains("wrapper done")),
        "the wrapper finished"
    );
    let seen = seen.lock().expect("seen");
    assert_eq!((seen.appended.as_str(), seen.retcode), ("hi\n", Some(0)));
    let size = std::fs::metadata(dir.join("flood.log")).expect("log").len();
    assert!(
        size < 256 << 10,
        "30 frames of 1 MB made the log {size} bytes: the server writes to our disk"
    );
}
