//! Security and bad input: races on the lock, symlinks, privilege drop, path
//! escapes, inherited descriptors, signals, and a hostile server. The wrapper
//! runs as root on every machine; nothing a local user, the job or the
//! network does may break it.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{Harness, Launch, TestDir, assert_same, log_text, run_job, wait_until};

const MACHINE: &str = "test-minion";
const RESULT_WAIT: Duration = Duration::from_secs(60);

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn twenty_simultaneous_launches_run_the_job_exactly_once() {
    let dir = TestDir::new("race");
    let mut server = Harness::start(&dir);
    for i in 0..20 {
        server.add_job("race", &format!("race_{i}"), &[MACHINE]);
    }
    let ran = dir.join("ran");
    let lock = dir.join("race.lock");
    let url = server.url();
    let launches: Vec<_> = (0..20)
        .map(|i| {
            let launch = Launch::new(
                &url,
                "race",
                &format!("race_{i}"),
                &format!("echo $SP_JOB_INSTANCE >> {}; sleep 3", ran.display()),
                &dir,
            )
            .env("SP_ALLOW_OVERLAP", "false")
            .env("SP_LOCKFILE", lock.to_str().expect("utf-8"));
            thread::spawn(move || launch.run())
        })
        .collect();
    let results: Vec<_> = launches
        .into_iter()
        .map(|t| t.join().expect("launch thread"))
        .collect();
    let started = results.iter().filter(|r| r.code == Some(0)).count();
    let refused: Vec<_> = results.iter().filter(|r| r.code == Some(254)).collect();
    assert_eq!(started, 1, "{results:?}");
    assert_eq!(refused.len(), 19, "{results:?}");
    assert!(refused.iter().all(|r| {
        r.stderr
            .contains("LOCKFILE ERROR: Job race already running")
    }));
    assert!(
        wait_until(Duration::from_secs(2), || std::fs::read_to_string(&ran)
            .is_ok()),
        "the one job ran"
    );
    assert_eq!(
        std::fs::read_to_string(&ran).expect("ran").lines().count(),
        1,
        "exactly one job ran"
    );
}

#[test]
fn a_symlinked_lockfile_is_refused_and_its_target_untouched() {
    let dir = TestDir::new("symlink");
    let precious = dir.join("precious");
    std::fs::write(&precious, "root's data\n").expect("write");
    let before = std::fs::metadata(&precious).expect("meta");
    let lock = dir.join("job.lock");
    std::os::unix::fs::symlink(&precious, &lock).expect("symlink");
    let marker = dir.join("job-ran");
    let launch = Launch::new(
        "ws://127.0.0.1:9",
        "sym",
        "sym_1",
        &format!("touch {}", marker.display()),
        &dir,
    )
    .env("SP_ALLOW_OVERLAP", "false")
    .env("SP_LOCKFILE", lock.to_str().expect("utf-8"));
    let launched = launch.run();
    assert_eq!(launched.code, Some(255), "{launched:?}");
    assert!(
        launched.stderr.contains("SP_LOCKFILE") && launched.stderr.contains("symlink"),
        "{launched:?}"
    );
    let after = std::fs::metadata(&precious).expect("meta");
    assert_eq!(
        std::fs::read_to_string(&precious).expect("read"),
        "root's data\n"
    );
    assert_eq!(
        (after.mtime(), after.mtime_nsec(), after.len()),
        (before.mtime(), before.mtime_nsec(), before.len())
    );
    assert!(!marker.exists(), "the job must not run");
}

#[test]
fn sp_user_gets_the_users_ids_groups_and_home() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let Ok(id) = std::process::Command::new("id")
        .args(["-u", "nobody"])
        .output()
    else {
        return;
    };
    if !id.status.success() {
        eprintln!("skipped: no user nobody");
        return;
    }
    let expected_uid = String::from_utf8_lossy(&id.stdout).trim().to_string();
    let id_g = |arg: &str| {
        let out = std::process::Command::new("id")
            .args([arg, "nobody"])
            .output()
            .expect("id");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let passwd = std::fs::read_to_string("/etc/passwd").expect("passwd");
    let home = passwd
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .and_then(|l| l.split(':').nth(5))
        .expect("nobody's home")
        .to_string();
    let dir = TestDir::new("user");
    let mut server = Harness::start(&dir);
    server.add_job("asuser", "asuser_1", &[MACHINE]);
    let launch = Launch::new(
        &server.url(),
        "asuser",
        "asuser_1",
        "id -u; id -g; id -G; echo \"$HOME\"; echo \"$USER\"; echo \"$LOGNAME\"",
        &dir,
    )
    .env("SP_USER", "nobody")
    .env("SP_CWD", "/");
    assert_eq!(launch.run().code, Some(0));
    let result = server
        .wait_result("asuser", MACHINE, RESULT_WAIT)
        .expect("result recorded");
    let lines: Vec<&str> = result.ret.lines().collect();
    assert_eq!(
        lines,
        [
            expected_uid.as_str(),
            &id_g("-g"),
            &id_g("-G"),
            &home,
            "nobody",
            "nobody"
        ],
        "{:?}",
        result.ret
    );
    assert!(
        !lines[2].split(' ').any(|g| g == "0"),
        "root's group 0 leaked: {:?}",
        lines[2]
    );
}

