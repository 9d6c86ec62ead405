//! The supervisor: the one thread that owns all state and makes every
//! decision, as a thin loop. Readers, the waiter, the link and the signal
//! thread send it `Event`s over one bounded `mpsc` channel; it handles each
//! in one `match` and routes it to the part that decides:
//!
//! - `session.rs`: what goes on the wire and when (outbox, ACKs, reconnect
//!   renumbering, heartbeats, `complete`, giving up);
//! - `job.rs`: the job's lifecycle (exit, drained pipes, timeout, kill
//!   escalation SIGTERM -> SIGKILL, the result code).
//!
//! Between events it sleeps in `recv_timeout` until the nearer of the two
//! parts' next deadlines. Nothing polls. The outside world is reached only
//! through `Effects`, so tests drive it with fake events and fake time.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use crate::exit_codes::KillReason;
use crate::messages::Event;
use crate::run::effects::Effects;
use crate::run::job::{JobChange, JobLifecycle};
use crate::run::readers;
use crate::run::session::{Outcome, Request, Session};

pub struct Supervisor<E: Effects> {
    effects: E,
    session: Session,
    job: JobLifecycle,
    /// `--foreground`: the job's output is also shown on our stdout/stderr.
    tee: bool,
    /// The job is finished and no process of its group is left (told to
    /// the effects once; from then on the group id is not ours).
    group_gone: bool,
}

impl<E: Effects> Supervisor<E> {
    pub fn new(effects: E, session: Session, job: JobLifecycle, tee: bool) -> Self {
        Supervisor {
            effects,
            session,
            job,
            tee,
            group_gone: false,
        }
    }

    #[cfg(test)]
    pub fn effects(&self) -> &E {
        &self.effects
    }

