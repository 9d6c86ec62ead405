//! Shared helpers for the integration tests: the real Saltpeter endpoint
//! (tests/harness/endpoint.py) driven over a pipe, a per-test temp dir,
//! launching `sp_wrapper` the way Salt does, waits with deadlines, and a TCP
//! proxy that cuts connections.
//!
//! Every network address is `127.0.0.1` with a port the OS picked.

pub mod closing;
pub mod extrausers;
pub mod hostile;
pub mod scenarios;
pub mod scripted;
pub mod seccomp;
pub mod throttle;
pub use sp_wrapper::wire::xorshift;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The machine name every test launch reports (`SP_MACHINE_ID`).
pub const MACHINE: &str = "test-minion";

static DIR_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The venv's python with the real `saltpeter` package (./build.sh deps).
pub fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("SP_TEST_PYTHON") {
        return PathBuf::from(path);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        path.exists(),
        "{} is missing: run ./build.sh deps (it installs the real Saltpeter endpoint)",
        path.display()
    );
    path
}

/// The wrapper under test: the cargo-built binary, or `SP_WRAPPER_BIN`
/// (the static release binary in ./build.sh test).
pub fn wrapper_bin() -> PathBuf {
    std::env::var_os("SP_WRAPPER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sp_wrapper")))
}

/// What runs the wrapper, from `SP_WRAPPER_RUNNER` (words split on spaces,
/// e.g. `qemu-aarch64`): the binary is appended as its next argument. Empty
/// when unset: the binary runs directly.
pub fn wrapper_runner() -> Vec<String> {
    std::env::var("SP_WRAPPER_RUNNER")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// A `Command` that runs `bin` through the runner, if any.
pub fn command_for(bin: &Path) -> Command {
    let runner = wrapper_runner();
    match runner.split_first() {
        None => Command::new(bin),
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(bin);
            command
        }
    }
}

/// What `/proc/<pid>/exe` of a wrapper process names: `sp_wrapper`, or the
/// runner's program (`qemu-aarch64`) when one is used, since qemu-user is
/// the process the kernel sees.
pub fn wrapper_image_name() -> String {
    match wrapper_runner().first() {
        None => "sp_wrapper".to_string(),
        Some(program) => Path::new(program)
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| program.clone()),
    }
}

/// The wrapper under test, through the runner (for direct runs such as
/// `--version`; launches go through `Launch`).
pub fn wrapper_command() -> Command {
    command_for(&wrapper_bin())
}

