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

/// A fake world for the supervisor's and the session's unit tests: it
/// records every frame sent, every drop, signal, undelivered text and what
/// the guardian was told.
#[cfg(test)]
pub mod fake {
    use serde_json::Value;

    use super::Effects;
    use crate::messages::{LinkCommand, Stream};

    /// Records what the supervisor or the session does; the job's group
    /// "exists" until told.
    #[derive(Default)]
    pub struct FakeEffects {
        pub sent: Vec<(u64, Value)>,
        pub drops: Vec<u64>,
        pub signals: Vec<i32>,
        pub group_alive: bool,
        pub undelivered: String,
        /// What the guardian was told, in order.
        pub told: Vec<String>,
    }

    impl Effects for FakeEffects {
        fn link(&mut self, command: LinkCommand) {
            match command {
                LinkCommand::Send { generation, frame } => self.sent.push((
                    generation,
                    serde_json::from_str(&frame).expect("frames are JSON"),
                )),
                LinkCommand::Drop { generation, .. } => self.drops.push(generation),
                LinkCommand::Shutdown => {}
            }
        }
        fn signal_group(&mut self, signal: i32) -> bool {
            if signal != 0 {
                self.signals.push(signal);
            }
            if signal == libc::SIGKILL {
                self.group_alive = false;
            }
            self.group_alive
        }
        fn tee(&mut self, _: Stream, _: &str) {}
        fn reopen_log(&mut self) {}
        fn log_undelivered(&mut self, text: &str) {
            self.undelivered.push_str(text);
        }
        fn close_link(&mut self) {}
        fn machine_identified(&mut self, machine: &str) {
            self.told.push(format!("M {machine}"));
        }
        fn start_acked(&mut self) {
            self.told.push("A".into());
        }
        fn complete_sent(&mut self) {
            self.told.push("C".into());
        }
        fn job_group_gone(&mut self) {
            self.told.push("G".into());
        }
        fn settled(&mut self) {
            self.told.push("D".into());
        }
    }

    impl FakeEffects {
        /// A world whose job group is alive until SIGKILL or a test says.
        pub fn new() -> Self {
            FakeEffects {
                group_alive: true,
                ..FakeEffects::default()
            }
        }

        /// The `type` of every frame sent, in order.
        pub fn types(&self) -> Vec<String> {
            self.sent
                .iter()
                .map(|(_, v)| v["type"].as_str().unwrap_or("?").to_string())
                .collect()
        }

        /// Every `output` frame sent: (seq, data).
        pub fn outputs(&self) -> Vec<(i64, String)> {
            self.sent
                .iter()
                .filter(|(_, v)| v["type"] == "output")
                .map(|(_, v)| {
                    (
                        v["seq"].as_i64().unwrap_or(-9),
                        v["data"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        }

        /// The `timestamp` of every frame of this type sent.
        pub fn sent_timestamps(&self, kind: &str) -> Vec<String> {
            self.sent
                .iter()
                .filter(|(_, v)| v["type"] == kind)
                .map(|(_, v)| v["timestamp"].as_str().unwrap_or("?").to_string())
                .collect()
        }
    }
}
