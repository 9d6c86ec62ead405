//! Old kernels: the static binary (`SP_WRAPPER_BIN=dist/sp_wrapper`) must
//! work on Linux 2.6.32 (CentOS 6). We cannot boot that kernel in CI, so
//! these tests make this one behave like it: a seccomp-BPF filter, written
//! below and installed in a `pre_exec` hook of the command that launches
//! `sp_wrapper`, makes every x86_64 system call added after 2.6.32 fail with
//! ENOSYS, and every `prctl` option added after it fail with EINVAL, exactly
//! as 2.6.32 answers them. The filter is inherited across `fork` and `execve`,
//! so the launcher, the daemon and the job all run under it.
//!
//! The scenarios are the ones that matter on an old host (exit code and
//! output, killing a process group, 8 MB of output, overlap, releasing
//! Salt's pipes), against the real Saltpeter endpoint. The first test proves
//! the filter really refuses new calls (and lets old ones through), so the
//! others cannot pass vacuously; the last one, which needs `strace`,
//! lists every system call the wrapper makes under the filter
//! (docs/packaging.md, "Linux 2.6.32").
//!
//! | section | test | proves |
//! |---|---|---|
//! | the filter itself | `the_filter_program_answers_per_abi_and_kills_unknown_arches` | the BPF program's answers per ABI (x86_64, i386), unknown audit arches killed: it fails closed |
//! | | `the_filter_behaves_like_2_6_32_and_the_wrapper_daemon_and_job_run_under_it` | new calls get ENOSYS, new prctl options EINVAL, old calls pass; the launcher, daemon and job all run under it |
//! | the scenarios, under the filter | `exit_code_and_output_are_exact` | exact output and retcode |
//! | | `kill_gives_143_and_no_process_of_the_group_survives` | group kill without newer calls |
//! | | `eight_megabytes_arrive_exactly` | the output path |
//! | | `overlap_is_refused_with_254` | the lock |
//! | | `salts_pipes_are_released_while_the_job_runs` | the launch contract with Salt |
//! | | `the_daemons_death_kills_the_job_and_is_reported` | the guardian without `PR_SET_CHILD_SUBREAPER` (init reaps) |
//! | the system-call audit | `syscall_audit_under_strace` | every call the agent makes under the filter, and which were refused (needs strace) |
//!
//! All are `#[ignore]`d: they need the static release binary and the
//! Python endpoint. `./build.sh test` runs them with `--include-ignored`:
//!
//! ```sh
//! ./build.sh && ./build.sh deps
//! SP_TEST_PYTHON=$PWD/.venv/bin/python SP_WRAPPER_BIN=$PWD/dist/sp_wrapper \
//!     cargo test --release --test integration -- --include-ignored old_kernel::
//! ```
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sp_wrapper::exit_codes;

use crate::common::{
    Harness, Launch, Launched, TestDir, assert_same, group_members, lock_is_free, log_text,
    pid_alive, read_pid_file, seccomp, wait_until,
};

const MACHINE: &str = "test-minion";
const RESULT_WAIT: Duration = Duration::from_secs(60);

/// The static binary under test. These tests are about it, not about the
/// host build that `cargo test` makes, so SP_WRAPPER_BIN is required, and it
/// must be what we ship: a plain static executable (ET_EXEC, no interpreter)
/// for an ABI the filter has a 2.6.32 table for (x86_64 or i386), run by
/// this kernel itself (no SP_WRAPPER_RUNNER).
fn static_wrapper() -> PathBuf {
    let bin = std::env::var_os("SP_WRAPPER_BIN")
        .map(PathBuf::from)
        .expect(
            "SP_WRAPPER_BIN is not set: these tests run the static release binary; \
         run ./build.sh, then SP_WRAPPER_BIN=$PWD/dist/sp_wrapper cargo test --release \
         --test integration -- --include-ignored old_kernel:: (./build.sh test does)",
        );
    assert!(
        crate::common::wrapper_runner().is_empty(),
        "SP_WRAPPER_RUNNER is set: under an emulator the filter would judge the emulator's \
         host system calls, not the wrapper's; the old-kernel tests cannot run that way"
    );
    if let Err(why) = seccomp::abi_of_binary(&bin) {
        panic!("{why}");
    }
    let elf =
        std::fs::read(&bin).unwrap_or_else(|e| panic!("SP_WRAPPER_BIN={}: {e}", bin.display()));
    let (kind, interpreter) = elf_kind(&elf);
    assert_eq!(
        kind,
        2,
        "{} is not a plain static executable (ET_EXEC): build it with ./build.sh",
        bin.display()
    );
    assert!(
        !interpreter,
        "{} has a program interpreter: it is not statically linked",
        bin.display()
    );
    bin
}

