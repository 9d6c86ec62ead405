//! The library behind `sp_wrapper`: every module of the agent, so that the
//! binary (`main.rs`) is its flags and dispatch alone and the integration
//! tests import the constants and tables they check instead of copying them.
//!
//! The three processes a run has (docs/architecture.md): the launcher
//! (`launcher.rs`), the guardian (`guardian.rs`) and the daemon
//! (`daemon.rs`); `check.rs` is `--check`.

pub mod check;
pub mod child;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod effects;
pub mod exit_codes;
pub mod frames;
#[cfg(test)]
pub mod fuzz;
pub mod guardian;
pub mod job;
pub mod launcher;
pub mod link;
pub mod live;
pub mod lockfile;
pub mod logger;
pub mod messages;
pub mod minion;
pub mod nss;
pub mod oneshot;
pub mod outbox;
pub mod output_cap;
pub mod pacing;
pub mod pipe;
pub mod protocol;
pub mod readers;
pub mod regular_file;
pub mod session;
pub mod spool;
pub mod supervisor;
pub mod tail;
pub mod threads;
pub mod to_guardian;
pub mod utf8;
pub mod xorshift;
