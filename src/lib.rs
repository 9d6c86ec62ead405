//! The library behind `sp_wrapper`: every module of the agent, so that the
//! binary (`main.rs`) is its flags and dispatch alone and the integration
//! tests import the constants and tables they check instead of copying them.
//!
//! The three processes a run has (docs/architecture.md): the launcher
//! (`launcher.rs`), the guardian (`guardian.rs`) and the daemon
//! (`daemon.rs`); `check.rs` is `--check`. They sit at the top with what
//! every part reads (the configuration, the timings, the exit codes, the
//! log, the messages between threads, what the daemon tells its guardian);
//! the folders are the seams below them, and their imports point one way
//! (`run` → `report`, `wire`, `minion`, `os`; `wire` and `minion` → `os`):
//! `run/` (the supervisor, its session with the server and its threads),
//! `report/` (the output on its way), `wire/` (the WebSocket), `minion/`
//! (the minion id, as Salt computes it) and `os/` (the system calls,
//! wrapped once).

pub mod check;
pub mod config;
pub mod daemon;
pub mod exit_codes;
pub mod guardian;
pub mod launcher;
pub mod logger;
pub mod messages;
#[cfg(test)]
pub mod property_tests;
pub mod timings;
pub mod to_guardian;

pub mod minion;
pub mod os;
pub mod report;
pub mod run;
pub mod wire;