/// ELF `e_type`, and whether there is a PT_INTERP program header (ELF32
/// and ELF64, little-endian). Also `security`'s: a binary with an
/// interpreter is a glibc build, whose getpwnam asks NSS itself.
pub(crate) fn elf_kind(elf: &[u8]) -> (u16, bool) {
    assert!(
        elf.len() > 64 && &elf[..4] == b"\x7fELF" && elf[5] == 1,
        "not a little-endian ELF file"
    );
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().expect("8 bytes"));
    let (phoff, phentsize, phnum) = match elf[4] {
        1 => (u32_at(28) as usize, u16_at(42) as usize, u16_at(44)),
        2 => (u64_at(32) as usize, u16_at(54) as usize, u16_at(56)),
        class => panic!("unknown ELF class {class}"),
    };
    let interpreter = (0..phnum as usize).any(|i| u32_at(phoff + i * phentsize) == 3);
    (u16_at(16), interpreter)
}

/// The command Salt would run, with the old-kernel filter: the same one
/// `Launch` installs itself under SP_TEST_OLD_KERNEL=1 (then not twice:
/// under the first, the second's `PR_SET_NO_NEW_PRIVS` gets EINVAL, as on
/// 2.6.32).
fn old_kernel_command(launch: &Launch) -> Command {
    let mut command = launch.command();
    if !seccomp::requested() {
        seccomp::apply(&mut command);
    }
    command
}

/// `common::launch_ok`, under the old-kernel filter.
fn launch_ok_as_on_2_6_32(launch: &Launch) -> Launched {
    Launch::run_command(old_kernel_command(launch)).expect_started()
}

fn launch(server: &Harness, job: &str, instance: &str, command: &str, dir: &TestDir) -> Launch {
    Launch::new(&server.url(), job, instance, command, dir).bin(static_wrapper())
}

// ---------------------------------------------------------------------------
// The filter itself.

/// What a 2.6.32 kernel does with a call.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Expect {
    /// It has it: the filter must not change the outcome.
    Old,
    /// Added later: ENOSYS.
    Enosys,
    /// A `prctl` option added later: EINVAL.
    Einval,
}

/// One raw system call made by the probe child.
struct Call {
    name: &'static str,
    /// Made through `int 0x80` (the i386 table, AUDIT_ARCH_I386), not `syscall`.
    i386: bool,
    nr: libc::c_long,
    args: [libc::c_long; 6],
    expect: Expect,
    /// The kernel that added it (None: not compared with this host's answer).
    since: Option<(u32, u32, u32)>,
}

/// What a call returned: `Ok(value)` or `Err(errno)`.
type Outcome = Result<i64, i32>;

/// Run `calls` in a forked child, under the filter or not. The child makes
/// only raw system calls and writes the results to a pipe (no allocation
/// after `fork` in this multi-threaded test process).
fn probe(calls: &[Call], filtered: bool) -> Vec<Outcome> {
    const MAX: usize = 32;
    assert!(calls.len() <= MAX);
    let program = seccomp::program();
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let mut results = [0i64; 2 * MAX];
        unsafe {
            libc::close(fds[0]);
            if filtered && seccomp::install(&program).is_err() {
                libc::_exit(100);
            }
            for (i, call) in calls.iter().enumerate() {
                let (ret, errno) = if call.i386 {
                    match int80(call.nr, call.args) {
                        raw @ -4095..=-1 => (-1, -raw),
                        value => (value, 0),
                    }
                } else {
                    let [a, b, c, d, e, f] = call.args;
                    match libc::syscall(call.nr, a, b, c, d, e, f) {
                        -1 => (
                            -1,
                            std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64,
                        ),
                        value => (value, 0),
                    }
                };
                results[2 * i] = ret;
                results[2 * i + 1] = errno;
            }
            let bytes = std::slice::from_raw_parts(
                results.as_ptr().cast::<u8>(),
                std::mem::size_of_val(&results),
            );
            let written = libc::write(fds[1], bytes.as_ptr().cast(), bytes.len());
            libc::_exit(if written == bytes.len() as isize {
                0
            } else {
                101
            });
        }
    }
    unsafe { libc::close(fds[1]) };
    let mut bytes = Vec::new();
    unsafe { std::fs::File::from_raw_fd(fds[0]) }
        .read_to_end(&mut bytes)
        .expect("read the probe's results");
    let mut status = 0;
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the probe child failed (status {status:#x}; 100: the filter could not be installed)"
    );
    let words: Vec<i64> = bytes
        .chunks_exact(8)
        .map(|w| i64::from_ne_bytes(w.try_into().expect("8 bytes")))
        .collect();
    (0..calls.len())
        .map(|i| match words[2 * i] {
            -1 => Err(words[2 * i + 1] as i32),
            value => Ok(value),
        })
        .collect()
}

