//! The crash sweep: the daemon SIGKILLed at every step of a run, one run per
//! step, and the same with the guardian killed instead, each run checked on
//! what the server recorded.
//!
//! The steps are found, not listed: a clean run against a scripted server
//! that keeps the endpoint's per-socket rules (`common/scripted.rs`) counts
//! its frames (heartbeats aside, which come with time), and each later run
//! kills at one of them: as the server receives it (the frame is then lost
//! with the connection, as when the agent dies with it in the network),
//! and, for `start` and `complete`, once the server has answered it. Two
//! steps come with the job rather than the wire: after the job's main
//! process has exited while a background process still holds its output
//! open (the retcode known to the kernel, not yet fixed by the agent), and
//! while unacknowledged output is spooled to disk.
//!
//! Each run checks the record: the job's own retcode (3) whenever its main
//! process had ended at the kill, 255 only when it had not; every byte the
//! server had been sent exactly once and in order (the output is a prefix of
//! the job's, whole lines unless the daemon died mid-line, no repeats; all
//! of it when the job had ended),
//! then at most the guardian's one line; no `start` after output (the real
//! server wipes the output on every `start`); every frame under the machine
//! id the daemon resolved, though the minion config says another one by the
//! time of the kill; one result, never two different ones; the lock free and
//! no process of the job left at the end. `sweep_table` prints the table
//! docs/testing.md shows.
//!
//! And a panic of the binary itself: it prints its message and aborts, the
//! shipped binaries having no unwind tables (docs/packaging.md, "Size").

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use sp_wrapper::exit_codes;

use crate::common::scripted::{Hook, Phase, Plan, ScriptedServer};
use crate::common::{
    Launch, TestDir, group_members, lock_is_free, log_text_at, parent_of, pid_alive, read_pid_file,
    wait_until,
};

/// The minion id the daemon resolves, and the one the config says by the
/// time of the kill (the guardian must keep the first).
const MINION: &str = "crash-minion";
const RENAMED: &str = "renamed-minion";
const LINES: usize = 5;
/// Generous: a run takes about 2 s on the host, several under qemu.
const RUN_DEADLINE: Duration = Duration::from_secs(60);
const STARTUP: Duration = Duration::from_secs(20);
/// Runs at once: each mostly waits on the job's pauses.
const PARALLEL: usize = 3;
/// Output spooled before the spooling step kills (the memory bound is 1 MiB).
const SPOOLED: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    Daemon,
    Guardian,
}

#[derive(Clone, Debug)]
enum Trigger {
    /// At this frame (numbered as the hook numbers them), in this phase.
    Frame {
        index: usize,
        kind: String,
        phase: Phase,
    },
    /// Once the job's main process has exited, its output still open.
    LeaderExited,
    /// Once more than `SPOOLED` bytes wait in the spool file.
    Spooling,
}

#[derive(Clone, Debug)]
struct Step {
    victim: Victim,
    trigger: Trigger,
}

impl Step {
    fn describe(&self) -> String {
        let victim = match self.victim {
            Victim::Daemon => "daemon",
            Victim::Guardian => "guardian",
        };
        let at = match &self.trigger {
            Trigger::Frame {
                index,
                kind,
                phase: Phase::Received,
            } => format!("frame {index} `{kind}` received (lost)"),
            Trigger::Frame {
                index,
                kind,
                phase: Phase::Answered,
            } => format!("frame {index} `{kind}` answered"),
            Trigger::LeaderExited => "the job's main process exited, output still open".into(),
            Trigger::Spooling => "1 MiB of unACKed output in the spool".into(),
        };
        format!("{victim} killed at {at}")
    }
}

/// The job's output: `LINES` numbered lines, a pause after each, so each
/// is its own message. `tail` runs after them.
fn job_command(dir: &TestDir, tail: &str) -> String {
    let d = dir.path.display();
    format!(
        "echo $PPID > {d}/daemon.pid; echo $$ > {d}/shell.pid; \
         for i in $(seq {LINES}); do echo \"line $i of the crash job\"; sleep 0.15; done; {tail}"
    )
}

fn full_output() -> String {
    (1..=LINES)
        .map(|i| format!("line {i} of the crash job\n"))
        .collect()
}

/// What the kill saw, for the checks.
#[derive(Debug, Default)]
struct AtKill {
    killed: bool,
    /// The job's main process had exited (gone or a zombie).
    job_ended: bool,
    /// Output frames' data received by the server up to the kill, the lost
    /// frame's included: the daemon had read all of it.
    sent: String,
    /// Output ACKs the server had sent before the kill.
    output_acks: usize,
    daemon: i32,
    guardian: i32,
}

