//! Ten thousand reconnects (issue 24 item 4): a server that completes each
//! WebSocket handshake and closes at once, and the reconnect delay shortened
//! for the test (`retry_interval=1` in `SP_TEST_TIMINGS`, docs/testing.md). Between a
//! sample after the first connections and one after 10,000, the daemon's
//! memory, its open descriptors, its log and the pipe to its guardian must
//! stay flat: nothing may grow per connection. And a connection the agent
//! drops itself is closed before the next one opens (issue 24 item 7).

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::common::closing::ClosingServer;
use crate::common::throttle::ThrottlingProxy;
use crate::common::*;

const CONNECTIONS: u64 = 10_000;
/// The first sample: past the first connections' one-time costs.
const WARM: u64 = 500;

/// What is sampled, at the start and at the end.
#[derive(Debug)]
struct Sample {
    handshakes: u64,
    rss_kib: u64,
    fds: usize,
    log_bytes: u64,
    /// Bytes the daemon wrote to its guardian that wait in the pipe.
    guardian_backlog: usize,
}

/// The pipe inode (`pipe:[N]`) behind each of `pid`'s descriptors.
fn pipes_of(pid: i32) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            let target = target.to_string_lossy().into_owned();
            target
                .starts_with("pipe:")
                .then(|| (fd.file_name().to_string_lossy().into_owned(), target))
        })
        .collect()
}

/// Bytes waiting in the pipe from the daemon to its guardian: the pipe the
/// two share, opened again through the guardian's /proc entry (another
/// descriptor of the same pipe), asked with FIONREAD.
fn guardian_backlog(daemon: i32, guardian: i32) -> usize {
    let daemon_pipes: Vec<String> = pipes_of(daemon).into_iter().map(|(_, p)| p).collect();
    let shared: Vec<String> = pipes_of(guardian)
        .into_iter()
        .filter(|(_, pipe)| daemon_pipes.contains(pipe))
        .map(|(fd, _)| fd)
        .collect();
    assert!(
        !shared.is_empty(),
        "no pipe shared by the daemon {daemon} and the guardian {guardian}"
    );
    shared
        .iter()
        .map(|fd| {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags_nonblocking()
                .open(format!("/proc/{guardian}/fd/{fd}"))
                .expect("open the guardian's pipe through /proc");
            let mut waiting: libc::c_int = 0;
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::FIONREAD, &mut waiting) };
            assert_eq!(rc, 0, "FIONREAD on the guardian's pipe");
            waiting.max(0) as usize
        })
        .sum()
}

trait NonBlocking {
    fn custom_flags_nonblocking(&mut self) -> &mut Self;
}