#[test]
fn job_names_cannot_escape_the_log_and_lock_directories() {
    let dir = TestDir::new("escape");
    let mut server = Harness::start(&dir);
    let logs = dir.join("logs");
    server.add_job("../escape", "escape_1", &[MACHINE]);
    let before: Vec<_> = std::fs::read_dir(&dir.path)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    let launch = Launch::new(
        &server.url(),
        "../escape",
        "escape_1",
        "echo contained",
        &dir,
    )
    .env("SP_WRAPPER_LOGDIR", logs.to_str().expect("utf-8"))
    .env("SP_ALLOW_OVERLAP", "false");
    assert_eq!(launch.run().code, Some(0));
    let result = server
        .wait_result("../escape", MACHINE, RESULT_WAIT)
        .expect("result recorded");
    assert_eq!(result.ret, "contained\n");
    let after: Vec<_> = std::fs::read_dir(&dir.path)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    let new: Vec<_> = after.iter().filter(|n| !before.contains(n)).collect();
    assert_eq!(
        new,
        [&std::ffi::OsString::from("logs")],
        "only the log directory was created next to it"
    );
    assert!(
        logs.join("%2E.%2Fescape.log").exists(),
        "the log stays inside, name encoded"
    );
    assert!(
        !std::path::Path::new("/tmp/escape.lock").exists()
            && !std::path::Path::new("/escape.log").exists()
    );
    // A name too long for a file name is refused at launch, naming the variable.
    let long = "x".repeat(300);
    let launched = Launch::new(&server.url(), &long, "long_1", "true", &dir).run();
    assert_eq!(launched.code, Some(1), "{launched:?}");
    assert!(launched.stderr.contains("SP_JOB_NAME"), "{launched:?}");
}

#[test]
fn the_job_inherits_only_stdin_stdout_and_stderr() {
    let dir = TestDir::new("fds");
    let mut server = Harness::start(&dir);
    let leak = std::fs::File::create(dir.join("leaked")).expect("file");
    let leak_fd = std::os::fd::AsRawFd::as_raw_fd(&leak);
    // `ls` lists the shell's descriptors (its own directory fd is in `ls`).
    let job = "ls /proc/$$/fd | tr '\\n' ' '";
    for (instance, foreground) in [("fds_1", false), ("fds_2", true)] {
        server.add_job("fds", instance, &[MACHINE]);
        let mut launch = Launch::new(&server.url(), "fds", instance, job, &dir);
        if foreground {
            launch = launch.arg("--foreground");
        }
        let mut command = launch.command();
        unsafe {
            // The launcher (as Salt might) hands over an extra descriptor, 7,
            // without close-on-exec.
            command.pre_exec(move || {
                if libc::dup2(leak_fd, 7) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let launched = Launch::run_command(command);
        assert_eq!(launched.code, Some(0), "{launched:?}");
        let result = server
            .wait_result("fds", MACHINE, RESULT_WAIT)
            .expect("result recorded");
        assert_eq!(result.ret, "0 1 2 ", "foreground: {foreground}");
    }
}

#[test]
fn the_log_is_not_world_readable() {
    let dir = TestDir::new("perms");
    let mut server = Harness::start(&dir);
    run_job(&mut server, &dir, "perms", "echo secret-token");
    let mode = std::fs::metadata(dir.join("perms.log"))
        .expect("log")
        .permissions()
        .mode();
    assert_eq!(mode & 0o007, 0, "log mode {mode:o}");
}

/// The daemon is the job's parent: the job writes `$PPID` to `file`.
fn daemon_pid(file: &std::path::Path) -> i32 {
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read_to_string(file)
            .is_ok_and(|s| s.ends_with('\n'))),
        "job started"
    );
    std::fs::read_to_string(file)
        .expect("pid")
        .trim()
        .parse()
        .expect("pid number")
}

#[test]
fn sigterm_to_the_wrapper_kills_the_job_and_reports_143() {
    let dir = TestDir::new("sigterm");
    let mut server = Harness::start(&dir);
    server.add_job("term", "term_1", &[MACHINE]);
    let pid_file = dir.join("daemon.pid");
    let sleeper = dir.join("sleeper.pid");
    let command = format!(
        "echo $PPID > {}; sleep 60 & echo $! > {}; echo waiting; wait",
        pid_file.display(),
        sleeper.display()
    );
    assert_eq!(
        Launch::new(&server.url(), "term", "term_1", &command, &dir)
            .run()
            .code,
        Some(0)
    );
    let daemon = daemon_pid(&pid_file);
    assert!(
        wait_until(Duration::from_secs(20), || server
            .result("term", MACHINE)
            .ret
            .contains("waiting")),
        "output flows"
    );
    // Signal once `sleep` has really been exec'd: a signal that lands in a
    // shell's fork-to-exec window is a race inside the job, not the wrapper.
    let sleeper = daemon_pid(&sleeper);
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(
            format!("/proc/{sleeper}/comm")
        )
        .is_ok_and(|c| c.trim() == "sleep")),
        "sleep started"
    );
    let signalled = std::time::Instant::now();
    unsafe { libc::kill(daemon, libc::SIGTERM) };
    let result = server
        .wait_result("term", MACHINE, RESULT_WAIT)
        .expect("result recorded");
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "the job must die of SIGTERM, not wait for SIGKILL: {:?}",
        signalled.elapsed()
    );
    assert_eq!(result.retcode, Some(143));
    assert!(
        result.ret.contains("[Job terminated by user request]"),
        "{:?}",
        result.ret
    );
}