/// One run of the job, killed at `step` (or not at all).
struct Run {
    dir: TestDir,
    server: ScriptedServer,
    at_kill: Arc<Mutex<AtKill>>,
    lock: std::path::PathBuf,
    expect_output: String,
}

fn pid_file(dir: &std::path::Path, name: &str) -> i32 {
    read_pid_file(&dir.join(name), STARTUP)
}

/// The daemon, the job's shell and the guardian of a job launched with
/// `job_command`'s pid files.
fn job_pids(dir: &TestDir) -> (i32, i32, i32) {
    let daemon = pid_file(&dir.path, "daemon.pid");
    let shell = pid_file(&dir.path, "shell.pid");
    (daemon, shell, parent_of(daemon).expect("the guardian"))
}

/// Kill the victim of `step`, noting what the record must then show.
fn kill_now(dir: &std::path::Path, victim: Victim, at_kill: &Mutex<AtKill>) {
    let daemon = pid_file(dir, "daemon.pid");
    let shell = pid_file(dir, "shell.pid");
    let guardian = parent_of(daemon).unwrap_or(0);
    // The minion is renamed under the guardian's feet: it must report under
    // the name the daemon used.
    std::fs::write(dir.join("salt/minion"), format!("id: {RENAMED}\n")).expect("rename");
    let mut seen = at_kill.lock().expect("at_kill");
    seen.job_ended = !pid_alive(shell);
    seen.daemon = daemon;
    seen.guardian = guardian;
    let target = match victim {
        Victim::Daemon => daemon,
        Victim::Guardian => guardian,
    };
    assert!(target > 1, "no {victim:?} to kill");
    assert_eq!(
        unsafe { libc::kill(target, libc::SIGKILL) },
        0,
        "kill {target}"
    );
    seen.killed = true;
}

/// Start the job with `tail` after its lines (`tail_output` is what that
/// adds to the output) and `env`, to be killed at `step`.
fn start_run(
    name: &str,
    step: Option<Step>,
    (tail, tail_output): (&str, &str),
    env: &[(&str, &str)],
) -> Run {
    let dir = TestDir::new(name);
    std::fs::create_dir_all(dir.join("salt")).expect("salt dir");
    std::fs::write(dir.join("salt/minion"), format!("id: {MINION}\n")).expect("minion");
    let at_kill = Arc::new(Mutex::new(AtKill::default()));
    let hook: Hook = {
        let at_kill = at_kill.clone();
        let path = dir.path.clone();
        let step = step.clone();
        Arc::new(move |frame: &Value, index, phase| {
            if let Some(Step {
                trigger: Trigger::Spooling,
                ..
            }) = &step
            {
                // Read nothing more until the kill: unACKed output piles up
                // and spills to the spool; then this frame dies with it.
                let killed = || at_kill.lock().expect("at_kill").killed;
                if phase == Phase::Received && frame["type"] == "output" && !killed() {
                    wait_until(RUN_DEADLINE, killed);
                    return true;
                }
                return false;
            }
            let Some(Step {
                victim,
                trigger:
                    Trigger::Frame {
                        index: at,
                        phase: at_phase,
                        ..
                    },
            }) = &step
            else {
                return false;
            };
            if phase == Phase::Received && index <= *at && frame["type"] == "output" {
                let mut seen = at_kill.lock().expect("at_kill");
                if !seen.killed {
                    seen.sent.push_str(frame["data"].as_str().unwrap_or(""));
                }
            }
            if phase == Phase::Answered && frame["type"] == "output" {
                let mut seen = at_kill.lock().expect("at_kill");
                if !seen.killed {
                    seen.output_acks += 1;
                }
            }
            if index != *at || phase != *at_phase {
                return false;
            }
            if *victim == Victim::Daemon {
                // Killed once it has acted on every output ACK it was sent:
                // an ACK still on its way when the daemon dies leaves its
                // message unACKed for the guardian, which sends it again (the
                // one case no client can settle, docs/delivery.md), and
                // under qemu on a busy machine that window is wide.
                let acks = at_kill.lock().expect("at_kill").output_acks;
                let acks_read = || {
                    log_text_at(&path.join("crash.log"))
                        .matches("received Ack { kind: Output")
                        .count()
                        >= acks
                };
                // (Past the deadline it kills anyway: the record's check says
                // what went wrong.)
                wait_until(RUN_DEADLINE, acks_read);
            }
            kill_now(&path, *victim, &at_kill);
            // A frame the daemon died with is lost with its connection; a
            // dead guardian changes nothing on the wire.
            *victim == Victim::Daemon && phase == Phase::Received
        })
    };
    let server = ScriptedServer::start_with_hook(Plan::Honest, hook);
    let lock = dir.join("crash.lock");
    let mut launch = Launch::new(
        &server.url(),
        "crash",
        "crash_1",
        &job_command(&dir, tail),
        &dir,
    )
    .unset("SP_MACHINE_ID")
    .env("SALT_CONFIG_DIR", dir.join("salt").to_str().expect("utf-8"))
    .env("SP_ALLOW_OVERLAP", "false")
    .env("SP_LOCKFILE", lock.to_str().expect("utf-8"))
    .env("SP_OUTPUT_INTERVAL_MS", "20")
    .env("SP_SPOOL_DIR", dir.path.to_str().expect("utf-8"));
    for (key, value) in env {
        launch = launch.env(key, value);
    }
    launch.run().expect_started();
    if let Some(Step { victim, trigger }) = &step {
        match trigger {
            Trigger::Frame { .. } => {}
            Trigger::LeaderExited => {
                let shell = pid_file(&dir.path, "shell.pid");
                assert!(
                    wait_until(RUN_DEADLINE, || !pid_alive(shell)),
                    "the job's main process did not exit"
                );
                kill_now(&dir.path, *victim, &at_kill);
            }
            Trigger::Spooling => {
                let spooled = || {
                    std::fs::read_dir(&dir.path).ok().is_some_and(|entries| {
                        entries.flatten().any(|e| {
                            e.file_name().to_string_lossy().ends_with(".spool")
                                && e.metadata().is_ok_and(|m| m.len() > SPOOLED)
                        })
                    })
                };
                assert!(wait_until(RUN_DEADLINE, spooled), "nothing was spooled");
                kill_now(&dir.path, *victim, &at_kill);
            }
        }
    }
    Run {
        dir,
        server,
        at_kill,
        lock,
        expect_output: full_output() + tail_output,
    }
}

