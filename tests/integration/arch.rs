//! Per-arch checks that need the built binary of one arch
//! (`SP_WRAPPER_BIN=dist/<triple>/sp_wrapper`), run by `./build.sh test`
//! for every arch that built (docs/packaging.md, "Proving each binary").
//!
//! After 2038: a job run through the wrapper while the wall clock reads
//! 2040-01-01, against the real endpoint, must be recorded with 2040 start
//! and end times. On 32-bit targets that is the 64-bit `time_t` path of
//! src/os/clock.rs; std's own clock fails there after 2038-01-19 (EOVERFLOW,
//! then a panic), so this test fails on a build that reads the clock through
//! std.
//!
//! The clock is moved with libfaketime, preloaded into the qemu-user process
//! that runs the wrapper: qemu 7.2 gives its guest no vDSO, so the guest's
//! `clock_gettime64` becomes qemu's host `clock_gettime`, which libfaketime
//! answers. A static binary that the kernel runs itself cannot be faked this
//! way (no preload, and the vDSO answers without a system call), so the test
//! needs `SP_WRAPPER_RUNNER` (qemu-i386 for the i686 build). The monotonic
//! clock is left alone (`FAKETIME_DONT_FAKE_MONOTONIC=1`): it counts from
//! boot, and a real host's never reaches 2038.
//!
//! `#[ignore]`d: it needs the binary, qemu-user and libfaketime, which
//! `./build.sh deps` installs. Without them it fails, never passes.

use std::path::Path;
use std::time::Duration;

use crate::common::{Harness, Launch, TestDir, log_text};

const MACHINE: &str = "test-minion";
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[test]
#[ignore = "needs SP_WRAPPER_BIN, a qemu-user SP_WRAPPER_RUNNER and libfaketime: ./build.sh test runs it per arch"]
fn a_job_in_2040_is_recorded_with_2040_times() {
    assert!(
        std::env::var_os("SP_WRAPPER_BIN").is_some(),
        "SP_WRAPPER_BIN is not set: this test is about one arch's built binary"
    );
    let runner = crate::common::wrapper_runner();
    assert!(
        runner
            .first()
            .is_some_and(|program| program.contains("qemu-")),
        "SP_WRAPPER_RUNNER={runner:?}: the clock of a static binary the kernel runs itself \
         cannot be moved (no preload; the vDSO); run it under qemu-user (qemu-i386 for i686)"
    );
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: apt-get install faketime (./build.sh deps)"
    );
    let dir = TestDir::new("y2040");
    let mut server = Harness::start(&dir);
    server.add_job("y2040", "y2040_1", &[MACHINE]);
    // Long enough for a heartbeat (every 5 s), so every kind of frame that
    // carries a time stamp is sent at least once.
    let launched = Launch::new(
        &server.url(),
        "y2040",
        "y2040_1",
        "echo in 2040; sleep 6; echo still 2040; exit 4",
        &dir,
    )
    .env("LD_PRELOAD", LIBFAKETIME)
    .env("FAKETIME", "@2040-01-01 00:00:00")
    .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
    .run();
    assert_eq!(launched.code, Some(0), "{launched:?}");
    let result = server
        .wait_result("y2040", MACHINE, Duration::from_secs(60))
        .unwrap_or_else(|partial| panic!("no result recorded: {partial:?}"));
    assert_eq!(result.ret, "in 2040\nstill 2040\n");
    assert_eq!(result.retcode, Some(4));
    for (what, time) in [("start", &result.starttime), ("end", &result.endtime)] {
        let time = time.as_deref().unwrap_or_default();
        assert!(
            time.starts_with("2040-01-01"),
            "{what} time recorded as {time:?}, not 2040-01-01"
        );
    }
    let log = log_text(&dir, "y2040");
    assert!(
        log.lines()
            .all(|line| line.starts_with("[y2040_1] 2040-01-01T")),
        "every log line stamped 2040: {log}"
    );
    eprintln!(
        "recorded start {:?}, end {:?}, {} heartbeats",
        result.starttime,
        result.endtime,
        result.heartbeats.len()
    );
}
