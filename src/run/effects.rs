//! What the supervisor does to the world, as a trait: frames to the link
//! thread, signals to the job's process group, the log, our own stdout. The
//! daemon's and the guardian's implementation is `LiveEffects` in `live.rs`;
//! the supervisor's tests use a fake that records everything, so the session
//! and the job's lifecycle are tested with fake events and fake time,
//! without threads.

use crate::messages::{LinkCommand, Stream};

pub trait Effects {
    fn link(&mut self, command: LinkCommand);
    /// Signal the job's process group; `false` when no process is left in it.
    fn signal_group(&mut self, signal: i32) -> bool;
    /// `--foreground`: show the job's output on our own stdout/stderr.
    fn tee(&mut self, stream: Stream, text: &str);
    fn reopen_log(&mut self);
    // What the guardian is told (`to_guardian.rs`), each before it is acted
    // on: no-ops where there is no guardian.

    /// The link resolved the machine id every frame carries.
    fn machine_identified(&mut self, _machine: &str) {}
    /// The server ACKed our `start` (output may follow; the guardian must
    /// never send another `start`, which would reset the recorded output).
    fn start_acked(&mut self) {}
    /// Our first `complete` is about to go out, every output message before
    /// it ACKed.
    fn complete_sent(&mut self) {}
    /// No process of the job's group is left and its leader is reaped: the
    /// group id may be reused by an unrelated process from now on, so
    /// nothing may signal it again (`signal_group` answers `false`).
    fn job_group_gone(&mut self) {}
    /// The run's end is settled (result recorded, refused, or written to
    /// the log): nothing is left for the guardian to do.
    fn settled(&mut self) {}
    /// Append undelivered output to the job's log.
    fn log_undelivered(&mut self, text: &str);
    /// Close the connection cleanly (a close frame) and wait, briefly and
    /// with a bound, for the link thread to finish before the process exits.
    fn close_link(&mut self);
}
