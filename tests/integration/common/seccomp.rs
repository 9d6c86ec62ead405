//! "Linux 2.6.32" for tests: the one seccomp-BPF filter that every test
//! claiming an old kernel installs (tests/integration/old_kernel.rs, and the conformance
//! suite under `SP_TEST_OLD_KERNEL=1` through `Launch`). Installed with
//! `prctl` in a `pre_exec` hook, so the launcher, the daemon and the job all
//! inherit it across `fork` and `execve`.
//!
//! It answers as 2.6.32 would, per system-call ABI (the audit arch the
//! kernel reports for each call):
//! - x86_64: 299-308 and 310-334 (`recvmmsg` ... `rseq`), 424 and up
//!   (`pidfd_*`, `io_uring_*`, `clone3`, `close_range`, ...) and every x32
//!   call (bit 0x40000000) get ENOSYS. 309 (`getcpu`) is 2.6.19; 335-423 are
//!   unassigned on x86_64.
//! - i386 (the i686 build, and `int 0x80`): 337 and up get ENOSYS.
//!   2.6.32's last i386 call is 336 (`perf_event_open`); 337 (`recvmmsg`)
//!   onwards, including the direct socket calls (359-373, 4.3) and the
//!   64-bit time calls (403-423, 5.1), came later.
//! - `prctl` with an option of 34 or more (`PR_MCE_KILL_GET` onwards, so
//!   `PR_SET_CHILD_SUBREAPER` 36 and `PR_SET_NO_NEW_PRIVS` 38) gets EINVAL,
//!   2.6.32's `default:` case, on both ABIs.
//! - Any other audit arch: the process is killed (`SECCOMP_RET_KILL_PROCESS`).
//!   The filter fails closed: a binary for an ABI it has no table for cannot
//!   run under it and "pass". `abi_of_binary` refuses such a binary before
//!   the launch, with the reason.
//!
//! arm64 and armhf are not here: their floors (3.7 and 3.x, see
//! docs/packaging.md) would need their own tables, and their binaries run
//! under qemu-user here, which translates guest calls into host x86_64
//! calls, so a host filter cannot stand for the guest's kernel.

use std::io;
use std::path::Path;
use std::process::Command;

/// One system-call ABI as Linux 2.6.32 has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abi {
    pub name: &'static str,
    /// `AUDIT_ARCH_*`, as `seccomp_data.arch` reports it.
    pub audit_arch: u32,
    /// ELF `e_machine` of binaries that use this ABI.
    pub elf_machine: u16,
    pub sys_prctl: u32,
    /// System-call numbers added after 2.6.32 (inclusive ranges).
    pub new_ranges: &'static [(u32, u32)],
}

/// `AUDIT_ARCH_X86_64` (EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE).
pub const X86_64: Abi = Abi {
    name: "x86_64",
    audit_arch: 0xC000_003E,
    elf_machine: 62,
    sys_prctl: 157,
    new_ranges: &[(299, 308), (310, 334), (424, u32::MAX)],
};

/// `AUDIT_ARCH_I386` (EM_386 | __AUDIT_ARCH_LE).
pub const I386: Abi = Abi {
    name: "i386",
    audit_arch: 0x4000_0003,
    elf_machine: 3,
    sys_prctl: 172,
    new_ranges: &[(337, u32::MAX)],
};

/// Every ABI the filter knows. Anything else is killed.
pub const KNOWN: [Abi; 2] = [X86_64, I386];

/// x32 system calls carry this bit (x32 came in 3.4).
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// 2.6.32's last `prctl` option is `PR_MCE_KILL` (33).
pub const FIRST_NEW_PRCTL_OPTION: u32 = 34;
/// Kill the whole process (4.14); the verdict for an unknown audit arch.
pub const RET_KILL_PROCESS: u32 = 0x8000_0000;
pub const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
pub const RET_ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
pub const RET_EINVAL: u32 = libc::SECCOMP_RET_ERRNO | libc::EINVAL as u32;

/// `offsetof(struct seccomp_data, ...)`; `args[0]`'s low half on LE.
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0_LOW: u32 = 16;

