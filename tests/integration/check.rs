//! `sp_wrapper --check` (docs/diagnose.md): a healthy setup against the real
//! endpoint (every check passes, and a job running on the same machine,
//! with the very variables the check was given, keeps its connection and
//! an exact record), a dead server, a read-only log directory and an
//! unknown `SP_USER`, each with its line, its summary and its exit code,
//! and nothing left behind.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{
    Harness, Launch, Launched, MACHINE, TestDir, assert_same, launch_ok, wait_until,
};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Names in `dir`, recursively (relative paths).
fn tree(dir: &Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).into_iter().flatten().flatten() {
            let path = entry.path();
            names.insert(
                path.strip_prefix(dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string(),
            );
            if path.is_dir() {
                pending.push(path);
            }
        }
    }
    names
}

/// A check's launch: `--check` with the variables Salt would give a job.
fn check_of(url: &str, dir: &TestDir) -> Launch {
    Launch::new(url, "checked", "checked_1", "true", dir)
        .env(
            "SP_LOCKFILE",
            dir.join("locks/checked.lock").to_str().expect("utf-8"),
        )
        .arg("--check")
}

fn line<'a>(launched: &'a Launched, prefix: &str) -> &'a str {
    launched
        .stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?}: {launched:?}"))
}

/// `<version> <arch>` from the version line: this version, and the arch the
/// binary under test was built for (Rust's name: x86_64, aarch64, x86, arm).
fn version_and_arch(launched: &Launched) -> String {
    let version = line(launched, "ok    version: ")
        .trim_start_matches("ok    version: ")
        .to_string();
    let arch = version
        .strip_prefix(&format!("{VERSION} "))
        .unwrap_or_default();
    assert!(
        ["x86_64", "aarch64", "x86", "arm"].contains(&arch),
        "version line {version:?}: not {VERSION} and an arch"
    );
    version
}

fn summary(launched: &Launched) -> &str {
    let last = launched.stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("sp_wrapper --check: "),
        "the last line is not the summary: {launched:?}"
    );
    last
}

/// What a failed check must look like: exit 1, its `FAIL` line, and the
/// summary naming it (and nothing else failing).
fn assert_failed_only(launched: &Launched, what: &str, problem: &str) {
    assert_eq!(launched.code, Some(1), "{launched:?}");
    let fail = line(launched, &format!("FAIL  {what}: "));
    assert!(fail.contains(problem), "{fail:?} lacks {problem:?}");
    let fails = launched
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAIL"))
        .count();
    assert_eq!(fails, 1, "other checks failed too: {launched:?}");
    let summary = summary(launched);
    let head = format!(
        "sp_wrapper --check: FAILED {} id={MACHINE}: {what}: ",
        version_and_arch(launched)
    );
    assert!(
        summary.starts_with(&head),
        "{summary:?} does not start {head:?}"
    );
    assert!(summary.contains(problem), "{summary:?} lacks {problem:?}");
}

