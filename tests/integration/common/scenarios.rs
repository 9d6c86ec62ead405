//! Scenarios that more than one suite runs, each with its own way of
//! launching: the conformance suite as Salt launches, the old-kernel suite
//! with the static binary under the 2.6.32 filter. Each takes `run`, which
//! launches the prepared `Launch` and asserts the launch contract.

use std::time::{Duration, Instant};

use sp_wrapper::exit_codes;

use super::{Harness, Launch, MACHINE, TestDir, assert_same, pid_alive, wait_until};

/// How long the endpoint may take to record a result.
const RESULT_WAIT: Duration = Duration::from_secs(60);

/// A job and its background child both ignore SIGTERM: the server's kill
/// gives 143 within 20 s, the marker is in the text, and no process of the
/// group survives (only the SIGKILL escalation can end them).
pub fn kill_gives_143_and_no_process_of_the_group_survives(prefix: &str, run: impl FnOnce(Launch)) {
    let dir = TestDir::new(&format!("{prefix}kill"));
    let mut server = Harness::start(&dir);
    server.add_job("kill", "kill_1", &[MACHINE]);
    let pids = dir.join("pids");
    let command = format!(
        "trap '' TERM; sleep 300 & echo $! > {0}; echo $$ >> {0}; echo running; wait",
        pids.display()
    );
    run(Launch::new(&server.url(), "kill", "kill_1", &command, &dir));
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read_to_string(&pids)
            .map(|p| p.lines().count() == 2)
            .unwrap_or(false)),
        "the job did not start"
    );
    let pids: Vec<i32> = std::fs::read_to_string(&pids)
        .expect("pids")
        .lines()
        .map(|l| l.trim().parse().expect("pid"))
        .collect();
    assert!(
        wait_until(Duration::from_secs(20), || server
            .result("kill", MACHINE)
            .starttime
            .is_some()),
        "start recorded"
    );
    let asked = Instant::now();
    server.kill("kill", "kill_1", MACHINE);
    let result = server
        .wait_result("kill", MACHINE, RESULT_WAIT)
        .expect("result recorded");
    assert_eq!(
        result.retcode,
        Some(exit_codes::KILLED_BY_REQUEST),
        "{result:?}"
    );
    assert!(result.ret.starts_with("running\n"), "{:?}", result.ret);
    assert!(
        result.ret.contains("[Job terminated by user request]"),
        "{:?}",
        result.ret
    );
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "kill took {:?}",
        asked.elapsed()
    );
    for pid in pids {
        assert!(
            wait_until(Duration::from_secs(5), || !pid_alive(pid)),
            "process {pid} of the job survived the kill"
        );
    }
}

/// 8 MB of numbered lines arrive exactly, retcode 0.
pub fn eight_megabytes_arrive_exactly(prefix: &str, run: impl FnOnce(Launch)) {
    let dir = TestDir::new(&format!("{prefix}eight"));
    let mut server = Harness::start(&dir);
    server.add_job("eight", "eight_1", &[MACHINE]);
    let text: String = (0..200_000)
        .map(|i| format!("line {i:08} of the eight megabyte test.\n"))
        .collect();
    assert!(text.len() >= 8_000_000);
    let file = dir.join("input.txt");
    std::fs::write(&file, &text).expect("write input");
    let command = format!("cat {}", file.display());
    // 8.2 MB: past the default SP_OUTPUT_MAX_MB head (8 MiB less 256 KiB);
    // every byte is asserted here, so no cap (bounded.rs tests the cap).
    run(
        Launch::new(&server.url(), "eight", "eight_1", &command, &dir).env("SP_OUTPUT_MAX_MB", "0"),
    );
    let result = server
        .wait_result("eight", MACHINE, RESULT_WAIT)
        .expect("result recorded");
    assert_eq!(result.retcode, Some(0));
    assert_same(&result.ret, &text, "8 MB");
}