/// Wait for the run to end and check its record; `Err` says what is wrong.
fn check(run: Run, step: Option<&Step>) -> Result<String, String> {
    let done = || {
        let ended = |pid: i32| pid <= 0 || !pid_alive(pid);
        let seen = run.at_kill.lock().expect("at_kill");
        let (daemon, guardian) = if seen.killed {
            (seen.daemon, seen.guardian)
        } else {
            let daemon = read_pid_file(&run.dir.join("daemon.pid"), STARTUP);
            (daemon, parent_of(daemon).unwrap_or(0))
        };
        drop(seen);
        ended(daemon) && ended(guardian) && lock_is_free(&run.lock)
    };
    let deadline = Instant::now() + RUN_DEADLINE;
    if !wait_until(RUN_DEADLINE, done) {
        return Err("the agent did not finish (or the lock was held) within 60 s".into());
    }
    let shell = read_pid_file(&run.dir.join("shell.pid"), STARTUP);
    if !wait_until(deadline.saturating_duration_since(Instant::now()), || {
        group_members(shell).is_empty()
    }) {
        return Err(format!(
            "processes of the job are left: {:?}",
            group_members(shell)
        ));
    }
    let at_kill = run.at_kill.lock().expect("at_kill");
    let victim = step.map(|s| s.victim);
    let killed = at_kill.killed;
    if step.is_some() && !killed {
        // A step the run never reached proves nothing: it is a failure.
        return Err("the step was never reached".into());
    }
    let (retcodes, ret, starts, wiped, machines) = run.server.seen(|s| {
        (
            s.retcodes.clone(),
            s.appended.clone(),
            s.starts,
            s.starts_that_wiped_output,
            s.machines.clone(),
        )
    });
    let daemon_died = killed && victim == Some(Victim::Daemon);
    let expect_retcode = if daemon_died && !at_kill.job_ended {
        exit_codes::AGENT_DIED
    } else {
        3
    };
    if retcodes.is_empty() || retcodes.iter().any(|&r| r != expect_retcode) {
        return Err(format!(
            "retcodes {retcodes:?}, expected only {expect_retcode} (job ended at the kill: {})",
            at_kill.job_ended
        ));
    }
    if starts == 0 || wiped > 0 {
        return Err(format!(
            "{starts} start(s), {wiped} of them after output (the server wiped it)"
        ));
    }
    if let Some(other) = machines.iter().find(|m| *m != MINION) {
        return Err(format!(
            "a frame came from machine {other:?}, not {MINION:?}"
        ));
    }
    // The guardian's line, if any, is the last thing it added.
    let job_part = match ret.rfind("\n[sp_wrapper: the agent (pid ") {
        Some(at) if daemon_died && ret.ends_with("]\n") => &ret[..at],
        _ => ret.as_str(),
    };
    let full = &run.expect_output;
    let exact = job_part == full.as_str();
    // Whole lines, unless the daemon died: its spool file has every byte it
    // had read, and a read can end in the middle of a line.
    let prefix = full.starts_with(job_part)
        && (job_part.is_empty() || job_part.ends_with('\n') || daemon_died);
    let must_be_whole = !daemon_died || at_kill.job_ended;
    if must_be_whole && !exact {
        return Err(format!(
            "output {} bytes, expected exactly the job's {} bytes: {}",
            job_part.len(),
            full.len(),
            glimpse(job_part)
        ));
    }
    if !prefix || !job_part.starts_with(at_kill.sent.as_str()) {
        return Err(format!(
            "output is not the job's own in order, or lacks what the server had been sent \
             ({} bytes sent before the kill): {}",
            at_kill.sent.len(),
            glimpse(job_part)
        ));
    }
    let line = if job_part.len() < ret.len() {
        "+ the guardian's line"
    } else {
        ""
    };
    Ok(format!(
        "retcode {}, {} of {} bytes {line}",
        retcodes[0],
        job_part.len(),
        full.len()
    ))
}

