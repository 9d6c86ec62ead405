//! Conformance: `sp_wrapper` launched as Salt launches it, against the real
//! Saltpeter machines endpoint (saltpeter 0.9.32 from PyPI, see
//! tests/harness/endpoint.py), checking what the server recorded.

use std::time::{Duration, Instant};

use sp_wrapper::exit_codes;

use crate::common::{
    Harness, Launch, TestDir, assert_same, launch_ok, log_text, run_job, wait_until,
};

const MACHINE: &str = "test-minion";
const RESULT_WAIT: Duration = Duration::from_secs(60);

#[test]
fn exact_output_and_exit_code_with_stdout_and_stderr() {
    let dir = TestDir::new("exact");
    let mut server = Harness::start(&dir);
    server.add_job("exact", "exact_1", &[MACHINE]);
    // Pauses give the two pipes a definite order (they have none otherwise).
    let command =
        "echo out1; sleep 0.3; echo err1 >&2; sleep 0.3; printf 'out2 no newline'; exit 3";
    let launched = launch_ok(&Launch::new(
        &server.url(),
        "exact",
        "exact_1",
        command,
        &dir,
    ));
    assert!(
        launched.elapsed < Duration::from_secs(5),
        "the launch should return at once: {launched:?}"
    );
    let result = server
        .wait_result("exact", MACHINE, RESULT_WAIT)
        .expect("result recorded");
    assert_eq!(result.ret, "out1\nerr1\nout2 no newline");
    assert_eq!(result.retcode, Some(3));
    assert_eq!(
        result.wrapper_version.as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(result.starts, 1);
}

#[test]
fn a_megabyte_of_multibyte_utf8_arrives_exactly() {
    let dir = TestDir::new("utf8");
    let mut server = Harness::start(&dir);
    let mut text = String::new();
    for i in 0.. {
        if text.len() >= 1_200_000 {
            break;
        }
        text.push_str(&format!("{i} héllo wörld ∑ 日本語 😀 ñ\n"));
    }
    let file = dir.join("input.txt");
    std::fs::write(&file, &text).expect("write input");
    // dd with a 4093-byte block size splits characters across pipe writes.
    let command = format!("dd if={} bs=4093 2>/dev/null", file.display());
    let result = run_job(&mut server, &dir, "utf8", &command);
    assert_eq!(result.retcode, Some(0));
    assert_same(&result.ret, &text, "1.2 MB of multi-byte UTF-8");
}

#[test]
fn eight_megabytes_arrive_exactly() {
    crate::common::scenarios::eight_megabytes_arrive_exactly("", |launch| {
        launch_ok(&launch);
    });
}

#[test]
fn timeout_kills_with_124_in_about_the_timeout() {
    let dir = TestDir::new("timeout");
    let mut server = Harness::start(&dir);
    server.add_job("timeout", "timeout_1", &[MACHINE]);
    let started = Instant::now();
    let launch = Launch::new(
        &server.url(),
        "timeout",
        "timeout_1",
        "echo started; exec sleep 60",
        &dir,
    )
    .env("SP_TIMEOUT", "2");
    launch_ok(&launch);
    let result = server
        .wait_result("timeout", MACHINE, RESULT_WAIT)
        .expect("result recorded");
    let took = started.elapsed();
    assert_eq!(result.retcode, Some(exit_codes::TIMEOUT));
    assert!(result.ret.starts_with("started\n"), "{:?}", result.ret);
    assert!(
        result.ret.contains("[Job exceeded timeout of 2 seconds]"),
        "{:?}",
        result.ret
    );
    // Well under timeout + the 5 s SIGKILL grace: the job must die of the
    // SIGTERM itself (it would not if it inherited a blocked SIGTERM).
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(4500),
        "took {took:?}"
    );
}

#[test]
fn kill_gives_143_and_leaves_no_process_of_the_group() {
    crate::common::scenarios::kill_gives_143_and_no_process_of_the_group_survives("", |launch| {
        launch_ok(&launch);
    });
}