    /// Run until the job's result is delivered or delivery is abandoned.
    pub fn run(mut self, events: Receiver<Event>) -> Outcome {
        loop {
            let now = Instant::now();
            self.on_time(now);
            self.pump(now);
            self.session.log_new_loss();
            if let Some(outcome) = self.take_outcome() {
                self.effects.close_link();
                return outcome;
            }
            let event = match self.next_deadline() {
                Some(deadline) => events.recv_timeout(deadline.saturating_duration_since(now)),
                None => events.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match event {
                Ok(event) => {
                    self.handle(event, Instant::now());
                    // Take what else is queued before sending: fewer, larger batches.
                    for event in events.try_iter().take(256) {
                        self.handle(event, Instant::now());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // Every sender is gone, which the link thread never allows
                    // while it runs: nothing more can happen.
                    log::error!("internal: event channel closed");
                    self.session
                        .give_up("event channel closed", &mut self.effects);
                }
            }
        }
    }

    /// Handle one event at time `now`.
    pub fn handle(&mut self, event: Event, now: Instant) {
        let effects = &mut self.effects;
        let mut group = |signal| effects.signal_group(signal);
        let change = match event {
            Event::Output { stream, text } => {
                if self.tee {
                    self.effects.tee(stream, &text);
                }
                self.session.on_output(stream, &text, now);
                // Taken (written ahead, copied): its buffer serves a later read.
                readers::recycle(text);
                JobChange::default()
            }
            Event::StreamClosed(stream) => self.job.on_stream_closed(stream, now, &mut group),
            Event::Reaped => {
                let change = self.job.on_reaped(now, &mut group);
                // An orphan of a finished job was the group's last process.
                if change.finished.is_none() && self.job.finished().is_some() {
                    self.note_group_gone();
                }
                change
            }
            Event::ChildExited { status, at } => {
                log::debug!("job's main process exited, wait status {status:#x}");
                self.job.on_exit(status, at, now, &mut group)
            }
            Event::Signal(signal) if signal == libc::SIGHUP => {
                self.effects.reopen_log();
                log::info!("SIGHUP: log file reopened");
                JobChange::default()
            }
            Event::Signal(signal) => {
                log::warn!("wrapper received signal {signal}: killing the job");
                self.job.kill(KillReason::Request, now, &mut group)
            }
            Event::Link(link_event) => {
                let request = self.session.on_link(link_event, now, &mut self.effects);
                match request {
                    Some(Request::Kill) => {
                        if !self.job.beyond_kill() {
                            self.session.announce_kill(&mut self.effects);
                        }
                        let effects = &mut self.effects;
                        self.job
                            .kill(KillReason::Request, now, &mut |s| effects.signal_group(s))
                    }
                    None => JobChange::default(),
                }
            }
        };
        self.apply(change, now);
    }

    /// Kill the job (repeated kills count once).
    #[cfg(test)]
    fn kill(&mut self, reason: KillReason, now: Instant) {
        let effects = &mut self.effects;
        let change = self
            .job
            .kill(reason, now, &mut |signal| effects.signal_group(signal));
        self.apply(change, now);
    }

    /// Pass what changed in the job on to the session.
    fn apply(&mut self, change: JobChange, now: Instant) {
        if let Some((stream, marker)) = change.kill_marker {
            self.session.on_kill_marker(stream, &marker, now);
        }
        if let Some(finished) = change.finished {
            // (The guardian knows the result already: the waiter told it the
            // leader's exit, and a kill told it the reason, each before.)
            self.note_group_gone();
            log::info!("job finished with retcode {}", finished.retcode);
            self.session.on_job_finished(finished, now);
        }
    }

    /// Once the job is finished (its leader reaped), look whether its group
    /// is empty; if so, say so once, so that nothing signals that group id
    /// again (it may already belong to an unrelated process).
    fn note_group_gone(&mut self) {
        if !self.group_gone && !self.effects.signal_group(0) {
            self.group_gone = true;
            self.effects.job_group_gone();
        }
    }

    /// Fire every deadline that is due, the job's first (a timeout's marker
    /// joins the output before the session seals it).
    pub fn on_time(&mut self, now: Instant) {
        let effects = &mut self.effects;
        let change = self
            .job
            .on_time(now, &mut |signal| effects.signal_group(signal));
        self.apply(change, now);
        self.session.on_time(now, &mut self.effects);
    }

    /// Send what the connection state allows.
    pub fn pump(&mut self, now: Instant) {
        self.session.pump(now, &mut self.effects);
    }

    /// The nearest deadline, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.job.next_deadline(), self.session.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The outcome, once there is one.
    pub fn take_outcome(&mut self) -> Option<Outcome> {
        self.session.take_outcome()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    use crate::messages::{AckKind, Inbound, LinkEvent, Stream};
    use crate::run::effects::fake::FakeEffects;
    use crate::run::session::testing::{
        Drive, INSTANCE, ack, connect, cut, delivered, frame, output, session, sync,
    };
    use crate::timings::Timings;

    const KILL_GRACE: Duration = Timings::DEFAULT.kill_grace;
    const DELIVERY_WINDOW: Duration = Timings::DEFAULT.delivery_window;

    impl Drive for Supervisor<FakeEffects> {
        fn handle(&mut self, event: Event, now: Instant) {
            Supervisor::handle(self, event, now);
        }

        fn pump(&mut self, now: Instant) {
            Supervisor::pump(self, now);
        }
    }

    // The session's own behaviour (the wire, ACKs, reconnects, giving up)
    // is tested in session.rs; here, the job's lifecycle and the session
    // together, as the supervisor joins them.

    fn supervisor(t0: Instant, timeout: Option<Duration>) -> Supervisor<FakeEffects> {
        supervisor_with_output(t0, timeout, false)
    }

    fn supervisor_with_output(
        t0: Instant,
        timeout: Option<Duration>,
        merged_output: bool,
    ) -> Supervisor<FakeEffects> {
        let job = JobLifecycle::new(timeout, merged_output, &Timings::DEFAULT, t0);
        Supervisor::new(FakeEffects::new(), session(t0), job, false)
    }

    fn types(sup: &Supervisor<FakeEffects>) -> Vec<String> {
        sup.effects().types()
    }

    fn outputs(sup: &Supervisor<FakeEffects>) -> Vec<(i64, String)> {
        sup.effects().outputs()
    }

    /// A supervisor on connection 1, its start ACKed and numbering settled.
    fn synced(t0: Instant) -> Supervisor<FakeEffects> {
        let mut sup = supervisor(t0, None);
        sync(&mut sup, t0);
        sup
    }

    fn job_ends(sup: &mut Supervisor<FakeEffects>, status: i32, now: Instant) {
        job_ends_at(sup, status, now, crate::os::clock::now());
    }

    /// The job's main process exited at wall-clock time `at`.
    fn job_ends_at(sup: &mut Supervisor<FakeEffects>, status: i32, now: Instant, at: SystemTime) {
        sup.handle(Event::StreamClosed(Stream::Stdout), now);
        sup.handle(Event::StreamClosed(Stream::Stderr), now);
        sup.handle(Event::ChildExited { status, at }, now);
        sup.pump(now);
    }

    #[test]
    fn merged_output_waits_for_one_stream_and_marks_kills_in_it() {
        let t0 = Instant::now();
        let mut sup = supervisor_with_output(t0, None, true);
        sup.kill(KillReason::Request, t0);
        sup.effects.group_alive = false;
        sup.handle(Event::StreamClosed(Stream::Stdout), t0);
        sup.handle(
            Event::ChildExited {
                status: libc::SIGTERM,
                at: crate::os::clock::now(),
            },
            t0,
        );
        assert_eq!(sup.job.finished().map(|f| f.retcode), Some(143));
        let mut streams = Vec::new();
        sup.session
            .outbox_mut()
            .take_undelivered(|batch| streams.push(batch.stream));
        assert_eq!(streams, [Stream::Stdout]);
    }

    #[test]
    fn the_guardian_is_told_each_fact_once_and_before_it_is_acted_on() {
        let t0 = Instant::now();
        let mut sup = supervisor(t0, None);
        sup.handle(
            Event::Link(LinkEvent::Identified {
                machine: "minion-7".into(),
            }),
            t0,
        );
        // The start is told once it is ACKed, not when sent: until then no
        // output has gone out, and a second start loses nothing.
        for generation in 1..=3 {
            connect(&mut sup, generation, t0);
            cut(&mut sup, generation, t0);
        }
        assert_eq!(sup.effects().told, ["M minion-7"]);
        connect(&mut sup, 4, t0);
        frame(&mut sup, 4, ack(AckKind::Start, None), t0);
        frame(&mut sup, 4, ack(AckKind::Start, None), t0);
        frame(&mut sup, 4, Inbound::SyncResponse { last_seq: -1 }, t0);
        assert_eq!(sup.effects().told, ["M minion-7", "A"]);
        // A background process keeps the group alive after the job's exit.
        job_ends(&mut sup, 3 << 8, t0);
        assert_eq!(sup.effects().told, ["M minion-7", "A", "C"]);
        assert_eq!(
            types(&sup).last().map(String::as_str),
            Some("complete"),
            "complete is told, then sent"
        );
        // Its last process is reaped: the group is gone, said once.
        sup.effects.group_alive = false;
        sup.handle(Event::Reaped, t0);
        sup.handle(Event::Reaped, t0);
        assert_eq!(sup.effects().told, ["M minion-7", "A", "C", "G"]);
        assert_eq!(sup.take_outcome(), None);
        // An unanswered complete is sent again on the next connection, but
        // told only once.
        cut(&mut sup, 4, t0);
        connect(&mut sup, 5, t0);
        frame(&mut sup, 5, Inbound::SyncResponse { last_seq: -1 }, t0);
        sup.pump(t0);
        assert_eq!(types(&sup).iter().filter(|t| *t == "complete").count(), 2);
        frame(&mut sup, 5, ack(AckKind::Complete, Some(0)), t0);
        assert_eq!(sup.effects().told, ["M minion-7", "A", "C", "G", "D"]);
        assert_eq!(sup.take_outcome(), Some(delivered(3)));
    }

    #[test]
    fn giving_up_writes_the_log_before_the_guardian_is_released() {
        let t0 = Instant::now();
        let mut sup = supervisor(t0, None);
        output(&mut sup, Stream::Stdout, "kept\n", t0);
        sup.effects.group_alive = false;
        job_ends(&mut sup, 0, t0);
        assert_eq!(sup.effects().told, ["G"]);
        sup.on_time(t0 + DELIVERY_WINDOW + Duration::from_secs(1));
        assert!(sup.effects().undelivered.contains("kept\n"));
        assert_eq!(sup.effects().told, ["G", "D"]);
    }

    #[test]
    fn repeated_kills_count_once_and_escalate_to_sigkill() {
        let t0 = Instant::now();
        let mut sup = synced(t0);
        let kill = || Inbound::Kill {
            job_instance: Some(INSTANCE.into()),
            machine: Some("m1".into()),
        };
        let other = Inbound::Kill {
            job_instance: Some("someone_else".into()),
            machine: Some("m1".into()),
        };
        frame(&mut sup, 1, other, t0);
        assert!(
            sup.effects().signals.is_empty(),
            "a kill for another instance is ignored"
        );
        for _ in 0..5 {
            frame(&mut sup, 1, kill(), t0);
        }
        assert_eq!(sup.effects().signals, [libc::SIGTERM]);
        assert_eq!(types(&sup).iter().filter(|t| *t == "killed").count(), 1);
        sup.on_time(t0 + KILL_GRACE);
        assert_eq!(sup.effects().signals, [libc::SIGTERM, libc::SIGKILL]);
        job_ends(&mut sup, libc::SIGKILL, t0 + KILL_GRACE);
        let out = outputs(&sup);
        assert!(
            out.iter()
                .any(|(_, d)| d.contains("[Job terminated by user request]")),
            "{out:?}"
        );
        frame(&mut sup, 1, ack(AckKind::Output, Some(0)), t0 + KILL_GRACE);
        let complete = &sup.effects().sent.last().expect("sent").1;
        assert_eq!(complete["retcode"], 143);
    }

    #[test]
    fn timeout_kills_with_124() {
        let t0 = Instant::now();
        let mut sup = supervisor(t0, Some(Duration::from_secs(2)));
        assert_eq!(sup.next_deadline(), Some(t0 + Duration::from_secs(2)));
        sup.on_time(t0 + Duration::from_secs(2));
        assert_eq!(sup.effects().signals, [libc::SIGTERM]);
        sup.effects.group_alive = false;
        job_ends(&mut sup, libc::SIGTERM, t0 + Duration::from_secs(2));
        assert_eq!(sup.job.finished().map(|f| f.retcode), Some(124));
    }
}