impl NonBlocking for std::fs::OpenOptions {
    fn custom_flags_nonblocking(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}

fn sample(server: &ClosingServer, daemon: i32, guardian: i32, log: &std::path::Path) -> Sample {
    Sample {
        handshakes: server.handshakes(),
        rss_kib: vm_rss_kib(daemon).expect("the daemon's VmRSS"),
        fds: std::fs::read_dir(format!("/proc/{daemon}/fd"))
            .expect("the daemon's fds")
            .count(),
        log_bytes: std::fs::metadata(log).map_or(0, |m| m.len()),
        guardian_backlog: guardian_backlog(daemon, guardian),
    }
}

/// Takes about 20 s: 10,000 connections 1 ms apart, each a TCP and a
/// WebSocket handshake on loopback.
#[test]
fn ten_thousand_reconnects_leave_memory_fds_log_and_guardian_pipe_flat() {
    let dir = TestDir::new("reconnects");
    let server = ClosingServer::start();
    let command = format!(
        "echo $$ > {d}/shell.pid; echo $PPID > {d}/daemon.pid; exec sleep 600",
        d = dir.path.display()
    );
    let launch = Launch::new(&server.url(), "reconnects", "reconnects_1", &command, &dir)
        .timings("retry_interval=1");
    launch_ok(&launch);
    let daemon = read_pid_file(&dir.join("daemon.pid"), Duration::from_secs(10));
    let guardian = parent_of(daemon).expect("the daemon's parent, its guardian");
    let log = dir.join("reconnects.log");
    let started = Instant::now();
    // Whatever happens below, no process of this test outlives it.
    struct KillOnDrop(Vec<i32>);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            for &pid in &self.0 {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    // The job's shell is its process group's leader (`exec sleep` keeps it).
    let job_group = read_pid_file(&dir.join("shell.pid"), Duration::from_secs(10));
    let _cleanup = KillOnDrop(vec![guardian, daemon, -job_group]);

    let reached = |count: u64| {
        wait_until(Duration::from_secs(120), || server.handshakes() >= count);
        assert!(
            server.handshakes() >= count,
            "only {} connections after {:?}: {}",
            server.handshakes(),
            started.elapsed(),
            log_text_at(&log)
        );
    };
    reached(WARM);
    let first = sample(&server, daemon, guardian, &log);
    reached(CONNECTIONS);
    let last = sample(&server, daemon, guardian, &log);
    eprintln!(
        "{} connections in {:.1} s: first {first:?}, last {last:?}",
        last.handshakes,
        started.elapsed().as_secs_f64()
    );
    let between = last.handshakes - first.handshakes;
    // Under qemu-user the process measured is qemu, whose own memory grows
    // by about 110 bytes a connection: the x86_64 binary, flat when it
    // runs itself, grew 1,048 KiB over 9,500 connections under qemu-x86_64.
    // There the bound allows 160 bytes a connection more, which a leak of
    // ours of a few hundred bytes a connection still exceeds; the native
    // runs (x86_64, i686) hold the exact bound.
    let runner_allowance = if wrapper_runner().is_empty() {
        0
    } else {
        between * 160 / 1024
    };
    assert!(
        last.rss_kib <= first.rss_kib + 256 + runner_allowance,
        "the daemon's VmRSS grew from {} to {} KiB over {between} connections \
         (allowed: 256 KiB + {runner_allowance} KiB for the runner)",
        first.rss_kib,
        last.rss_kib
    );
    assert!(
        last.fds <= first.fds + 1,
        "the daemon's open descriptors went from {} to {} over {between} connections",
        first.fds,
        last.fds
    );
    // A line per connection is ~100 bytes; a line per power of two is ~0.
    let growth = last.log_bytes - first.log_bytes;
    assert!(
        growth < between,
        "the log grew by {growth} bytes over {between} connections: {}",
        log_text_at(&log)
    );
    assert!(
        last.guardian_backlog <= first.guardian_backlog,
        "the pipe to the guardian went from {} to {} bytes waiting over {between} connections",
        first.guardian_backlog,
        last.guardian_backlog
    );
}

/// Issue 24: a connection the agent drops itself while the server still
/// reads it. The real endpoint shares its sequence state between the
/// sockets of an instance: a message appended on the old socket whose ACK
/// the agent never saw is appended again when the agent resends it on a new
/// one. Here the server's ACK for the job's output is held back (by the
/// proxy) past the agent's stall watchdog (30 s; 4 s here, `STALL`): the
/// agent drops the connection, and must keep reading it, gracefully closed,
/// until the server's ACK and close come (3 s later, within the default
/// `close_drain`), and only then reconnect, sending nothing again. The
/// record is the output once. (Before, the agent reconnected at once and
/// resent it: recorded twice.) Takes about 10 s.
#[test]
fn a_connection_dropped_for_late_acks_is_closed_first_so_the_output_is_recorded_once() {
    let dir = TestDir::new("lateacks");
    let mut server = Harness::start(&dir);
    server.add_job("lateacks", "lateacks_1", &[MACHINE]);
    const STALL: Duration = Duration::from_secs(4);
    const LATE: Duration = Duration::from_secs(3);
    assert!(LATE < sp_wrapper::timings::Timings::DEFAULT.close_drain);
    let proxy = ThrottlingProxy::deep(server.port(), 1 << 20);
    let go = dir.join("go");
    let expected: String = (0..100)
        .map(|i| format!("late ack line {i:03}\n"))
        .collect();
    let command = format!(
        "until [ -e '{}' ]; do sleep 0.05; done; \
         awk 'BEGIN {{ for (i = 0; i < 100; i++) printf \"late ack line %03d\\n\", i }}'",
        go.display()
    );
    launch_ok(
        &Launch::new(&proxy.url(), "lateacks", "lateacks_1", &command, &dir)
            .timings(&format!("stall={}", STALL.as_millis())),
    );
    // Output is sent once the numbering is settled: hold the server's
    // frames from then on, and let the job print.
    assert!(
        wait_until(Duration::from_secs(10), || log_text(&dir, "lateacks")
            .contains("synced: last_seq")),
        "no sync: {}",
        log_text(&dir, "lateacks")
    );
    proxy.hold_downstream(STALL + LATE);
    std::fs::write(&go, "").expect("go");
    let result = server
        .wait_result("lateacks", MACHINE, Duration::from_secs(60))
        .unwrap_or_else(|partial| panic!("not recorded: {partial:?}"));
    let log = log_text(&dir, "lateacks");
    assert!(
        log.contains(&format!("reconnecting: no ACK for {} s", STALL.as_secs())),
        "the agent never dropped the connection, so this proved nothing: {log}"
    );
    assert_eq!(proxy.connections(), 2, "{log}");
    assert_eq!(result.retcode, Some(0), "{result:?}");
    assert_same(&result.ret, &expected, "output whose ACK came late");
}