#[test]
fn heartbeats_come_about_five_seconds_apart() {
    let dir = TestDir::new("heartbeat");
    let mut server = Harness::start(&dir);
    server.add_job("heartbeat", "heartbeat_1", &[MACHINE]);
    launch_ok(&Launch::new(
        &server.url(),
        "heartbeat",
        "heartbeat_1",
        "sleep 16",
        &dir,
    ));
    let result = server
        .wait_result("heartbeat", MACHINE, RESULT_WAIT)
        .expect("result recorded");
    assert_eq!(result.retcode, Some(0));
    assert!(
        result.heartbeats.len() >= 2,
        "heartbeats: {:?}",
        result.heartbeats
    );
    // Each gap within wide bounds (a loaded 2-core machine delays a wake-up
    // or a delivery by a second or two), and the mean close to the interval
    // (5 s): a missed heartbeat (10 s) or a flood (< 1 s) still fails.
    let beat = sp_wrapper::timings::Timings::DEFAULT
        .heartbeat
        .as_secs_f64();
    let gaps: Vec<f64> = result.heartbeats.windows(2).map(|p| p[1] - p[0]).collect();
    for gap in &gaps {
        assert!(
            (beat * 0.5..=beat * 1.6).contains(gap),
            "heartbeat gap {gap:.2} s in {:?}",
            result.heartbeats
        );
    }
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    assert!(
        (beat * 0.8..=beat * 1.3).contains(&mean),
        "mean heartbeat gap {mean:.2} s in {:?}",
        result.heartbeats
    );
}

#[test]
fn a_server_that_starts_six_seconds_late_still_gets_everything() {
    let dir = TestDir::new("late");
    let mut server = Harness::start_without_endpoint(&dir);
    server.add_job("late", "late_1", &[MACHINE]);
    let command = "for i in 1 2 3 4 5; do echo early $i; done; sleep 1; echo done";
    launch_ok(&Launch::new(&server.url(), "late", "late_1", command, &dir));
    std::thread::sleep(Duration::from_secs(6)); // the outage under test, not a wait for a condition
    server.start_endpoint();
    let result = server
        .wait_result("late", MACHINE, RESULT_WAIT)
        .expect("result recorded");
    assert_eq!(
        result.ret,
        "early 1\nearly 2\nearly 3\nearly 4\nearly 5\ndone\n"
    );
    assert_eq!(result.retcode, Some(0));
}

