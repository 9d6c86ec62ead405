//! An "old kernel" for tests: a seccomp filter that makes every x86_64
//! system call added after Linux 2.6.32 fail with ENOSYS, as that kernel
//! would. Installed with `prctl` in a `pre_exec` hook, so the wrapper, its
//! daemon and the job all inherit it.
//!
//! 2.6.32's last x86_64 system call is 298 (`perf_event_open`). Numbers
//! 299-308 and 310-334 came later (recvmmsg ... rseq), and so did everything
//! from 424 (`pidfd_send_signal`, `io_uring_*`, `clone3`, `close_range`, ...).
//! 309 (`getcpu`) is older and 335-423 are unassigned on x86_64.

use std::io;

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// `offsetof(struct seccomp_data, nr)` and `arch`.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
/// The x32 ABI bit: refuse those too, a 2.6.32 x86_64 kernel has no x32.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The BPF program. Jump offsets count instructions skipped after the jump.
pub fn program() -> Vec<libc::sock_filter> {
    let ld = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let jge = libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K;
    let ret = libc::BPF_RET | libc::BPF_K;
    const ENOSYS_AT: u8 = 10;
    const ALLOW_AT: u8 = 11;
    vec![
        /* 0 */ stmt(ld, OFFSET_ARCH),
        /* 1 */ jump(jeq, AUDIT_ARCH_X86_64, 0, ALLOW_AT - 2),
        /* 2 */ stmt(ld, OFFSET_NR),
        /* 3 */ jump(jge, X32_SYSCALL_BIT, ENOSYS_AT - 4, 0),
        /* 4 */ jump(jge, 424, ENOSYS_AT - 5, 0),
        /* 5 */ jump(jge, 335, ALLOW_AT - 6, 0),
        /* 6 */ jump(jge, 310, ENOSYS_AT - 7, 0),
        /* 7 */ jump(jeq, 309, ALLOW_AT - 8, 0),
        /* 8 */ jump(jge, 299, ENOSYS_AT - 9, 0),
        /* 9 */ stmt(ret, libc::SECCOMP_RET_ALLOW),
        /* 10 */ stmt(ret, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        /* 11 */ stmt(ret, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Install the filter in the calling process (for `pre_exec`: it only makes
/// system calls on memory prepared before the fork).
pub fn install(program: &[libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    unsafe {
        // Required to install a filter without CAP_SYS_ADMIN, and harmless as root.
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether launches in this test run get the old-kernel filter.
pub fn requested() -> bool {
    std::env::var_os("SP_TEST_OLD_KERNEL").is_some_and(|v| v == "1")
}