#[test]
fn sighup_reopens_the_log_and_sigpipe_is_ignored() {
    let dir = TestDir::new("sighup");
    let mut server = Harness::start(&dir);
    server.add_job("hup", "hup_1", &[MACHINE]);
    let pid_file = dir.join("daemon.pid");
    let go = dir.join("go");
    let command = format!(
        "echo $PPID > {}; while [ ! -f {} ]; do sleep 0.05; done; echo finished",
        pid_file.display(),
        go.display()
    );
    assert_eq!(
        Launch::new(&server.url(), "hup", "hup_1", &command, &dir)
            .run()
            .code,
        Some(0)
    );
    let daemon = daemon_pid(&pid_file);
    let log = dir.join("hup.log");
    assert!(
        wait_until(Duration::from_secs(20), || log_text(&dir, "hup")
            .contains("server acknowledged the start")),
        "logging"
    );
    std::fs::rename(&log, dir.join("hup.log.1")).expect("rotate");
    unsafe {
        libc::kill(daemon, libc::SIGPIPE);
        libc::kill(daemon, libc::SIGHUP);
    }
    assert!(
        wait_until(Duration::from_secs(10), || log.exists()),
        "SIGHUP reopened the log at its path"
    );
    std::fs::write(&go, "").expect("go");
    let result = server
        .wait_result("hup", MACHINE, RESULT_WAIT)
        .expect("result recorded: SIGPIPE did not kill the wrapper");
    assert_eq!(
        (result.ret.as_str(), result.retcode),
        ("finished\n", Some(0))
    );
    assert!(
        wait_until(Duration::from_secs(10), || log_text(&dir, "hup")
            .contains("wrapper done")),
        "{}",
        log_text(&dir, "hup")
    );
    let rotated = std::fs::read_to_string(dir.join("hup.log.1")).expect("rotated log");
    assert!(
        rotated.contains("starting job") && !rotated.contains("wrapper done"),
        "{rotated}"
    );
}