#[test]
fn overlap_refused_with_254_for_the_second_instance() {
    let dir = TestDir::new("overlap");
    let mut server = Harness::start(&dir);
    server.add_job("overlap", "overlap_1", &[MACHINE]);
    server.add_job("overlap", "overlap_2", &[MACHINE]);
    let lock = dir.join("overlap.lock");
    let first = Launch::new(
        &server.url(),
        "overlap",
        "overlap_1",
        "sleep 3; echo first done",
        &dir,
    )
    .env("SP_ALLOW_OVERLAP", "false")
    .env("SP_LOCKFILE", lock.to_str().expect("utf-8"));
    launch_ok(&first);
    let second = Launch::new(
        &server.url(),
        "overlap",
        "overlap_2",
        "echo second ran",
        &dir,
    )
    .env("SP_ALLOW_OVERLAP", "false")
    .env("SP_LOCKFILE", lock.to_str().expect("utf-8"));
    let refused = second.run();
    assert_eq!(refused.code, Some(exit_codes::OVERLAP), "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("LOCKFILE ERROR: Job overlap already running (PID "),
        "{refused:?}"
    );
    assert!(
        refused.stderr.contains("overlap not allowed"),
        "{refused:?}"
    );
    let result = server
        .wait_result("overlap", MACHINE, RESULT_WAIT)
        .expect("first result");
    assert_eq!(result.ret, "first done\n");
    assert!(
        wait_until(Duration::from_secs(10), || !lock.exists()),
        "the lock is released at the end"
    );
    // And with the lock free again, a new instance runs.
    server.add_job("overlap", "overlap_3", &[MACHINE]);
    let third = Launch::new(
        &server.url(),
        "overlap",
        "overlap_3",
        "echo third ran",
        &dir,
    )
    .env("SP_ALLOW_OVERLAP", "false")
    .env("SP_LOCKFILE", lock.to_str().expect("utf-8"));
    launch_ok(&third);
}

#[test]
fn cwd_and_the_jobs_own_environment() {
    let dir = TestDir::new("cwd");
    let mut server = Harness::start(&dir);
    server.add_job("cwd", "cwd_1", &[MACHINE]);
    let work = dir.join("work dir");
    std::fs::create_dir_all(&work).expect("mkdir");
    let launch = Launch::new(
        &server.url(),
        "cwd",
        "cwd_1",
        "pwd; echo \"$JOB_SETTING\"",
        &dir,
    )
    .env("SP_CWD", work.to_str().expect("utf-8"))
    .env("JOB_SETTING", "from the job's env: block");
    launch_ok(&launch);
    let result = server
        .wait_result("cwd", MACHINE, RESULT_WAIT)
        .expect("result recorded");
    assert_eq!(
        result.ret,
        format!("{}\nfrom the job's env: block\n", work.display())
    );
}

#[test]
fn bad_configuration_fails_at_launch_naming_the_variable() {
    let dir = TestDir::new("badconfig");
    let url = "ws://127.0.0.1:9";
    for (var, launch) in [
        (
            "SP_COMMAND",
            Launch::new(url, "bad", "bad_1", "true", &dir).unset("SP_COMMAND"),
        ),
        (
            "SP_WEBSOCKET_URL",
            Launch::new(url, "bad", "bad_1", "true", &dir).unset("SP_WEBSOCKET_URL"),
        ),
        (
            "SP_JOB_NAME",
            Launch::new(url, "bad", "bad_1", "true", &dir).unset("SP_JOB_NAME"),
        ),
        (
            "SP_JOB_INSTANCE",
            Launch::new(url, "bad", "bad_1", "true", &dir)
                .unset("SP_JOB_INSTANCE")
                .unset("SP_JOB_INSTANCE_NAME"),
        ),
        (
            "SP_WEBSOCKET_URL",
            Launch::new("wss://127.0.0.1:9", "bad", "bad_1", "true", &dir),
        ),
        (
            "SP_TIMEOUT",
            Launch::new(url, "bad", "bad_1", "true", &dir).env("SP_TIMEOUT", "soon"),
        ),
        (
            "SP_CWD",
            Launch::new(url, "bad", "bad_1", "true", &dir).env("SP_CWD", "/nonexistent/sp/dir"),
        ),
        (
            "SP_USER",
            Launch::new(url, "bad", "bad_1", "true", &dir).env("SP_USER", "no-such-user-sp"),
        ),
        // The test-only timings too: a bad value is refused, not ignored.
        (
            "SP_TEST_TIMINGS",
            Launch::new(url, "bad", "bad_1", "true", &dir).timings("stall=forever"),
        ),
    ] {
        let launched = launch.run();
        assert_eq!(launched.code, Some(1), "{var}: {launched:?}");
        assert!(
            launched.stderr.contains(var),
            "{var} not named: {launched:?}"
        );
        assert_eq!(
            launched.stderr.trim().lines().count(),
            1,
            "one line: {launched:?}"
        );
    }
}

#[test]
fn an_orphaned_instance_keeps_its_output_in_the_log() {
    let dir = TestDir::new("orphan");
    let server = Harness::start(&dir);
    // No add_job: the server is not running this instance (JOB_NOT_FOUND).
    launch_ok(&Launch::new(
        &server.url(),
        "orphan",
        "orphan_1",
        "echo precious line 1; echo precious line 2 >&2",
        &dir,
    ));
    assert!(
        wait_until(Duration::from_secs(30), || log_text(&dir, "orphan")
            .contains("END OF UNDELIVERED OUTPUT")),
        "log: {}",
        log_text(&dir, "orphan")
    );
    let log = log_text(&dir, "orphan");
    assert!(log.contains("JOB_NOT_FOUND"), "{log}");
    assert!(
        log.contains("precious line 1\n") && log.contains("precious line 2\n"),
        "{log}"
    );
}

#[test]
fn loglevel_off_writes_no_log_file() {
    let dir = TestDir::new("off");
    let mut server = Harness::start(&dir);
    server.add_job("quiet", "quiet_1", &[MACHINE]);
    launch_ok(
        &Launch::new(&server.url(), "quiet", "quiet_1", "echo hi", &dir)
            .env("SP_WRAPPER_LOGLEVEL", "off"),
    );
    let result = server
        .wait_result("quiet", MACHINE, RESULT_WAIT)
        .expect("result recorded");
    assert_eq!(result.ret, "hi\n");
    let entries: Vec<_> = std::fs::read_dir(&dir.path)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert!(
        !entries
            .iter()
            .any(|n| n.to_string_lossy().ends_with(".log")),
        "{entries:?}"
    );
}

#[test]
fn an_unusable_log_directory_does_not_stop_the_job() {
    let dir = TestDir::new("logerr");
    let mut server = Harness::start(&dir);
    server.add_job("logerr", "logerr_1", &[MACHINE]);
    let blocker = dir.join("not-a-dir");
    std::fs::write(&blocker, "a file where the log directory should be").expect("write");
    let launch = Launch::new(&server.url(), "logerr", "logerr_1", "echo still ran", &dir).env(
        "SP_WRAPPER_LOGDIR",
        blocker.join("sub").to_str().expect("utf-8"),
    );
    launch_ok(&launch);
    let result = server
        .wait_result("logerr", MACHINE, RESULT_WAIT)
        .expect("result recorded");
    assert!(
        result.ret.starts_with("[WRAPPER LOG ERROR] "),
        "{:?}",
        result.ret
    );
    assert!(result.ret.ends_with("still ran\n"), "{:?}", result.ret);
}

#[test]
fn salts_pipes_are_released_while_the_job_runs() {
    let dir = TestDir::new("pipes");
    let mut server = Harness::start(&dir);
    server.add_job("pipes", "pipes_1", &[MACHINE]);
    // Launch::run returns only once stdout and stderr are closed.
    let launched = launch_ok(&Launch::new(
        &server.url(),
        "pipes",
        "pipes_1",
        "sleep 4; echo late",
        &dir,
    ));
    assert!(
        launched.elapsed < Duration::from_secs(3),
        "Salt waited {:?}",
        launched.elapsed
    );
    let result = server
        .wait_result("pipes", MACHINE, RESULT_WAIT)
        .expect("result recorded");
    assert_eq!(result.ret, "late\n");
}

#[test]
fn version_help_and_foreground() {
    let dir = TestDir::new("cli");
    let version = crate::common::wrapper_command()
        .arg("--version")
        .output()
        .expect("run");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("sp_wrapper {}", env!("CARGO_PKG_VERSION"))
    );
    let help = crate::common::wrapper_command()
        .arg("--help")
        .output()
        .expect("run");
    // The binary prints the library's text, whose unit test checks that it
    // lists every variable of config::VARIABLES.
    assert_eq!(
        String::from_utf8_lossy(&help.stdout),
        sp_wrapper::config::usage()
    );
    let mut server = Harness::start(&dir);
    server.add_job("fg", "fg_1", &[MACHINE]);
    let launched = Launch::new(&server.url(), "fg", "fg_1", "echo shown here; exit 7", &dir)
        .arg("--foreground")
        .run();
    assert_eq!(launched.code, Some(7), "{launched:?}");
    assert!(launched.stdout.contains("shown here"), "{launched:?}");
    let result = server
        .wait_result("fg", MACHINE, RESULT_WAIT)
        .expect("result recorded");
    assert_eq!(
        (result.ret.as_str(), result.retcode),
        ("shown here\n", Some(7))
    );
}