/// An i386 system call from this 64-bit process: `int 0x80` enters the
/// kernel's 32-bit table, and seccomp reports AUDIT_ARCH_I386, as for the
/// i686 wrapper. Five 32-bit arguments: the calls below pass no pointer.
/// Returns the raw result (-errno on failure).
unsafe fn int80(nr: libc::c_long, args: [libc::c_long; 6]) -> i64 {
    let ret: i32;
    unsafe {
        std::arch::asm!(
            // LLVM reserves rbx, so the first argument is swapped in and out.
            "xchg {arg0:r}, rbx",
            "int 0x80",
            "xchg {arg0:r}, rbx",
            arg0 = inout(reg) args[0] as u32 as u64 => _,
            inlateout("eax") nr as i32 => ret,
            in("ecx") args[1] as i32,
            in("edx") args[2] as i32,
            in("esi") args[3] as i32,
            in("edi") args[4] as i32,
        );
    }
    i64::from(ret)
}

/// The running kernel's version.
fn host_kernel() -> (u32, u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next())
}

/// The filter's verdict for every number of both tables, every old and new
/// `prctl` option, and other audit arches (killed: it fails closed). Needs
/// no binary, so it runs in every `cargo test`.
#[test]
fn the_filter_program_answers_per_abi_and_kills_unknown_arches() {
    use seccomp::{RET_ALLOW, RET_EINVAL, RET_ENOSYS, RET_KILL_PROCESS, evaluate};
    let program = seccomp::program();
    let new_on = |abi: &seccomp::Abi, nr: u32| {
        abi.new_ranges
            .iter()
            .any(|&(first, last)| (first..=last).contains(&nr))
    };
    for abi in seccomp::KNOWN {
        for nr in (0..1000).chain([0x3fff_ffff, u32::MAX]) {
            let verdict = evaluate(&program, abi.audit_arch, nr, 0);
            let x32 = abi == seccomp::X86_64 && nr >= seccomp::X32_SYSCALL_BIT;
            let expected = if nr == abi.sys_prctl {
                RET_ALLOW // option 0
            } else if x32 || new_on(&abi, nr) {
                RET_ENOSYS
            } else {
                RET_ALLOW
            };
            assert_eq!(verdict, expected, "{} system call {nr}", abi.name);
        }
        for option in 0..64u64 {
            let verdict = evaluate(&program, abi.audit_arch, abi.sys_prctl, option);
            let expected = if option < 34 { RET_ALLOW } else { RET_EINVAL };
            assert_eq!(verdict, expected, "{} prctl option {option}", abi.name);
        }
        // The other ABI's prctl number is not prctl here.
        assert_eq!(
            evaluate(&program, abi.audit_arch, abi.sys_prctl + 1, 36),
            if new_on(&abi, abi.sys_prctl + 1) {
                RET_ENOSYS
            } else {
                RET_ALLOW
            }
        );
    }
    // Spot checks against the kernel's own tables.
    assert_eq!(
        evaluate(&program, seccomp::X86_64.audit_arch, 298, 0),
        RET_ALLOW
    );
    assert_eq!(
        evaluate(&program, seccomp::X86_64.audit_arch, 299, 0),
        RET_ENOSYS
    );
    assert_eq!(
        evaluate(&program, seccomp::X86_64.audit_arch, 309, 0),
        RET_ALLOW
    );
    assert_eq!(
        evaluate(&program, seccomp::X86_64.audit_arch, 400, 0),
        RET_ALLOW
    );
    assert_eq!(
        evaluate(&program, seccomp::X86_64.audit_arch, 435, 0),
        RET_ENOSYS
    );
    assert_eq!(
        evaluate(&program, seccomp::I386.audit_arch, 336, 0),
        RET_ALLOW
    );
    assert_eq!(
        evaluate(&program, seccomp::I386.audit_arch, 337, 0),
        RET_ENOSYS
    );
    assert_eq!(
        evaluate(&program, seccomp::I386.audit_arch, 403, 0),
        RET_ENOSYS
    );
    // aarch64, arm, x86_64 big-endian-looking garbage, 0: not known, killed.
    for arch in [0xC000_00B7, 0x4000_0028, 0x8000_003E, 0, u32::MAX] {
        for nr in [0, 39, 172, 1000] {
            assert_eq!(
                evaluate(&program, arch, nr, 0),
                RET_KILL_PROCESS,
                "audit arch {arch:#x}"
            );
        }
    }
    // And a binary for an ABI without a table is refused before any launch.
    let dir = TestDir::new("ok_abi");
    let mut header = vec![0u8; 64];
    header[..4].copy_from_slice(b"\x7fELF");
    for (machine, known) in [(62u16, true), (3, true), (183, false), (40, false)] {
        header[18..20].copy_from_slice(&machine.to_le_bytes());
        let path = dir.join(&format!("elf_{machine}"));
        std::fs::write(&path, &header).expect("write");
        let abi = seccomp::abi_of_binary(&path);
        assert_eq!(abi.is_ok(), known, "ELF machine {machine}: {abi:?}");
    }
}

