//! `sp_wrapper`'s flags, and the dispatch to the three processes of a run
//! or to `--check`.
//!
//! `sp_wrapper` is the Saltpeter job agent. Salt starts it on a minion with
//! `SP_*` variables; it returns to Salt at once, then (detached) runs the job
//! and reports it to the server over a WebSocket. The three processes a run
//! has (docs/architecture.md): the launcher (`launcher.rs`), the guardian
//! (`guardian.rs`) and the daemon (`daemon.rs`).

use std::io::Write;

use sp_wrapper::exit_codes::{self, LaunchError};
use sp_wrapper::os::lockfile;
use sp_wrapper::wire::protocol::VERSION;
use sp_wrapper::{check, config, daemon, guardian, launcher, minion};

/// A launch failure is printed and exited with here, and only here (in the
/// detached processes stderr is /dev/null: they told the launcher already).
fn main() {
    let code = run().unwrap_or_else(|error| {
        eprintln!("{error}");
        error.exit_code()
    });
    std::process::exit(code);
}

/// `--print-machine-id`: the id on stdout and where it came from on stderr;
/// `SP_MACHINE_ID` counts, as in a run.
fn print_machine_id() -> i32 {
    minion::id::note_salt_ancestor();
    let override_id = std::env::var("SP_MACHINE_ID").ok();
    let (id, source) = minion::id::resolve(override_id.as_deref(), &|var| std::env::var(var).ok());
    println!("{id}");
    eprintln!("sp_wrapper: machine id from {source}");
    exit_codes::SUCCESS
}

fn run() -> Result<i32, LaunchError> {
    let mut foreground = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--version" | "-V" => {
                println!("sp_wrapper {VERSION}");
                return Ok(exit_codes::SUCCESS);
            }
            "--help" | "-h" => {
                print!("{}", config::usage());
                return Ok(exit_codes::SUCCESS);
            }
            "--foreground" => foreground = true,
            "--check" => return Ok(check::run()),
            // Hidden (not in --help): the machine id this agent would
            // report here, for tests/salt_id's comparison with Salt and for
            // an operator's check (docs/configuration.md, "The machine id").
            "--print-machine-id" => return Ok(print_machine_id()),
            other => return Err(LaunchError::UnknownFlag(other.to_string())),
        }
    }
    println!("Saltpeter Wrapper version {VERSION}");
    let _ = std::io::stdout().flush();

    let launch = launcher::prepare()?;
    if foreground {
        // No guardian: we are the caller's child, and the caller sees us die.
        return daemon::run_in_foreground(&launch);
    }
    let reporter = match launcher::detach(launch.timings.report_timeout)? {
        launcher::Detached::Launcher => return Ok(exit_codes::SUCCESS),
        launcher::Detached::Child(reporter) => reporter,
    };
    // The guardian takes the lock before the daemon exists, so the lock
    // outlives the daemon (guardian.rs).
    let role = lockfile::acquire_for_job(&launch.cfg).and_then(guardian::fork_daemon);
    match role {
        Err(error) => {
            reporter.failed(&error);
            Err(error)
        }
        Ok(guardian::Role::Guardian(guardian)) => {
            // Only the daemon reports to the launcher: without our copy of the
            // pipe, a daemon that dies before reporting gives it EOF at once.
            drop(reporter);
            Ok(guardian.watch(&launch.cfg, &launch.timings))
        }
        Ok(guardian::Role::Daemon(lock)) => daemon::run_detached(&launch, lock, reporter),
    }
}
