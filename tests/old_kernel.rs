//! Old kernels: the static binary must work on Linux 2.6.32. The scenarios
//! themselves are the conformance suite, run a second time by `./build.sh
//! test` with `SP_TEST_OLD_KERNEL=1` (every launch under the seccomp filter
//! in tests/common/seccomp.rs). These tests prove the filter really behaves
//! like an old kernel, so those runs cannot pass vacuously, and run the
//! static binary under it directly.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::{Harness, Launch, TestDir, seccomp};

fn errno_of(result: libc::c_long) -> Option<i32> {
    (result == -1).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

#[test]
fn the_filter_fails_new_system_calls_with_enosys_and_allows_old_ones() {
    let program = seccomp::program();
    let mut probe = Command::new("/bin/true");
    unsafe {
        probe.pre_exec(move || {
            seccomp::install(&program)?;
            let mut buf = [0u8; 8];
            // getrandom (318, Linux 3.17), statx (332, 4.11), close_range (436, 5.9), clone3 (435, 5.3).
            let newer: [(libc::c_long, libc::c_long); 4] = [
                (
                    libc::SYS_getrandom,
                    libc::syscall(libc::SYS_getrandom, buf.as_mut_ptr(), buf.len(), 0),
                ),
                (
                    libc::SYS_statx,
                    libc::syscall(
                        libc::SYS_statx,
                        libc::AT_FDCWD,
                        c"/".as_ptr(),
                        0,
                        0,
                        std::ptr::null_mut::<u8>(),
                    ),
                ),
                (436, libc::syscall(436, 1000, 1001, 0)),
                (435, libc::syscall(435, std::ptr::null_mut::<u8>(), 0)),
            ];
            for (number, result) in newer {
                if errno_of(result) != Some(libc::ENOSYS) {
                    return Err(std::io::Error::other(format!(
                        "system call {number} was not refused with ENOSYS"
                    )));
                }
            }
            // Old calls still work: getpid (39), getcpu (309, 2.6.19).
            if libc::syscall(libc::SYS_getpid) <= 0 {
                return Err(std::io::Error::other("getpid failed under the filter"));
            }
            let mut cpu = 0u32;
            if libc::syscall(
                libc::SYS_getcpu,
                &mut cpu,
                std::ptr::null_mut::<u32>(),
                std::ptr::null_mut::<u8>(),
            ) != 0
            {
                return Err(std::io::Error::other("getcpu (309) must stay allowed"));
            }
            Ok(())
        });
    }
    let status = probe.status().expect("the probe ran under the filter");
    assert!(status.success());
}

#[test]
fn the_static_binary_runs_a_job_under_the_filter() {
    let Some(bin) = std::env::var_os("SP_WRAPPER_BIN") else {
        eprintln!("SP_WRAPPER_BIN is not set: ./build.sh test runs this with dist/sp_wrapper");
        return;
    };
    let dir = TestDir::new("oldkernel");
    let mut server = Harness::start(&dir);
    server.add_job("old", "old_1", &["test-minion"]);
    let program = seccomp::program();
    let launch = Launch::new(
        &server.url(),
        "old",
        "old_1",
        "echo on an old kernel; grep Seccomp: /proc/self/status; exit 9",
        &dir,
    )
    .bin(bin.into());
    let mut command = launch.command();
    unsafe {
        command.pre_exec(move || seccomp::install(&program));
    }
    let output = command.output().expect("run sp_wrapper under the filter");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let result = server
        .wait_result("old", "test-minion", Duration::from_secs(60))
        .expect("result recorded");
    // Seccomp 2 = filtered: the job inherited the old-kernel filter through the daemon.
    assert_eq!(result.ret, "on an old kernel\nSeccomp:\t2\n");
    assert_eq!(result.retcode, Some(9));
}
