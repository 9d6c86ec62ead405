//! What the supervisor does to the world, as a trait: frames to the link
//! thread, signals to the job's process group, the log, our own stdout. The
//! daemon's and the guardian's implementation is `LiveEffects` in `live.rs`;
//! the supervisor's tests use a fake that records everything, so the session
//! and the job's lifecycle are tested with fake events and fake time,
//! without threads.

use std::time::SystemTime;

use crate::messages::{LinkCommand, Stream};

pub trait Effects {
    fn link(&mut self, command: LinkCommand);
    /// Signal the job's process group; `false` when no process is left in it.
    fn signal_group(&mut self, signal: i32) -> bool;
    /// `--foreground`: show the job's output on our own stdout/stderr.
    fn tee(&mut self, stream: Stream, text: &str);
    fn reopen_log(&mut self);
    /// Our `start` went out on a connection (the guardian must not send
    /// another: the server may have recorded it).
    fn start_sent(&mut self) {}
    /// The job's result is fixed, its main process reaped at `exited_at`
    /// (the guardian says so if we die delivering it). Called before the
    /// result is logged or acted on.
    fn job_finished(&mut self, _retcode: i32, _exited_at: SystemTime) {}
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