#[test]
#[ignore = "needs the static binary and the endpoint: SP_WRAPPER_BIN=$PWD/dist/sp_wrapper ... -- --include-ignored"]
fn the_filter_behaves_like_2_6_32_and_the_wrapper_daemon_and_job_run_under_it() {
    use Expect::{Einval, Enosys, Old};
    let bin = static_wrapper();
    // Buffers for the calls, prepared before the fork.
    let mut buf = [0u8; 512];
    let mut fds = [0i32; 2];
    let mut cpu = 0u32;
    let root = c"/";
    let p = |x: *mut u8| x as libc::c_long;
    let call = |name, nr, args, expect, since| Call {
        name,
        i386: false,
        nr,
        args,
        expect,
        since,
    };
    let calls = [
        // 2.6.32 has these: they must behave exactly as without the filter.
        call("getpid (39)", 39, [0; 6], Old, None),
        call(
            "pipe2 (293, 2.6.27)",
            293,
            [p(fds.as_mut_ptr().cast()), libc::O_CLOEXEC as _, 0, 0, 0, 0],
            Old,
            None,
        ),
        call(
            "perf_event_open (298, the last in 2.6.32)",
            298,
            [0, 0, -1, -1, 0, 0],
            Old,
            None,
        ),
        call(
            "getcpu (309, 2.6.19)",
            309,
            [p((&mut cpu as *mut u32).cast()), 0, 0, 0, 0, 0],
            Old,
            None,
        ),
        call(
            "prctl(PR_GET_DUMPABLE)",
            157,
            [libc::PR_GET_DUMPABLE as _, 0, 0, 0, 0, 0],
            Old,
            None,
        ),
        // Added later: ENOSYS under the filter, something else on this host.
        call(
            "recvmmsg (299, 2.6.33)",
            299,
            [-1, 0, 0, 0, 0, 0],
            Enosys,
            Some((2, 6, 33)),
        ),
        call(
            "prlimit64 (302, 2.6.36)",
            302,
            [0, libc::RLIMIT_NOFILE as _, 0, p(buf.as_mut_ptr()), 0, 0],
            Enosys,
            Some((2, 6, 36)),
        ),
        call(
            "setns (308, 3.0)",
            308,
            [-1, 0, 0, 0, 0, 0],
            Enosys,
            Some((3, 0, 0)),
        ),
        call(
            "process_vm_readv (310, 3.2)",
            310,
            [0; 6],
            Enosys,
            Some((3, 2, 0)),
        ),
        call(
            "getrandom (318, 3.17)",
            318,
            [p(buf.as_mut_ptr()), 16, 0, 0, 0, 0],
            Enosys,
            Some((3, 17, 0)),
        ),
        call(
            "statx (332, 4.11)",
            332,
            [
                libc::AT_FDCWD as _,
                root.as_ptr() as _,
                0,
                0xfff,
                p(buf.as_mut_ptr()),
                0,
            ],
            Enosys,
            Some((4, 11, 0)),
        ),
        call("rseq (334, 4.18)", 334, [0; 6], Enosys, Some((4, 18, 0))),
        call(
            "pidfd_send_signal (424, 5.1)",
            424,
            [-1, 0, 0, 0, 0, 0],
            Enosys,
            Some((5, 1, 0)),
        ),
        call("clone3 (435, 5.3)", 435, [0; 6], Enosys, Some((5, 3, 0))),
        call(
            "close_range (436, 5.9)",
            436,
            [1000, 1001, 0, 0, 0, 0],
            Enosys,
            Some((5, 9, 0)),
        ),
        // x32 is often compiled out of the host kernel: not compared.
        call(
            "x32 getpid (0x40000000|39)",
            0x4000_0000 | 39,
            [0; 6],
            Enosys,
            None,
        ),
        // prctl options after 2.6.32: EINVAL, like that kernel's default case.
        call(
            "prctl(PR_SET_CHILD_SUBREAPER, 1) (3.4)",
            157,
            [libc::PR_SET_CHILD_SUBREAPER as _, 1, 0, 0, 0, 0],
            Einval,
            Some((3, 4, 0)),
        ),
    ];
    // The same questions through the i386 table (the i686 build's ABI).
    let i386 = |name, nr, args, expect, since| Call {
        name,
        i386: true,
        nr,
        args,
        expect,
        since,
    };
    let calls: Vec<Call> = calls
        .into_iter()
        .chain([
            i386("i386 getpid (20)", 20, [0; 6], Old, None),
            i386(
                "i386 perf_event_open (336, the last in 2.6.32)",
                336,
                [0, 0, -1, -1, 0, 0],
                Old,
                None,
            ),
            i386(
                "i386 prctl(PR_GET_DUMPABLE) (172)",
                172,
                [libc::PR_GET_DUMPABLE as _, 0, 0, 0, 0, 0],
                Old,
                None,
            ),
            i386(
                "i386 recvmmsg (337, 2.6.33)",
                337,
                [-1, 0, 0, 0, 0, 0],
                Enosys,
                Some((2, 6, 33)),
            ),
            i386(
                "i386 prlimit64 (340, 2.6.36)",
                340,
                [0, libc::RLIMIT_NOFILE as _, 0, 0, 0, 0],
                Enosys,
                Some((2, 6, 36)),
            ),
            i386(
                "i386 getrandom (355, 3.17)",
                355,
                [0; 6],
                Enosys,
                Some((3, 17, 0)),
            ),
            i386(
                "i386 socket (359, 4.3)",
                359,
                [libc::AF_UNIX as _, libc::SOCK_STREAM as _, 0, 0, 0, 0],
                Enosys,
                Some((4, 3, 0)),
            ),
            i386(
                "i386 statx (383, 4.11)",
                383,
                [libc::AT_FDCWD as _, 0, 0, 0xfff, 0, 0],
                Enosys,
                Some((4, 11, 0)),
            ),
            i386(
                "i386 clock_gettime64 (403, 5.1)",
                403,
                [0; 6],
                Enosys,
                Some((5, 1, 0)),
            ),
            i386(
                "i386 prctl(PR_SET_CHILD_SUBREAPER, 1) (3.4)",
                172,
                [libc::PR_SET_CHILD_SUBREAPER as _, 1, 0, 0, 0, 0],
                Einval,
                Some((3, 4, 0)),
            ),
        ])
        .collect();
    let filtered = probe(&calls, true);
    let open = probe(&calls, false);
    let host = host_kernel();
    for ((call, under), without) in calls.iter().zip(&filtered).zip(&open) {
        eprintln!(
            "{:45} under the filter {under:?}, without {without:?}",
            call.name
        );
        let refusal = match call.expect {
            Old => {
                assert_eq!(
                    under.map(|_| ()),
                    without.map(|_| ()),
                    "{}: the filter changed a call 2.6.32 has",
                    call.name
                );
                continue;
            }
            Enosys => libc::ENOSYS,
            Einval => libc::EINVAL,
        };
        assert_eq!(
            *under,
            Err(refusal),
            "{} must be refused with errno {refusal}",
            call.name
        );
        // This kernel answers otherwise without the filter, so the refusal
        // above is the filter's doing.
        if call.since.is_some_and(|since| since <= host) {
            assert_ne!(
                *without,
                Err(refusal),
                "{}: the host kernel {host:?} refuses it too",
                call.name
            );
        }
    }
    // getrandom is the newer call the wrapper really makes (see the audit):
    // the comparison above must have covered it.
    assert!(
        host >= (3, 17, 0),
        "the host kernel {host:?} predates getrandom"
    );

    // The static binary starts under the filter.
    let mut version = Command::new(&bin);
    version.arg("--version");
    seccomp::apply(&mut version);
    let version = version
        .output()
        .expect("sp_wrapper --version under the filter");
    assert!(version.status.success(), "{version:?}");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("sp_wrapper {}", env!("CARGO_PKG_VERSION"))
    );

    // And a whole job: the daemon (the job's parent) and the job carry the filter.
    let dir = TestDir::new("ok_filter");
    let mut server = Harness::start(&dir);
    server.add_job("filter", "filter_1", &[MACHINE]);
    launch_ok_as_on_2_6_32(&launch(
        &server,
        "filter",
        "filter_1",
        "cat /proc/$PPID/comm; grep -h '^Seccomp:' /proc/$PPID/status /proc/self/status",
        &dir,
    ));
    let result = server
        .wait_result("filter", MACHINE, RESULT_WAIT)
        .expect("result recorded");
    assert_eq!(result.ret, "sp_wrapper\nSeccomp:\t2\nSeccomp:\t2\n");
    assert_eq!(result.retcode, Some(0));
}

