//! Security and bad input: races on the lock, planted symlinks and hard
//! links, the privilege drop, path escapes through the job name, inherited
//! descriptors, file modes, signals, and a hostile server. The wrapper runs
//! as root on every machine; nothing a local user, the job or the network
//! does may turn that into harm. docs/security.md says more of each.
//!
//! | section | test | proves |
//! |---|---|---|
//! | the overlap lock | `twenty_simultaneous_launches_run_the_job_exactly_once` | 20 racing launches, overlap off: one job runs |
//! | | `a_symlinked_lockfile_is_refused_and_its_target_untouched` | no write through a planted symlink |
//! | | `a_lock_path_that_is_a_fifo_or_a_directory_is_refused_without_hanging` | odd file types refused at once |
//! | | `a_hard_linked_lockfile_is_refused_and_its_target_untouched` | a hard link to someone's file is refused |
//! | privileges | `sp_user_gets_the_users_ids_groups_environment_and_no_capabilities` | `SP_USER`: uid, gid, groups, HOME, no caps (root only; ignored with its reason otherwise) |
//! | | `sp_user_known_only_to_nss_runs_with_its_directory_ids_and_groups` | a directory user (and a local user's directory group), through the host's NSS (root and libnss-extrausers; ignored otherwise) |
//! | paths | `job_names_cannot_escape_the_log_and_lock_directories` | `../` and friends stay inside the log and lock dirs |
//! | descriptors and modes | `the_job_inherits_only_stdin_stdout_and_stderr` | no descriptor of ours leaks into the job |
//! | | `the_log_and_its_directory_are_not_world_readable_whatever_the_umask` | 0640 / 0750 under umask 0 |
//! | signals | `sigterm_to_the_wrapper_kills_the_job_and_reports_143` | SIGTERM to the agent: the group dies, 143 recorded |
//! | | `sigint_to_the_wrapper_kills_the_job_and_reports_143_even_if_ignored_by_its_launcher` | also when the launcher ignored SIGINT |
//! | | `sighup_makes_the_wrapper_reopen_its_log` | logrotate's SIGHUP reopens the log |
//! | | `sigpipe_never_kills_the_wrapper` | SIGPIPE is ignored |
//! | | `the_job_starts_with_no_blocked_or_ignored_signals` | the job's signal state is clean |
//! | a hostile server (`common::hostile`) | `a_hostile_server_cannot_break_delivery_or_the_job` | garbage, absurd numbers, oversized frames: exact output, the job's own retcode |
//! | | `a_hostile_server_cannot_fill_the_disk_through_the_log` | server strings are clipped before they are logged |

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use sp_wrapper::exit_codes;