/// A fresh directory for one test, removed on drop (kept with SP_KEEP_TEST_DIRS).
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let n = DIR_COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("sp_it_{}_{}_{n}", name, std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        TestDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("SP_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Poll `condition` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Debug, Clone, Default)]
pub struct JobResult {
    pub ret: String,
    pub retcode: Option<i32>,
    pub starttime: Option<String>,
    pub endtime: Option<String>,
    pub wrapper_version: Option<String>,
    pub heartbeats: Vec<f64>,
    pub outputs: u64,
    pub starts: u64,
    pub completes: u64,
}

impl JobResult {
    fn from_json(v: &Value) -> JobResult {
        JobResult {
            ret: v["ret"].as_str().unwrap_or_default().to_string(),
            retcode: v["retcode"].as_i64().and_then(|v| i32::try_from(v).ok()),
            starttime: v["starttime"].as_str().map(str::to_string),
            endtime: v["endtime"].as_str().map(str::to_string),
            wrapper_version: v["wrapper_version"].as_str().map(str::to_string),
            heartbeats: v["heartbeats"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default(),
            outputs: v["outputs"].as_u64().unwrap_or(0),
            starts: v["starts"].as_u64().unwrap_or(0),
            completes: v["completes"].as_u64().unwrap_or(0),
        }
    }
}

/// The real endpoint plus the stand-in job process, in a Python child.
pub struct Harness {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    port: u16,
}

impl Harness {
    pub fn start(dir: &TestDir) -> Harness {
        Self::spawn(dir, &[])
    }

    /// Picks a port but does not listen yet (`start_endpoint` later).
    pub fn start_without_endpoint(dir: &TestDir) -> Harness {
        Self::spawn(dir, &["--no-endpoint"])
    }

    fn spawn(dir: &TestDir, args: &[&str]) -> Harness {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/harness/endpoint.py");
        let log = std::fs::File::create(dir.join("endpoint.out")).expect("endpoint log");
        let mut child = Command::new(python())
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start the endpoint harness");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("harness ready line");
        let ready: Value = serde_json::from_str(&line).unwrap_or_else(|_| {
            panic!(
                "harness did not start: {line:?} (see {})",
                dir.join("endpoint.out").display()
            )
        });
        let port = ready["port"].as_u64().expect("port") as u16;
        Harness {
            child,
            stdin,
            stdout,
            port,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    fn request(&mut self, request: Value) -> Value {
        writeln!(self.stdin, "{request}").expect("write to harness");
        self.stdin.flush().expect("flush harness");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read from harness");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("bad harness reply {line:?}"))
    }

    pub fn add_job(&mut self, name: &str, instance: &str, machines: &[&str]) {
        let reply = self.request(
            json!({"cmd": "add_job", "name": name, "instance": instance, "machines": machines}),
        );
        assert_eq!(reply["ok"], true, "{reply}");
    }

    pub fn result(&mut self, name: &str, machine: &str) -> JobResult {
        JobResult::from_json(
            &self.request(json!({"cmd": "result", "name": name, "machine": machine})),
        )
    }

    /// The result once the server recorded an end; `Err(partial)` on timeout.
    pub fn wait_result(
        &mut self,
        name: &str,
        machine: &str,
        timeout: Duration,
    ) -> Result<JobResult, Box<JobResult>> {
        let reply = self.request(json!({"cmd": "wait_result", "name": name, "machine": machine, "timeout": timeout.as_secs_f64()}));
        let result = JobResult::from_json(&reply);
        if reply["ok"] == true {
            Ok(result)
        } else {
            Err(Box::new(result))
        }
    }

    pub fn kill(&mut self, name: &str, instance: &str, machine: &str) {
        let reply = self.request(
            json!({"cmd": "kill", "name": name, "instance": instance, "machine": machine}),
        );
        assert_eq!(reply["ok"], true, "{reply}");
    }

    /// The endpoint's registered sockets: `<instance>:<machine>` and an id
    /// of the socket object (the same id: the same connection).
    pub fn connections(&mut self) -> std::collections::BTreeMap<String, u64> {
        let reply = self.request(json!({"cmd": "connections"}));
        reply["connections"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every `(job, machine)` the stand-in job process holds a result for
    /// (one is made by any state update the endpoint forwards, or a query).
    pub fn records(&mut self) -> Vec<(String, String)> {
        let reply = self.request(json!({"cmd": "records"}));
        reply["records"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        let part = |i: usize| r[i].as_str().unwrap_or_default().to_string();
                        (part(0), part(1))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn stop_endpoint(&mut self) {
        let reply = self.request(json!({"cmd": "stop_endpoint"}));
        assert_eq!(reply["ok"], true, "{reply}");
    }

    pub fn start_endpoint(&mut self) {
        let reply = self.request(json!({"cmd": "start_endpoint"}));
        assert_eq!(reply["ok"], true, "{reply}");
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the launcher (the process Salt runs) did.
#[derive(Debug)]
pub struct Launched {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// From exec to the launcher's exit *and* its pipes closing.
    pub elapsed: Duration,
}

impl Launched {
    /// Asserts the launch contract with Salt: exit 0 after both lines.
    pub fn expect_started(self) -> Launched {
        assert_eq!(self.code, Some(0), "launch failed: {self:?}");
        assert!(
            self.stdout.contains("Saltpeter Wrapper version")
                && self.stdout.contains("Wrapper started successfully"),
            "{self:?}"
        );
        self
    }
}

/// Runs `sp_wrapper` as Salt does: a clean environment with SP_* variables,
/// waiting for the exit and for stdout/stderr to close.
pub struct Launch {
    env: Vec<(String, String)>,
    args: Vec<String>,
    bin: PathBuf,
}

impl Launch {
    pub fn new(url: &str, job: &str, instance: &str, command: &str, dir: &TestDir) -> Launch {
        let mut launch = Launch {
            env: Vec::new(),
            args: Vec::new(),
            bin: wrapper_bin(),
        };
        launch = launch
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("SP_WEBSOCKET_URL", url)
            .env("SP_JOB_NAME", job)
            .env("SP_JOB_INSTANCE", instance)
            .env("SP_JOB_INSTANCE_NAME", instance)
            .env("SP_COMMAND", command)
            .env("SP_MACHINE_ID", MACHINE)
            .env("SP_WRAPPER_LOGDIR", dir.path.to_str().expect("utf-8 dir"))
            .env("SP_WRAPPER_LOGLEVEL", "debug")
            .env("SP_ALLOW_OVERLAP", "true")
            .env("SP_TIMEOUT", "0")
            .env("PYTHONUNBUFFERED", "1");
        launch
    }

    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Shorter timings for this run (`stall=5000,retry_interval=1`: names
    /// and milliseconds, src/timings.rs), through the one test-only
    /// variable, `SP_TEST_TIMINGS` (docs/testing.md).
    pub fn timings(self, spec: &str) -> Launch {
        self.env(sp_wrapper::timings::TEST_VARIABLE, spec)
    }

    pub fn unset(mut self, key: &str) -> Launch {
        self.env.retain(|(k, _)| k != key);
        self
    }

    pub fn arg(mut self, arg: &str) -> Launch {
        self.args.push(arg.to_string());
        self
    }

    pub fn bin(mut self, bin: PathBuf) -> Launch {
        self.bin = bin;
        self
    }

    pub fn command(&self) -> Command {
        let mut command = if self.bin == wrapper_bin() {
            command_for(&self.bin)
        } else {
            // Another program (a test's strace, say): it is run as given.
            Command::new(&self.bin)
        };
        command.env_clear().args(&self.args).stdin(Stdio::null());
        for (k, v) in &self.env {
            command.env(k, v);
        }
        if seccomp::requested() {
            // SP_TEST_OLD_KERNEL=1: the wrapper, its daemon and the job run
            // as on Linux 2.6.32 (newer system calls fail with ENOSYS). Only
            // for a binary the kernel runs itself: under qemu-user the filter
            // would judge qemu's host calls, not the wrapper's.
            assert!(
                wrapper_runner().is_empty(),
                "SP_TEST_OLD_KERNEL=1 with SP_WRAPPER_RUNNER={:?}: the old-kernel filter cannot \
                 stand for the guest's kernel under an emulator; refusing to run",
                wrapper_runner()
            );
            if let Err(why) = seccomp::abi_of_binary(&self.bin) {
                panic!("{why}");
            }
            seccomp::apply(&mut command);
        }
        command
    }

    /// Run with a 30 s watchdog (Salt's own timeout).
    pub fn run(&self) -> Launched {
        Self::run_command(self.command())
    }

    /// Run `command` (from `command()`, perhaps with more set up) as `run` does.
    pub fn run_command(mut command: Command) -> Launched {
        let started = Instant::now();
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sp_wrapper");
        let mut out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let pid = child.id();
        let pipes = [pipe_inode(&out), pipe_inode(&err)];
        let done = Arc::new(AtomicBool::new(false));
        let watchdog = {
            let done = done.clone();
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(20));
                }
                if !done.load(Ordering::SeqCst) {
                    // The launcher, and whoever else holds Salt's pipes (a
                    // daemon that failed to release them): otherwise the
                    // reads below never end and the test hangs, not fails.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    for holder in pipe_holders(&pipes) {
                        unsafe { libc::kill(holder, libc::SIGKILL) };
                    }
                }
            })
        };
        let err_reader = thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let mut stdout = String::new();
        let _ = out.read_to_string(&mut stdout);
        let stderr = err_reader.join().expect("stderr reader");
        let status = child.wait().expect("wait sp_wrapper");
        let elapsed = started.elapsed();
        done.store(true, Ordering::SeqCst);
        let _ = watchdog.join();
        assert!(
            elapsed < Duration::from_secs(30),
            "sp_wrapper held Salt's pipes for 30 s: {stdout} {stderr}"
        );
        Launched {
            code: status.code(),
            stdout,
            stderr,
            elapsed,
        }
    }
}

/// The inode of a pipe we hold, as /proc/<pid>/fd shows it: `pipe:[N]`.
fn pipe_inode(pipe: &impl std::os::fd::AsRawFd) -> String {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", pipe.as_raw_fd()))
        .expect("our own pipe's /proc link");
    link.to_string_lossy().into_owned()
}

/// Every other process that holds one of `pipes` open.
fn pipe_holders(pipes: &[String]) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    processes
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.filter_map(Result::ok).any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| pipes.iter().any(|p| target.as_os_str() == p.as_str()))
                })
            })
        })
        .collect()
}