// ---------------------------------------------------------------------------
// The scenarios, under the filter.

#[test]
#[ignore = "needs the static binary and the endpoint: SP_WRAPPER_BIN=$PWD/dist/sp_wrapper ... -- --include-ignored"]
fn exit_code_and_output_are_exact() {
    let dir = TestDir::new("ok_exact");
    let mut server = Harness::start(&dir);
    server.add_job("exact", "exact_1", &[MACHINE]);
    // Pauses give the two pipes a definite order (they have none otherwise).
    let command =
        "echo out1; sleep 0.3; echo err1 >&2; sleep 0.3; printf 'out2 no newline'; exit 3";
    let launched = launch_ok_as_on_2_6_32(&launch(&server, "exact", "exact_1", command, &dir));
    assert!(
        launched.stdout.contains("Saltpeter Wrapper version"),
        "{launched:?}"
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
#[ignore = "needs the static binary and the endpoint: SP_WRAPPER_BIN=$PWD/dist/sp_wrapper ... -- --include-ignored"]
fn kill_gives_143_and_no_process_of_the_group_survives() {
    // Under the filter the daemon cannot be a subreaper (prctl EINVAL, as on
    // 2.6.32): the orphan goes to init.
    crate::common::scenarios::kill_gives_143_and_no_process_of_the_group_survives(
        "ok_",
        |launch| {
            launch_ok_as_on_2_6_32(&launch.bin(static_wrapper()));
        },
    );
}

#[test]
#[ignore = "needs the static binary and the endpoint: SP_WRAPPER_BIN=$PWD/dist/sp_wrapper ... -- --include-ignored"]
fn eight_megabytes_arrive_exactly() {
    crate::common::scenarios::eight_megabytes_arrive_exactly("ok_", |launch| {
        launch_ok_as_on_2_6_32(&launch.bin(static_wrapper()));
    });
}

#[test]
#[ignore = "needs the static binary and the endpoint: SP_WRAPPER_BIN=$PWD/dist/sp_wrapper ... -- --include-ignored"]
fn overlap_is_refused_with_254() {
    let dir = TestDir::new("ok_overlap");
    let mut server = Harness::start(&dir);
    server.add_job("overlap", "overlap_1", &[MACHINE]);
    server.add_job("overlap", "overlap_2", &[MACHINE]);
    let lock = dir.join("overlap.lock");
    let locked = |instance: &str, command: &str| {
        launch(&server, "overlap", instance, command, &dir)
            .env("SP_ALLOW_OVERLAP", "false")
            .env("SP_LOCKFILE", lock.to_str().expect("utf-8"))
    };
    launch_ok_as_on_2_6_32(&locked("overlap_1", "sleep 3; echo first done"));
    let refused = Launch::run_command(old_kernel_command(&locked("overlap_2", "echo second ran")));
    assert_eq!(refused.code, Some(exit_codes::OVERLAP), "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("LOCKFILE ERROR: Job overlap already running (PID "),
        "{refused:?}"
    );
    let result = server
        .wait_result("overlap", MACHINE, RESULT_WAIT)
        .expect("first result");
    assert_eq!(result.ret, "first done\n");
    assert_eq!(result.retcode, Some(0));
}

#[test]
#[ignore = "needs the static binary and the endpoint: SP_WRAPPER_BIN=$PWD/dist/sp_wrapper ... -- --include-ignored"]
fn salts_pipes_are_released_while_the_job_runs() {
    let dir = TestDir::new("ok_pipes");
    let mut server = Harness::start(&dir);
    server.add_job("pipes", "pipes_1", &[MACHINE]);
    // Launch::run_command returns only once the launcher exited and its
    // stdout and stderr are closed, as Salt's cmd.run_all waits.
    let launched = launch_ok_as_on_2_6_32(&launch(
        &server,
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
    assert_eq!(result.retcode, Some(0));
}

#[test]
#[ignore = "needs the static binary and the endpoint: SP_WRAPPER_BIN=$PWD/dist/sp_wrapper ... -- --include-ignored"]
fn the_daemons_death_kills_the_job_and_is_reported() {
    // No subreaper under the filter: when the daemon dies the job's
    // processes go to init, and the guardian sees the group end through
    // kill(-pgid, 0) alone (tests/integration/guardian.rs has the full set).
    let dir = TestDir::new("ok_guardian");
    let mut server = Harness::start(&dir);
    server.add_job("orphaned", "orphaned_1", &[MACHINE]);
    let d = dir.path.display();
    let command = format!(
        "echo $PPID > {d}/daemon.pid; sleep 300 & echo $! > {d}/child.pid; echo $$ > {d}/shell.pid; echo running; wait"
    );
    let lock = dir.join("orphaned.lock");
    launch_ok_as_on_2_6_32(
        &launch(&server, "orphaned", "orphaned_1", &command, &dir)
            .env("SP_ALLOW_OVERLAP", "false")
            .env("SP_LOCKFILE", lock.to_str().expect("utf-8")),
    );
    let daemon = read_pid_file(&dir.join("daemon.pid"), RESULT_WAIT);
    let shell = read_pid_file(&dir.join("shell.pid"), RESULT_WAIT);
    let child = read_pid_file(&dir.join("child.pid"), RESULT_WAIT);
    assert!(
        wait_until(RESULT_WAIT, || server
            .result("orphaned", MACHINE)
            .ret
            .contains("running")),
        "no output recorded"
    );
    assert_eq!(unsafe { libc::kill(daemon, libc::SIGKILL) }, 0);
    let died = Instant::now();
    assert!(
        wait_until(Duration::from_secs(2), || group_members(shell).is_empty()),
        "processes {:?} of the job outlived the daemon by 2 s",
        group_members(shell)
    );
    assert!(!pid_alive(child));
    let result = server
        .wait_result("orphaned", MACHINE, Duration::from_secs(10))
        .expect("the guardian's result within 10 s");
    assert!(died.elapsed() < Duration::from_secs(10));
    assert_eq!(result.retcode, Some(exit_codes::AGENT_DIED), "{result:?}");
    assert_eq!(
        result.ret,
        format!(
            "running\n\n[sp_wrapper: the agent (pid {daemon}) died of signal 9 (SIGKILL); \
             the job's process group was killed]\n"
        )
    );
    assert!(wait_until(Duration::from_secs(10), || lock_is_free(&lock)));
}

// ---------------------------------------------------------------------------
// The system-call audit (docs/packaging.md).

/// Calls the wrapper makes that 2.6.32 refuses, each with what happens
/// then. The audit fails on any other refusal: a new one needs a look at its
/// fallback first, then an entry here and in docs/packaging.md.
const REFUSED_BUT_HANDLED: [(&str, &str, &str); 10] = [
    (
        "any",
        "getrandom",
        "the getrandom crate (tungstenite's handshake key and masks) polls /dev/random once, \
         then reads /dev/urandom",
    ),
    (
        "any",
        "prctl(PR_SET_CHILD_SUBREAPER)",
        "ignored: init reaps the job's orphans instead of the daemon",
    ),
    // i386: musl 1.2 makes the direct socket calls (359-373, Linux 4.3)
    // first and falls back to socketcall(2) on ENOSYS; the scenarios above
    // (connect, send, receive, socketpair in std's spawn) pass that way.
    (
        "i386",
        "socket",
        "musl falls back to socketcall(SYS_SOCKET)",
    ),
    (
        "i386",
        "socketpair",
        "musl falls back to socketcall(SYS_SOCKETPAIR)",
    ),
    (
        "i386",
        "connect",
        "musl falls back to socketcall(SYS_CONNECT)",
    ),
    (
        "i386",
        "getsockopt",
        "musl falls back to socketcall(SYS_GETSOCKOPT)",
    ),
    (
        "i386",
        "setsockopt",
        "musl falls back to socketcall(SYS_SETSOCKOPT)",
    ),
    (
        "i386",
        "sendto",
        "musl falls back to socketcall(SYS_SENDTO)",
    ),
    (
        "i386",
        "recvfrom",
        "musl falls back to socketcall(SYS_RECVFROM)",
    ),
    (
        "i386",
        "statx",
        "musl's fstatat tries statx (4.11) on 32-bit, then fstatat64",
    ),
];

/// One traced run of the audit.
struct AuditRun {
    job: &'static str,
    command: &'static str,
    env: Vec<(&'static str, String)>,
    retcode: i32,
    /// Start the endpoint only after this long (the outage is the scenario).
    server_away: Option<Duration>,
}

/// Under the filter and `strace -f`, run jobs through the wrapper and list
/// every system call its own code makes (in the launcher, the daemon, its
/// threads, and the job's child until it executes /bin/sh): a server that
/// comes late while output spills to the spool, output on both streams with
/// the lock and an exit code, a timeout kill (as `SP_USER=nobody` when we are
/// root). Ignored by default with its reason; run with --include-ignored
/// (as ./build.sh test does, after ./build.sh deps installed strace) it fails
/// when strace is missing rather than passing without auditing anything.
#[test]
#[ignore = "needs the static binary, the endpoint and strace: SP_WRAPPER_BIN=$PWD/dist/sp_wrapper ... -- --include-ignored"]
fn syscall_audit_under_strace() {
    let bin = static_wrapper();
    let abi_name = seccomp::abi_of_binary(&bin).expect("checked above").name;
    let Some(strace) = ["/usr/bin/strace", "/bin/strace"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
    else {
        panic!(
            "strace is not installed, so the syscall audit cannot run (./build.sh deps installs it; or apt-get install strace)"
        );
    };
    let dir = TestDir::new("ok_audit");
    let mut server = Harness::start_without_endpoint(&dir);
    let mut made: BTreeMap<String, u64> = BTreeMap::new();
    let mut refused: BTreeMap<String, String> = BTreeMap::new();
    let as_root = unsafe { libc::geteuid() } == 0
        && std::fs::read_to_string("/etc/passwd").is_ok_and(|p| p.contains("\nnobody:"));
    let runs = [
        AuditRun {
            job: "audit_spool",
            command: "head -c 3000000 /dev/zero | tr '\\0' s",
            env: vec![("SP_BUFFER_MAX_MB", "1".into())],
            retcode: 0,
            server_away: Some(Duration::from_secs(2)),
        },
        AuditRun {
            job: "audit",
            command: "echo out; echo err >&2; exit 3",
            env: vec![("SP_ALLOW_OVERLAP", "false".into())],
            retcode: 3,
            server_away: None,
        },
        AuditRun {
            job: "audit_timeout",
            command: "echo before; sleep 30",
            env: if as_root {
                vec![("SP_TIMEOUT", "1".into()), ("SP_USER", "nobody".into())]
            } else {
                vec![("SP_TIMEOUT", "1".into())]
            },
            retcode: exit_codes::TIMEOUT,
            server_away: None,
        },
    ];
    for run in runs {
        let job = run.job;
        let instance = format!("{job}_1");
        server.add_job(job, &instance, &[MACHINE]);
        let prefix = dir.join(&format!("trace_{job}"));
        let mut traced = Launch::new(&server.url(), job, &instance, run.command, &dir)
            .bin(strace.to_path_buf())
            .env(
                "SP_LOCKFILE",
                dir.join(&format!("{job}.lock")).to_str().expect("utf-8"),
            )
            .arg("-f")
            .arg("-ff")
            .arg("-qq")
            .arg("-e")
            .arg("signal=none")
            .arg("-o")
            .arg(prefix.to_str().expect("utf-8"))
            .arg("--")
            .arg(bin.to_str().expect("utf-8"));
        for (key, value) in &run.env {
            traced = traced.env(key, value);
        }
        // strace runs under the filter too (it copes: process_vm_readv gets
        // ENOSYS and it falls back to PTRACE_PEEKDATA), and so does everything
        // it traces. It waits for every traced process, the daemon included,
        // so it returns only once the job has been reported.
        let command = old_kernel_command(&traced);
        let tracing = std::thread::spawn(move || Launch::run_command(command));
        if let Some(outage) = run.server_away {
            std::thread::sleep(outage); // the outage under test, not a wait for a condition
            server.start_endpoint();
        }
        let launched = tracing.join().expect("the traced launch");
        assert_eq!(launched.code, Some(0), "{job}: {launched:?}");
        let result = server
            .wait_result(job, MACHINE, RESULT_WAIT)
            .expect("result recorded");
        assert_eq!(result.retcode, Some(run.retcode), "{job}: {result:?}");
        if job == "audit_spool" {
            assert_same(
                &result.ret,
                &"s".repeat(3_000_000),
                "3 MB through the spool",
            );
            let log = log_text(&dir, job);
            assert!(log.contains("spilling to"), "no spill to the spool: {log}");
        }
        let traces = read_traces(&dir.path, &format!("trace_{job}."));
        audit(&traces, &bin, &mut made, &mut refused);
    }
    let total: u64 = made.values().sum();
    eprintln!(
        "sp_wrapper ({abi_name}) made {} distinct system calls ({total} calls) under the 2.6.32 \
         filter:\n{}",
        made.len(),
        made.iter()
            .map(|(name, count)| format!("{name} ({count})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (call, line) in &refused {
        eprintln!("refused: {call}: {line}");
    }
    for expected in ["execve", "connect", "flock", "fork", "setsid", "kill"] {
        assert!(
            made.contains_key(expected),
            "{expected} not seen: the trace is incomplete"
        );
    }
    for call in refused.keys() {
        assert!(
            REFUSED_BUT_HANDLED
                .iter()
                .any(|(abi, name, _)| name == call && (*abi == "any" || *abi == abi_name)),
            "sp_wrapper makes {call}, which 2.6.32 refuses: check what happens then, and list it \
             in REFUSED_BUT_HANDLED and docs/packaging.md"
        );
    }
}

/// The per-process strace files: pid -> lines.
fn read_traces(dir: &Path, prefix: &str) -> HashMap<i32, Vec<String>> {
    let mut traces = HashMap::new();
    for entry in std::fs::read_dir(dir).expect("test dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix(prefix).and_then(|p| p.parse().ok()) {
            let text = std::fs::read_to_string(entry.path()).expect("trace");
            traces.insert(pid, text.lines().map(str::to_string).collect());
        }
    }
    assert!(!traces.is_empty(), "strace wrote nothing");
    traces
}

/// Walk the process tree from the process strace started, following
/// `clone`/`fork` results, and count the calls made while the image was
/// sp_wrapper. Refusals (ENOSYS, and EINVAL for prctl) are collected too.
fn audit(
    traces: &HashMap<i32, Vec<String>>,
    bin: &Path,
    made: &mut BTreeMap<String, u64>,
    refused: &mut BTreeMap<String, String>,
) {
    let bin = bin.to_str().expect("utf-8");
    let root = traces
        .iter()
        .find(|(_, lines)| {
            lines
                .first()
                .is_some_and(|l| l.starts_with(&format!("execve(\"{bin}\"")))
        })
        .map(|(pid, _)| *pid)
        .expect("the launcher's trace");
    let mut pending = vec![(root, false)];
    let mut seen = BTreeSet::new();
    while let Some((pid, mut ours)) = pending.pop() {
        if !seen.insert(pid) {
            continue;
        }
        let Some(lines) = traces.get(&pid) else {
            continue;
        };
        for line in lines {
            let Some(open) = line.find('(') else {
                continue;
            };
            let name = &line[..open];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                continue; // "<... resumed>", "---", "+++"
            }
            let ret = line.rsplit_once(" = ").map(|(_, r)| r).unwrap_or("");
            if ours {
                *made.entry(name.to_string()).or_default() += 1;
                if ret.starts_with("-1 ENOSYS") {
                    refused
                        .entry(name.to_string())
                        .or_insert_with(|| line.clone());
                }
                if name == "prctl" && ret.starts_with("-1 EINVAL") {
                    let what = line[open + 1..].split(',').next().unwrap_or("");
                    refused
                        .entry(format!("prctl({what})"))
                        .or_insert_with(|| line.clone());
                }
            }
            if matches!(name, "clone" | "clone3" | "fork" | "vfork") {
                if let Ok(child) = ret.split_whitespace().next().unwrap_or("").parse::<i32>() {
                    if child > 0 {
                        pending.push((child, ours));
                    }
                }
            }
            if name == "execve" && ret.starts_with('0') {
                ours = line.starts_with(&format!("execve(\"{bin}\""));
            }
        }
    }
}