use crate::common::{
    Harness, Launch, Launched, TestDir, assert_same, extrausers, log_text, log_text_at, pid_alive,
    read_pid_file, wait_until, wrapper_bin,
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
        .filter(|(_, r)| r.code == Some(exit_codes::OVERLAP))
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
    assert_eq!(
        launched.code,
        Some(exit_codes::WRAPPER_ERROR),
        "{name}: {launched:?}"
    );
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

/// A free id in 61000..65000 (Debian's range for dynamic system users is
/// below, regular users below that) that NSS knows neither as `database`.
fn free_id(database: &str, taken: &[u32]) -> u32 {
    (61_000..65_000)
        .find(|id| !taken.contains(id) && extrausers::getent(database, &id.to_string()).is_none())
        .expect("a free id in 61000..65000")
}

/// `SP_USER` naming a user that only the host's NSS knows (as with SSSD,
/// LDAP or AD), whose primary group and a supplementary group are known only
/// there too; and a local user (in /etc/passwd, added for the test) who is a
/// member of that directory group. (Not `nobody`: other tests ask for its
/// groups, and must not see the test's.) The static binary cannot see either through musl: the launcher
/// must ask NSS (getent), and the job must run with what glibc says. The
/// oracle is glibc itself (`getent`, `id`), asked while NSS knows the user.
#[test]
#[ignore = "needs root and libnss-extrausers (it changes /etc/nsswitch.conf for a moment): run as root with --include-ignored (./build.sh test installs the package and does)"]
fn sp_user_known_only_to_nss_runs_with_its_directory_ids_and_groups() {
    assert!(
        is_root(),
        "the directory-user test needs root (it edits /etc/nsswitch.conf and switches users): uid {}",
        unsafe { libc::geteuid() }
    );
    assert!(
        extrausers::module_installed(),
        "libnss-extrausers is not installed: apt-get install libnss-extrausers (./build.sh deps does)"
    );
    let pid = std::process::id();
    let (user, local, primary, extra) = (
        format!("sp_nss_u{pid}"),
        format!("sp_nss_l{pid}"),
        format!("sp_nss_p{pid}"),
        format!("sp_nss_g{pid}"),
    );
    let dir = TestDir::new("nssuser");
    let mut server = Harness::start(&dir);
    server.add_job("diruser", "diruser_1", &[MACHINE]);
    server.add_job("localuser", "localuser_1", &[MACHINE]);
    let job = "id -u; id -g; id -G; echo \"$HOME\"; echo \"$USER\"; \
               grep -E '^(Uid|Gid|Groups):' /proc/self/status";
    let home = dir.join("home-of-the-directory-user");

    let global = extrausers::GlobalLock::take();
    let uid = free_id("passwd", &[]);
    let local_uid = free_id("passwd", &[uid]);
    let local_user = extrausers::LocalUser::add(&local, local_uid);
    let primary_gid = free_id("group", &[]);
    let extra_gid = free_id("group", &[primary_gid]);
    let mut nss = extrausers::ExtraUsers::install(
        &format!(
            "{user}:x:{uid}:{primary_gid}:sp_wrapper test:{}:/bin/sh\n",
            utf8(&home)
        ),
        &format!("{primary}:x:{primary_gid}:\n{extra}:x:{extra_gid}:{user},{local}\n"),
    );
    assert!(
        !std::fs::read_to_string("/etc/passwd")
            .unwrap_or_default()
            .contains(&user),
        "the user must not be in /etc/passwd"
    );
    nss.enable();
    // The oracle, while NSS knows them: glibc's view of both users.
    let entry = extrausers::getent("passwd", &user);
    let id_groups = |name: &str| -> BTreeSet<String> {
        let out = std::process::Command::new("id")
            .args(["-G", name])
            .output()
            .expect("id -G");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let (user_groups, local_groups) = (id_groups(&user), id_groups(&local));
    let launch = |job_name: &str, instance: &str, sp_user: &str| {
        Launch::new(&server.url(), job_name, instance, job, &dir)
            .env("SP_USER", sp_user)
            .env("SP_CWD", "/")
            .env("HOME", "/root")
            .run()
    };
    let directory_launch = launch("diruser", "diruser_1", &user);
    let local_launch = launch("localuser", "localuser_1", &local);
    // `--check` finds the directory user too, and says where (docs/diagnose.md).
    let checked = Launch::new("", "diruser", "diruser_1", "true", &dir)
        .unset("SP_WEBSOCKET_URL")
        .env("SP_USER", &user)
        .arg("--check")
        .run();
    // Restore /etc/nsswitch.conf at once: the launches are done with NSS
    // (the job's `id -u/-g/-G` print numbers and ask no one).
    nss.disable();
    drop(local_user);
    drop(global);

    assert_eq!(
        entry.as_deref(),
        Some(
            format!(
                "{user}:x:{uid}:{primary_gid}:sp_wrapper test:{}:/bin/sh",
                utf8(&home)
            )
            .as_str()
        ),
        "glibc must see the extrausers entry: is libnss-extrausers working?"
    );
    let expected: BTreeSet<String> = [primary_gid, extra_gid]
        .iter()
        .map(u32::to_string)
        .collect();
    assert_eq!(user_groups, expected, "glibc's groups of {user}");
    assert!(
        local_groups.contains(&extra_gid.to_string()),
        "glibc's groups of {local}: {local_groups:?}"
    );
    assert_eq!(directory_launch.code, Some(0), "{directory_launch:?}");
    assert_eq!(local_launch.code, Some(0), "{local_launch:?}");
    // The static binary's musl reads /etc/passwd alone, so it asked the
    // host's NSS (getent); a glibc build's own getpwnam asks NSS itself.
    let elf = std::fs::read(wrapper_bin()).expect("the binary under test");
    let from = match crate::old_kernel::elf_kind(&elf).1 {
        true => "/etc/passwd",
        false => "the host's NSS",
    };
    let user_line = format!("ok    SP_USER: {user}: uid {uid}, from {from}");
    assert_eq!(checked.code, Some(0), "{checked:?}");
    assert!(
        checked.stdout.lines().any(|l| l == user_line),
        "no line {user_line:?}: {checked:?}"
    );

    let result = server
        .wait_result("diruser", MACHINE, RESULT_WAIT)
        .expect("diruser recorded");
    assert_eq!(result.retcode, Some(0), "{result:?}");
    let lines: Vec<&str> = result.ret.lines().collect();
    assert!(lines.len() >= 8, "{:?}", result.ret);
    assert_eq!(
        (lines[0], lines[1], lines[3], lines[4]),
        (
            uid.to_string().as_str(),
            primary_gid.to_string().as_str(),
            utf8(&home),
            user.as_str()
        ),
        "uid, gid, HOME, USER of the directory user: {:?}",
        result.ret
    );
    let job_groups: BTreeSet<String> = lines[2].split_whitespace().map(str::to_string).collect();
    assert_eq!(
        job_groups, user_groups,
        "the directory user's groups, as glibc gives them"
    );
    let status = |name: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(status("Uid"), vec![uid.to_string(); 4], "{:?}", result.ret);
    assert_eq!(
        status("Gid"),
        vec![primary_gid.to_string(); 4],
        "{:?}",
        result.ret
    );
    let kernel_groups: BTreeSet<String> = status("Groups").into_iter().collect();
    assert_eq!(
        kernel_groups, user_groups,
        "the kernel's group list: {:?}",
        result.ret
    );

    let result = server
        .wait_result("localuser", MACHINE, RESULT_WAIT)
        .expect("localuser recorded");
    assert_eq!(result.retcode, Some(0), "{result:?}");
    let lines: Vec<&str> = result.ret.lines().collect();
    assert!(lines.len() >= 3, "{:?}", result.ret);
    let job_groups: BTreeSet<String> = lines[2].split_whitespace().map(str::to_string).collect();
    assert_eq!(
        job_groups, local_groups,
        "{local} keeps its directory group {extra_gid}"
    );
    wait_wrappers_done(&dir.join("diruser.log"), 1);
    wait_wrappers_done(&dir.join("localuser.log"), 1);
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
    let daemon = read_pid_file(&daemon_file, Duration::from_secs(20));
    assert!(
        std::fs::read_link(format!("/proc/{daemon}/exe")).is_ok_and(|exe| exe
            .to_string_lossy()
            .contains(&crate::common::wrapper_image_name())),
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
    let sleeper = read_pid_file(&sleeper_file, Duration::from_secs(20));
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
    assert_eq!(
        result.retcode,
        Some(exit_codes::KILLED_BY_REQUEST),
        "{result:?}"
    );
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
    // "wrapper done" is its last log line, written before it releases the
    // lock and exits: on a loaded machine (qemu, every core busy) the exit
    // can come a while after the line.
    assert!(
        wait_until(Duration::from_secs(10), || !pid_alive(daemon)),
        "the wrapper exited"
    );
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
    let daemon = read_pid_file(&dir.join("daemon.pid"), Duration::from_secs(20));
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

#[test]
fn a_hostile_server_cannot_break_delivery_or_the_job() {
    let dir = TestDir::new("hostile");
    let (port, seen) =
        crate::common::hostile::start("hostile_1", crate::common::hostile::Plan::Oversized);
    // 2,000 numbered lines over about 4 s, then exit 5: still writing when
    // the second connection comes (2 s after the first is dropped), so each
    // of the first two connections carries output, even when the agent is
    // slow (under qemu-user).
    let command = "i=0; while [ $i -lt 2000 ]; do echo \"line $i\"; i=$((i+1)); \
                   if [ $((i % 100)) -eq 0 ]; then sleep 0.2; fi; done; exit 5";
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
    let (port, seen) =
        crate::common::hostile::start("flood_1", crate::common::hostile::Plan::LogFlood(30));
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