const LD: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// Where a jump goes: the next instruction or a label.
#[derive(Clone, Copy, PartialEq)]
enum To {
    Next,
    Label(&'static str),
}

enum Item {
    Label(&'static str),
    Insn(u16, u32, To, To),
}

/// The BPF program, every ABI in `KNOWN`.
pub fn program() -> Vec<libc::sock_filter> {
    use To::{Label, Next};
    let mut items = vec![Item::Insn(LD, ARCH, Next, Next)];
    for abi in KNOWN {
        items.push(Item::Insn(JEQ, abi.audit_arch, Label(abi.name), Next));
    }
    items.push(Item::Insn(RET, RET_KILL_PROCESS, Next, Next));
    for abi in KNOWN {
        items.push(Item::Label(abi.name));
        items.push(Item::Insn(LD, NR, Next, Next));
        if abi == X86_64 {
            items.push(Item::Insn(JGE, X32_SYSCALL_BIT, Label("enosys"), Next));
        }
        items.push(Item::Insn(JEQ, abi.sys_prctl, Label("prctl"), Next));
        // Highest range first: at or above its end -> old; at or above its start -> new.
        let mut ranges = abi.new_ranges.to_vec();
        ranges.sort_by_key(|&(first, _)| std::cmp::Reverse(first));
        for (first, last) in ranges {
            if last != u32::MAX {
                items.push(Item::Insn(JGE, last + 1, Label("allow"), Next));
            }
            items.push(Item::Insn(JGE, first, Label("enosys"), Next));
        }
        items.push(Item::Insn(RET, RET_ALLOW, Next, Next));
    }
    items.push(Item::Label("prctl"));
    items.push(Item::Insn(LD, ARG0_LOW, Next, Next));
    items.push(Item::Insn(
        JGE,
        FIRST_NEW_PRCTL_OPTION,
        Label("einval"),
        Next,
    ));
    for (label, verdict) in [
        ("allow", RET_ALLOW),
        ("enosys", RET_ENOSYS),
        ("einval", RET_EINVAL),
    ] {
        items.push(Item::Label(label));
        items.push(Item::Insn(RET, verdict, Next, Next));
    }
    assemble(&items)
}

/// Resolve labels into BPF's forward, relative jump offsets.
fn assemble(items: &[Item]) -> Vec<libc::sock_filter> {
    let mut at = std::collections::HashMap::new();
    let mut count = 0usize;
    for item in items {
        match item {
            Item::Label(name) => {
                at.insert(*name, count);
            }
            Item::Insn(..) => count += 1,
        }
    }
    let mut program = Vec::with_capacity(count);
    for item in items {
        let Item::Insn(code, k, jt, jf) = item else {
            continue;
        };
        let here = program.len();
        let offset = |to: &To| -> u8 {
            match to {
                To::Next => 0,
                To::Label(name) => {
                    let target = at[name];
                    assert!(target > here, "BPF jumps go forward only");
                    u8::try_from(target - here - 1).expect("BPF jump within 255")
                }
            }
        };
        program.push(libc::sock_filter {
            code: *code,
            jt: offset(jt),
            jf: offset(jf),
            k: *k,
        });
    }
    program
}

/// Run `program` on one `seccomp_data` (a BPF interpreter for the few
/// instructions above), for tests that check the verdict of every number.
pub fn evaluate(program: &[libc::sock_filter], arch: u32, nr: u32, arg0: u64) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    data[16..24].copy_from_slice(&arg0.to_le_bytes());
    let (mut pc, mut acc) = (0usize, 0u32);
    loop {
        let insn = program[pc];
        let k = insn.k;
        match insn.code {
            LD => {
                let at = k as usize;
                acc = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
                pc += 1;
            }
            JEQ | JGE => {
                let taken = if insn.code == JEQ { acc == k } else { acc >= k };
                pc += 1 + usize::from(if taken { insn.jt } else { insn.jf });
            }
            RET => return k,
            other => panic!("instruction {other:#x} is not interpreted"),
        }
    }
}

/// Install the filter in the calling process. Only `prctl` on memory
/// prepared earlier: safe in a `pre_exec` hook or after `fork`.
pub fn install(program: &[libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    unsafe {
        // Lets an unprivileged process install a filter; harmless as root
        // (it only stops setuid executables from gaining privileges).
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

/// Add the filter to `command` (it then applies to what it executes).
pub fn apply(command: &mut Command) {
    let program = program();
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command, move || install(&program));
    }
}

/// The ABI of the ELF executable at `path`, if the filter has its table.
/// `Err` says why a run under the filter would prove nothing.
pub fn abi_of_binary(path: &Path) -> Result<Abi, String> {
    let elf = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if elf.len() < 20 || &elf[..4] != b"\x7fELF" {
        return Err(format!("{} is not an ELF file", path.display()));
    }
    let machine = u16::from_le_bytes([elf[18], elf[19]]);
    KNOWN
        .into_iter()
        .find(|abi| abi.elf_machine == machine)
        .ok_or_else(|| {
            format!(
                "{}: the 2.6.32 seccomp filter has no system-call table for ELF machine {machine} \
                 (it knows x86_64 and i386); refusing to run it as an old-kernel test",
                path.display()
            )
        })
}

/// Whether launches in this test run get the old-kernel filter.
pub fn requested() -> bool {
    std::env::var_os("SP_TEST_OLD_KERNEL").is_some_and(|v| v == "1")
}