/// The start and the end of a record, for a message.
fn glimpse(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= 200 {
        return format!("{text:?}");
    }
    let head: String = chars[..100].iter().collect();
    let tail: String = chars[chars.len() - 100..].iter().collect();
    format!("{head:?} ... {tail:?} ({} bytes)", text.len())
}

/// The frames of a clean run, in order: the steps to kill at.
fn clean_run_frames() -> Vec<String> {
    let run = start_run("crash_clean", None, ("sleep 0.3; exit 3", ""), &[]);
    let frames = Arc::new(Mutex::new(Vec::new()));
    let outcome = check(run_with_frames(run, &frames), None);
    outcome.unwrap_or_else(|why| panic!("the clean run's record is wrong: {why}"));
    frames.lock().expect("frames").clone()
}

/// The clean run's frames, read from what the server saw.
fn run_with_frames(run: Run, frames: &Arc<Mutex<Vec<String>>>) -> Run {
    let daemon = read_pid_file(&run.dir.join("daemon.pid"), STARTUP);
    wait_until(RUN_DEADLINE, || !pid_alive(daemon));
    let seen: Vec<String> = run.server.seen(|s| {
        s.connections
            .iter()
            .flat_map(|c| c.frames.iter().filter(|k| *k != "heartbeat").cloned())
            .collect()
    });
    *frames.lock().expect("frames") = seen;
    run
}

fn sweep_steps(frames: &[String]) -> Vec<Step> {
    let mut steps = Vec::new();
    for victim in [Victim::Daemon, Victim::Guardian] {
        for (index, kind) in frames.iter().enumerate() {
            steps.push(Step {
                victim,
                trigger: Trigger::Frame {
                    index,
                    kind: kind.clone(),
                    phase: Phase::Received,
                },
            });
            if victim == Victim::Daemon && (kind == "start" || kind == "complete") {
                steps.push(Step {
                    victim,
                    trigger: Trigger::Frame {
                        index,
                        kind: kind.clone(),
                        phase: Phase::Answered,
                    },
                });
            }
        }
        steps.push(Step {
            victim,
            trigger: Trigger::LeaderExited,
        });
    }
    steps
}

fn run_step(n: usize, step: &Step) -> Result<String, String> {
    let (tail, env): (&str, &[(&str, &str)]) = match step.trigger {
        // A background process keeps the output open 1 s after the exit.
        Trigger::LeaderExited => ("(sleep 1) & exit 3", &[]),
        _ => ("sleep 0.3; exit 3", &[]),
    };
    let run = start_run(&format!("crash_{n}"), Some(step.clone()), (tail, ""), env);
    check(run, Some(step))
}

