//! The integration suite: one test binary (`cargo test --test integration`),
//! every test driving the built `sp_wrapper` from outside, as Salt does, in a
//! temp dir of its own, against the real Saltpeter endpoint or a scripted
//! server on 127.0.0.1:0. Pick a part with a filter, e.g.
//! `cargo test --release --test integration -- conformance::`.
//!
//! | module | what it proves |
//! |---|---|
//! | `conformance` | the launch contract and the protocol against the real endpoint: exact output and retcodes, timeout 124, kill 143, heartbeats, overlap 254, launch errors, JOB_NOT_FOUND, the log |
//! | `record` | what the server stores is the job's own: start and end times, output in the order written, a bounded life against a server that never ACKs, clean closes |
//! | `delivery` | every byte in order across cuts, restarts and outages, and through an 8 KiB/s link; the job never slowed; memory bounded with a spool |
//! | `bounded` | what one run costs the server (`SP_OUTPUT_MAX_MB`, on saltpeter's own production state), a full disk (one gap, both ends kept, root), 200 MB never ACKed in bounded memory and time |
//! | `crash` | the crash sweep: the daemon (or the guardian) SIGKILLed at every step of a run, found from a clean run's frames, one run per step, each record checked (docs/testing.md); a panic of the binary aborts with its message |
//! | `guardian` | the agent's own death: the job's group killed, the lock held until it is gone, 255 recorded after every byte the dead daemon had read and the server had not ACKed (its spool file is a write-ahead journal), stale spools removed |
//! | `check` | `sp_wrapper --check`: a healthy setup against the real endpoint (a job running meanwhile, with the same variables, keeps its connection and an exact record; nothing left behind), a dead server, a read-only log directory, an unknown `SP_USER`: each its line, summary and exit code |
//! | `minion_config` | hostile minion configurations (include loops and fan-out, merges of merges, random ones): `--print-machine-id` within 1 s of CPU and 16 MiB |
//! | `dead_dns` | a resolver that never answers: the generated machine id's lookups bounded to 5 s, the record in the server's window (root: namespaces) |
//! | `security` | the lock against races and planted files, `SP_USER` (local and directory users), paths, descriptors, modes, signals, a hostile server |
//! | `old_kernel` | the static binary under a seccomp filter that plays Linux 2.6.32 (`SP_TEST_OLD_KERNEL=1`, `#[ignore]`d otherwise) |
//! | `architecture` | the module map in docs/architecture.md against the code's own imports; no edge points up, no cycle; the Files table against each file's opening sentence |
//! | `salt_pins` | the docs name the Salt releases tests/salt_pins pins, and no other |
//! | `arch` | per-arch checks of one built binary, e.g. a job in 2040 (`#[ignore]`d unless given one) |
//!
//! Tests that need something this machine may lack (root, strace, the
//! static binary) are `#[ignore]`d with the reason; `./build.sh test` runs
//! them with `--include-ignored`, where they fail rather than pass if they
//! cannot run. `common/` holds the harnesses: the endpoint driver, the
//! launcher, waits with deadlines, the cutting and the throttling proxies,
//! the scripted and the hostile servers, the one seccomp filter, users only
//! NSS knows (libnss-extrausers).

mod common;

mod arch;
mod architecture;
mod bounded;
mod check;
mod conformance;
mod crash;
mod dead_dns;
mod delivery;
mod guardian;
mod minion_config;
mod old_kernel;
mod reconnects;
mod record;
mod salt_pins;
mod security;