/// A server with the real endpoint's sequencing that greets every
/// connection with garbage and lies, and once sends a frame over 1 MiB.
mod hostile {
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};
    use std::thread;

    use serde_json::{Value, json};
    use tungstenite::Message;

    #[derive(Default)]
    pub struct Seen {
        pub appended: String,
        pub retcode: Option<i64>,
        pub connections: u64,
        pub oversized_sent: bool,
    }

    fn garbage() -> Vec<Message> {
        let texts = [
            "not json {",
            "[1,2]",
            "42",
            "\"just a string\"",
            "{}",
            r#"{"type":7}"#,
            r#"{"type":"ack","ack_type":"output","seq":"0"}"#,
            r#"{"type":"ack","ack_type":"output","seq":1.5}"#,
            r#"{"type":"nack","expected_seq":"x"}"#,
            r#"{"type":"surprise","data":[1,2,3]}"#,
            r#"{"type":"kill","job_name":"other","job_instance":"someone_else","machine":"test-minion"}"#,
            r#"{"type":"kill","job_name":"hostile","job_instance":"hostile_1","machine":"another-machine"}"#,
            r#"{"type":"ack","ack_type":"output","seq":999999}"#,
            r#"{"type":"ack","ack_type":"output","seq":-3}"#,
            r#"{"type":"nack","nack_type":"out_of_order","expected_seq":-5,"received_seq":0}"#,
            r#"{"type":"nack","nack_type":"out_of_order","expected_seq":4611686018427387904,"received_seq":0}"#,
            r#"{"type":"sync_response","last_seq":123456789}"#,
            r#"{"type":"ack","ack_type":"complete"}"#,
            r#"{"type":"error","code":"SOMETHING","message":"noise"}"#,
        ];
        let mut frames: Vec<Message> = texts.iter().map(|t| Message::text(*t)).collect();
        frames.push(Message::binary(vec![0u8, 159, 146, 150]));
        frames
    }

    pub fn start(instance: &'static str) -> (u16, Arc<Mutex<Seen>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = shared.clone();
                thread::spawn(move || {
                    let Ok(mut ws) = tungstenite::accept(stream) else {
                        return;
                    };
                    seen.lock().expect("seen").connections += 1;
                    let mut expected = 0u64;
                    let mut last_acked = -1i64;
                    let mut acked_here = 0u64;
                    while let Ok(message) = ws.read() {
                        let Message::Text(text) = message else {
                            continue;
                        };
                        let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
                            continue;
                        };
                        let mut replies: Vec<Message> = Vec::new();
                        match frame["type"].as_str() {
                            Some("connect") => {
                                replies.extend(garbage());
                                replies.push(Message::text(
                                    json!({"type": "ack", "ack_type": "connect"}).to_string(),
                                ));
                            }
                            Some("start") if frame["job_instance"] == instance => {
                                replies.push(Message::text(
                                    json!({"type": "ack", "ack_type": "start"}).to_string(),
                                ));
                            }
                            Some("sync_request") => {
                                replies.push(Message::text(
                                    json!({"type": "sync_response", "last_seq": last_acked})
                                        .to_string(),
                                ));
                            }
                            Some("output") => {
                                let seq = frame["seq"].as_u64().expect("seq");
                                if seq == expected {
                                    seen.lock()
                                        .expect("seen")
                                        .appended
                                        .push_str(frame["data"].as_str().expect("data"));
                                    expected += 1;
                                    last_acked = seq as i64;
                                    acked_here += 1;
                                    replies.push(Message::text(
                                        json!({"type": "ack", "ack_type": "output", "seq": seq})
                                            .to_string(),
                                    ));
                                } else if seq < expected {
                                    replies.push(Message::text(
                                        json!({"type": "ack", "ack_type": "output", "seq": seq})
                                            .to_string(),
                                    ));
                                } else {
                                    let nack = json!({"type": "nack", "nack_type": "out_of_order", "expected_seq": expected, "received_seq": seq});
                                    replies.push(Message::text(nack.to_string()));
                                }
                                let mut s = seen.lock().expect("seen");
                                if acked_here == 3 && !s.oversized_sent {
                                    // After three ACKs, a frame over the 1 MiB cap,
                                    // then nothing more on this connection.
                                    s.oversized_sent = true;
                                    let huge = format!(
                                        "{{\"type\":\"surprise\",\"pad\":\"{}\"}}",
                                        "x".repeat(2 << 20)
                                    );
                                    replies.push(Message::text(huge));
                                    drop(s);
                                    for reply in replies {
                                        let _ = ws.send(reply);
                                    }
                                    return;
                                }
                            }
                            Some("complete") => {
                                seen.lock().expect("seen").retcode = frame["retcode"].as_i64();
                                replies.push(Message::text(json!({"type": "ack", "ack_type": "complete", "seq": frame["seq"]}).to_string()));
                            }
                            _ => {}
                        }
                        for reply in replies {
                            if ws.send(reply).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (port, seen)
    }
}

#[test]
fn a_hostile_server_cannot_break_delivery_or_the_job() {
    let dir = TestDir::new("hostile");
    let (port, seen): (u16, Arc<Mutex<hostile::Seen>>) = hostile::start("hostile_1");
    let command = "i=0; while [ $i -lt 2000 ]; do echo \"line $i\"; i=$((i+1)); \
                   if [ $((i % 100)) -eq 0 ]; then sleep 0.1; fi; done; exit 5";
    let launch = Launch::new(
        &format!("ws://127.0.0.1:{port}"),
        "hostile",
        "hostile_1",
        command,
        &dir,
    )
    .env("SP_OUTPUT_INTERVAL_MS", "100");
    assert_eq!(launch.run().code, Some(0));
    assert!(
        wait_until(Duration::from_secs(90), || seen
            .lock()
            .expect("seen")
            .retcode
            .is_some()),
        "no complete; log: {}",
        log_text(&dir, "hostile")
    );
    let seen = seen.lock().expect("seen");
    assert!(
        seen.oversized_sent && seen.connections >= 2,
        "the oversized frame forced a reconnect"
    );
    assert_eq!(seen.retcode, Some(5), "the job's own result (not killed)");
    let expected: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    assert_same(&seen.appended, &expected, "output through a hostile server");
}