#[test]
fn a_healthy_setup_passes_and_a_job_running_meanwhile_keeps_its_connection_and_record() {
    let dir = TestDir::new("check_healthy");
    let logs = dir.join("logs");
    let logs = logs.to_str().expect("utf-8");
    let mut server = Harness::start(&dir);
    // A job of the same name and instance on the same machine, running.
    let (job, instance) = ("checked", "checked_1");
    server.add_job(job, instance, &[MACHINE]);
    let go = dir.join("go");
    let command = format!(
        "echo before; while [ ! -e {} ]; do sleep 0.05; done; echo after",
        go.display()
    );
    launch_ok(
        &Launch::new(&server.url(), job, instance, &command, &dir).env("SP_WRAPPER_LOGDIR", logs),
    );
    assert!(
        wait_until(Duration::from_secs(20), || server.result(job, MACHINE).ret
            == "before\n"),
        "the job's first line was not recorded: {:?}",
        server.result(job, MACHINE)
    );
    let connections = server.connections();
    let key = format!("{instance}:{MACHINE}");
    assert!(connections.contains_key(&key), "{connections:?}");
    let files = tree(&dir.path);

    // The check gets the very variables that job got.
    let checked = check_of(&server.url(), &dir)
        .env("SP_WRAPPER_LOGDIR", logs)
        .run();
    assert_eq!(checked.code, Some(0), "{checked:?}");
    let url = server.url();
    assert_eq!(
        line(&checked, "ok    server: "),
        format!("ok    server: {url} ACKed a connect")
    );
    assert_eq!(
        line(&checked, "ok    machine id: "),
        format!("ok    machine id: {MACHINE} (from SP_MACHINE_ID)")
    );
    assert!(
        line(&checked, "ok    log and spool dir: ")
            .starts_with(&format!("ok    log and spool dir: {logs} writable, "))
    );
    assert!(line(&checked, "ok    lock dir: ").contains("locks missing, a job creates it: "));
    assert_eq!(
        line(&checked, "ok    configuration: "),
        "ok    configuration: the SP_* variables are valid"
    );
    assert!(!checked.stdout.contains("FAIL"), "{checked:?}");
    assert_eq!(
        summary(&checked),
        format!(
            "sp_wrapper --check: OK {} id={MACHINE} (from SP_MACHINE_ID)",
            version_and_arch(&checked)
        )
    );

    // Nothing left on the minion: no probe file, no log, no lock.
    assert_eq!(tree(&dir.path), files, "the check left files behind");
    // On the server: the job's own connection untouched (the same socket
    // under its key), the check's gone once it closed, and no record but
    // the job's.
    assert!(
        wait_until(Duration::from_secs(10), || server.connections()
            == connections),
        "the server's connections changed: before {connections:?}, after {:?}",
        server.connections()
    );
    assert_eq!(
        server.records(),
        vec![(job.to_string(), MACHINE.to_string())]
    );

    std::fs::write(&go, "").expect("go");
    let result = server
        .wait_result(job, MACHINE, Duration::from_secs(60))
        .unwrap_or_else(|partial| panic!("no result: {partial:?}"));
    assert_same(&result.ret, "before\nafter\n", "the job's output");
    assert_eq!(
        (result.retcode, result.starts, result.completes),
        (Some(0), 1, 1),
        "{result:?}"
    );
    let endpoint_out = std::fs::read_to_string(dir.join("endpoint.out")).unwrap_or_default();
    assert!(
        !endpoint_out.contains("WARNING"),
        "the endpoint warned:\n{endpoint_out}"
    );
}

#[test]
fn a_dead_server_fails_the_server_check() {
    let dir = TestDir::new("check_dead");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("ws://127.0.0.1:{port}");
    let checked = check_of(&url, &dir).run();
    assert_failed_only(
        &checked,
        "server",
        &format!("{url}: connect to 127.0.0.1:{port}: Connection refused"),
    );
    assert!(checked.elapsed < Duration::from_secs(10), "{checked:?}");
    assert_eq!(
        tree(&dir.path),
        BTreeSet::new(),
        "the check left files behind"
    );
}

#[test]
fn a_read_only_log_directory_fails_the_log_check() {
    let dir = TestDir::new("check_read_only");
    let logs = dir.join("logs");
    std::fs::create_dir(&logs).expect("logs");
    let logs_text = logs.to_str().expect("utf-8");
    let launch = check_of("", &dir)
        .unset("SP_WEBSOCKET_URL")
        .env("SP_WRAPPER_LOGDIR", logs_text);
    let checked = if unsafe { libc::geteuid() } == 0 {
        // Root writes through any mode: a read-only bind mount of its own
        // (a private mount namespace) it is, as on a read-only /var.
        let inner = launch.command();
        let mut command = Command::new("unshare");
        command.args(["--mount", "--propagation", "private", "--", "sh", "-c"]);
        command.arg(
            r#"mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@""#,
        );
        command
            .arg("sh")
            .arg(&logs)
            .arg(inner.get_program())
            .args(inner.get_args());
        command.env_clear().stdin(std::process::Stdio::null());
        for (key, value) in inner.get_envs() {
            if let Some(value) = value {
                command.env(key, value);
            }
        }
        Launch::run_command(command)
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        launch.run()
    };
    let problem = if unsafe { libc::geteuid() } == 0 {
        "Read-only file system"
    } else {
        "Permission denied"
    };
    assert_failed_only(
        &checked,
        "log and spool dir",
        &format!("{logs_text}: cannot write: {problem}"),
    );
    assert_eq!(tree(&logs), BTreeSet::new(), "the check left files behind");
}

#[test]
fn an_unknown_sp_user_fails_the_user_check() {
    let dir = TestDir::new("check_user");
    let user = format!("sp-no-such-user-{}", std::process::id());
    let checked = check_of("", &dir)
        .unset("SP_WEBSOCKET_URL")
        .env("SP_USER", &user)
        .run();
    assert_failed_only(&checked, "SP_USER", &format!("{user}: no such user"));
    assert_eq!(
        line(&checked, "-     server: "),
        "-     server: not checked (SP_WEBSOCKET_URL is not set)"
    );
    assert_eq!(
        tree(&dir.path),
        BTreeSet::new(),
        "the check left files behind"
    );
}