/// Launch as Salt does and assert the launch contract (see `expect_started`).
pub fn launch_ok(launch: &Launch) -> Launched {
    launch.run().expect_started()
}

/// Compare big outputs without printing megabytes on failure.
pub fn assert_same(recorded: &str, expected: &str, what: &str) {
    if recorded == expected {
        return;
    }
    let first_difference = recorded
        .bytes()
        .zip(expected.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(recorded.len().min(expected.len()));
    let around = |s: &str| {
        let start = first_difference.saturating_sub(40);
        String::from_utf8_lossy(
            &s.as_bytes()[start.min(s.len())..(first_difference + 40).min(s.len())],
        )
        .into_owned()
    };
    panic!(
        "{what}: recorded {} bytes, expected {}; first difference at byte {first_difference}: recorded {:?} expected {:?}",
        recorded.len(),
        expected.len(),
        around(recorded),
        around(expected)
    );
}

/// Register `job` (instance `<job>_1`) with the server, launch `command`
/// through sp_wrapper as Salt would, and return what the server recorded.
pub fn run_job(server: &mut Harness, dir: &TestDir, job: &str, command: &str) -> JobResult {
    let instance = format!("{job}_1");
    server.add_job(job, &instance, &["test-minion"]);
    let launched = Launch::new(&server.url(), job, &instance, command, dir).run();
    assert_eq!(launched.code, Some(0), "launch failed: {launched:?}");
    server
        .wait_result(job, "test-minion", Duration::from_secs(60))
        .unwrap_or_else(|partial| panic!("no result recorded for {job}: {partial:?}"))
}

/// The job's log file in `dir` (default naming).
pub fn log_text(dir: &TestDir, job: &str) -> String {
    log_text_at(&dir.join(&format!("{job}.log")))
}

/// A log file's text, or "" while it does not exist yet.
pub fn log_text_at(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A timestamp as the wrapper sends it (`2026-11-22T08:40:02.123456+00:00`)
/// or the server stores it (a space for the `T`), as Unix seconds.
pub fn unix_seconds(timestamp: &str) -> f64 {
    let parsed = (|| {
        // `T` as sent; a space as the server's datetime prints it.
        let (date, time) = timestamp.strip_suffix("+00:00")?.split_once(['T', ' '])?;
        let numbers = |text: &str, separator: char| -> Option<Vec<f64>> {
            text.split(separator)
                .map(|n| n.parse::<f64>().ok())
                .collect()
        };
        let (ymd, hms) = (numbers(date, '-')?, numbers(time, ':')?);
        (ymd.len() == 3 && hms.len() == 3).then_some((ymd, hms))
    })();
    let Some((ymd, hms)) = parsed else {
        panic!("not a +00:00 timestamp: {timestamp:?}");
    };
    // Days from 1970-01-01 in the proleptic Gregorian calendar (H. Hinnant).
    let (y, m, d) = (ymd[0] as i64, ymd[1] as i64, ymd[2] as i64);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days as f64 * 86_400.0 + hms[0] * 3600.0 + hms[1] * 60.0 + hms[2]
}

/// Now, as seconds since the Unix epoch.
pub fn wall_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Is a process with this pid alive (and not a zombie)?
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// A TCP proxy on 127.0.0.1:0 to `upstream` that cuts every connection
/// after a random time in [min, max].
pub struct CuttingProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    connections: Arc<AtomicU64>,
}

impl CuttingProxy {
    pub fn start(upstream: u16, min: Duration, max: Duration, seed: u64) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let rng = Arc::new(Mutex::new(xorshift::XorShift::new(seed)));
        {
            let (stop, connections) = (stop.clone(), connections.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let client = match listener.accept() {
                        Ok((client, _)) => client,
                        Err(_) => {
                            thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                    };
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        continue;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let lifetime = {
                        let span = (max - min).as_millis() as u64 + 1;
                        min + Duration::from_millis(rng.lock().expect("rng").next_u64() % span)
                    };
                    let _ = client.set_nonblocking(false);
                    let pipes = [
                        (
                            client.try_clone().expect("clone"),
                            server.try_clone().expect("clone"),
                        ),
                        (
                            server.try_clone().expect("clone"),
                            client.try_clone().expect("clone"),
                        ),
                    ];
                    for (mut from, mut to) in pipes {
                        thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(Shutdown::Both);
                            let _ = from.shutdown(Shutdown::Both);
                        });
                    }
                    let stop = stop.clone();
                    thread::spawn(move || {
                        let deadline = Instant::now() + lifetime;
                        while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
                            thread::sleep(Duration::from_millis(10));
                        }
                        let _ = client.shutdown(Shutdown::Both);
                        let _ = server.shutdown(Shutdown::Both);
                    });
                }
            });
        }
        CuttingProxy {
            port,
            stop,
            connections,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Wait for `path` to hold a pid (a job writes `$$`, `$!` or `$PPID` there).
pub fn read_pid_file(path: &Path, timeout: Duration) -> i32 {
    let mut pid = None;
    wait_until(timeout, || {
        // Whole lines only: a read between two writes must not give a prefix.
        pid = std::fs::read_to_string(path)
            .ok()
            .filter(|text| text.ends_with('\n'))
            .and_then(|text| text.trim().parse().ok());
        pid.is_some()
    });
    pid.unwrap_or_else(|| panic!("no pid in {} after {timeout:?}", path.display()))
}

/// Fields of /proc/<pid>/stat after the command name: state is [0], ppid
/// [1], pgrp [2].
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    Some(after_name.split_whitespace().map(str::to_string).collect())
}

/// The parent of a live process.
pub fn parent_of(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Live (non-zombie) processes in process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            stat_fields(pid).is_some_and(|f| {
                f.first().is_some_and(|s| s != "Z")
                    && f.get(2).and_then(|g| g.parse().ok()) == Some(pgid)
            })
        })
        .collect()
}

/// A process's resident memory in KiB (`VmRSS` in /proc/<pid>/status).
pub fn vm_rss_kib(pid: i32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// A process's peak resident memory in KiB (`VmHWM`).
pub fn vm_hwm_kib(pid: i32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// A thread sampling `pid`'s peak resident memory (KiB) every 20 ms until
/// the process is gone; join it for the highest value seen.
pub fn peak_rss_sampler(pid: i32) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while let Some(hwm) = vm_hwm_kib(pid) {
            peak = peak.max(hwm);
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    })
}

fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Is the overlap lock at `path` free (no file, or its flock can be taken)?
/// Takes and drops the flock at once, never creates the file.
pub fn lock_is_free(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
        Err(e) => panic!("open {}: {e}", path.display()),
    };
    let fd = file.as_raw_fd();
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        unsafe { libc::flock(fd, libc::LOCK_UN) };
        return true;
    }
    false
}