#[test]
fn a_kill_at_every_step_of_a_run_leaves_a_right_record() {
    let frames = clean_run_frames();
    assert!(
        frames.len() >= 3 + LINES.min(2),
        "a clean run has connect, start, sync_request, output and complete: {frames:?}"
    );
    let steps = sweep_steps(&frames);
    let outcomes: Vec<(String, Result<String, String>)> = steps
        .chunks(PARALLEL)
        .enumerate()
        .flat_map(|(chunk, steps)| {
            let handles: Vec<_> = steps
                .iter()
                .enumerate()
                .map(|(i, step)| {
                    let step = step.clone();
                    let n = chunk * PARALLEL + i;
                    thread::spawn(move || (step.describe(), run_step(n, &step)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        ("a step".to_string(), Err("its thread panicked".to_string()))
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect();
    println!(
        "crash sweep: {} steps from a clean run of {} frames",
        outcomes.len(),
        frames.len()
    );
    println!("| step | outcome |\n|---|---|");
    for (what, outcome) in &outcomes {
        match outcome {
            Ok(record) => println!("| {what} | ok: {record} |"),
            Err(why) => println!("| {what} | WRONG: {why} |"),
        }
    }
    let wrong: Vec<&String> = outcomes
        .iter()
        .filter(|(_, o)| o.is_err())
        .map(|(what, _)| what)
        .collect();
    assert!(wrong.is_empty(), "wrong records at: {wrong:#?}");
}

#[test]
fn a_kill_of_the_daemon_while_it_spools_leaves_a_right_record() {
    // 4 MiB at once, beyond the 1 MiB memory bound, against a server that
    // reads slowly (its answers held while the kill waits for the spool).
    let step = Step {
        victim: Victim::Daemon,
        trigger: Trigger::Spooling,
    };
    let tail = "head -c 4194304 /dev/zero | tr '\\0' x; echo; sleep 0.3; exit 3";
    let tail_output = "x".repeat(4 << 20) + "\n";
    let run = start_run(
        "crash_spool",
        Some(step.clone()),
        (tail, &tail_output),
        &[("SP_BUFFER_MAX_MB", "1")],
    );
    let outcome = check(run, Some(&step));
    println!("| {} | {outcome:?} |", step.describe());
    outcome.unwrap_or_else(|why| panic!("{why}"));
}

#[test]
fn a_job_that_exits_while_the_daemon_is_stopped_gets_its_own_retcode() {
    // The daemon is stopped, so it never sees the job's exit: the job's main
    // process is its unreaped zombie when it dies, and the guardian's own
    // once it is gone. The guardian reads the status there, and reports it.
    let dir = TestDir::new("crash_zombie");
    let server = ScriptedServer::start(Plan::Honest);
    let d = dir.path.display();
    let go = dir.join("go");
    let command = format!(
        "echo $PPID > {d}/daemon.pid; echo $$ > {d}/shell.pid; echo before; \
         for i in $(seq 1000); do [ -e {} ] && exit 5; sleep 0.02; done; exit 1",
        go.display()
    );
    Launch::new(&server.url(), "zombie", "zombie_1", &command, &dir)
        .run()
        .expect_started();
    let (daemon, shell, guardian) = job_pids(&dir);
    assert!(
        wait_until(STARTUP, || server.seen(|s| s.appended == "before\n")),
        "the job's first line was not delivered"
    );
    assert_eq!(unsafe { libc::kill(daemon, libc::SIGSTOP) }, 0);
    std::fs::write(&go, "").expect("go");
    assert!(
        wait_until(STARTUP, || !pid_alive(shell)),
        "the job did not exit"
    );
    assert_eq!(unsafe { libc::kill(daemon, libc::SIGKILL) }, 0);
    assert!(
        wait_until(RUN_DEADLINE, || !pid_alive(guardian)),
        "the guardian did not finish"
    );
    let (retcodes, ret) = server.seen(|s| (s.retcodes.clone(), s.appended.clone()));
    // Without a subreaper (before Linux 3.4, played by the 2.6.32 filter;
    // and under qemu-user, which does not pass PR_SET_CHILD_SUBREAPER on to
    // the kernel: strace shows no such call) init reaps the dead daemon's
    // zombie child, its status is lost, and the job counts as killed.
    let no_subreaper =
        crate::common::seccomp::requested() || !crate::common::wrapper_runner().is_empty();
    let expected = if no_subreaper {
        exit_codes::AGENT_DIED
    } else {
        5
    };
    assert_eq!(retcodes, [expected], "{ret:?}");
    assert!(ret.starts_with("before\n"), "{ret:?}");
}

#[test]
fn a_kill_of_the_daemon_while_it_gives_up_leaves_the_output_in_the_log() {
    // A server that takes everything and ACKs no output: the daemon gives
    // up after the delivery window (2 s here) and writes the output to the
    // log; it is killed as soon as it says so. Whoever finishes (the daemon,
    // or its guardian after its own window), every line is in the log, the
    // lock is free and no process of the job is left.
    let dir = TestDir::new("crash_give_up");
    let server = ScriptedServer::start(Plan::NeverAckOutput);
    let lock = dir.join("giveup.lock");
    Launch::new(
        &server.url(),
        "giveup",
        "giveup_1",
        &job_command(&dir, "exit 3"),
        &dir,
    )
    .env("SP_ALLOW_OVERLAP", "false")
    .env("SP_LOCKFILE", lock.to_str().expect("utf-8"))
    .env("SP_SPOOL_DIR", dir.path.to_str().expect("utf-8"))
    .timings("delivery_window=2000")
    .run()
    .expect_started();
    let (daemon, shell, guardian) = job_pids(&dir);
    assert!(
        wait_until(RUN_DEADLINE, || crate::common::log_text(&dir, "giveup")
            .contains("giving up delivery")),
        "the daemon never gave up"
    );
    unsafe { libc::kill(daemon, libc::SIGKILL) };
    assert!(
        wait_until(RUN_DEADLINE, || !pid_alive(guardian)
            && lock_is_free(&lock)
            && group_members(shell).is_empty()),
        "the guardian did not finish, the lock is held, or the job lives on"
    );
    let log = crate::common::log_text(&dir, "giveup");
    let mut rest = log.as_str();
    for line in full_output().lines() {
        let at = rest
            .find(line)
            .unwrap_or_else(|| panic!("{line:?} is not in the log (in order): {log}"));
        rest = &rest[at + line.len()..];
    }
}

#[test]
fn a_job_killed_by_sigpipe_when_its_daemon_died_counts_as_killed() {
    // The job writes without a pause: when the daemon dies, its output pipe
    // closes and the job's next write kills it with SIGPIPE, usually before
    // the guardian looks. That death is ours, not the job's own end: 255,
    // not 141.
    let dir = TestDir::new("crash_sigpipe");
    let server = ScriptedServer::start(Plan::Honest);
    let d = dir.path.display();
    let command = format!(
        "echo $PPID > {d}/daemon.pid; echo $$ > {d}/shell.pid; while :; do echo line; done"
    );
    Launch::new(&server.url(), "sigpipe", "sigpipe_1", &command, &dir)
        .run()
        .expect_started();
    let daemon = pid_file(&dir.path, "daemon.pid");
    let guardian = parent_of(daemon).expect("the guardian");
    assert!(
        wait_until(STARTUP, || server.seen(|s| !s.appended.is_empty())),
        "no output delivered"
    );
    assert_eq!(unsafe { libc::kill(daemon, libc::SIGKILL) }, 0);
    assert!(
        wait_until(RUN_DEADLINE, || !pid_alive(guardian)),
        "the guardian did not finish"
    );
    let retcodes = server.seen(|s| s.retcodes.clone());
    assert_eq!(retcodes, [exit_codes::AGENT_DIED]);
}

#[test]
fn a_panic_of_the_binary_aborts_with_its_message_and_nothing_unwinds() {
    // The shipped binaries are linked without unwind tables (.eh_frame,
    // .ci/binaries.sh shipped_link_flags): a panic must still print its message
    // and abort (SIGABRT), never fault in the unwinder or hang, even when
    // RUST_BACKTRACE asks std to walk the stack. `--version` into a full
    // device is a real panic of std's println! ("failed printing to
    // stdout"), in the binary under test, with no test hook in it.
    let dev_full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let mut child = crate::common::wrapper_command()
        .arg("--version")
        .env("RUST_BACKTRACE", "full")
        .stdin(std::process::Stdio::null())
        .stdout(dev_full)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the wrapper");
    let mut status = None;
    let ended = wait_until(STARTUP, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    if !ended {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the panicking wrapper did not end within {STARTUP:?}");
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    let status = status.expect("ended");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGABRT),
        "{status:?}, stderr: {stderr}"
    );
    assert!(
        stderr.contains("panicked") && stderr.contains("failed printing to stdout"),
        "{stderr}"
    );
}
