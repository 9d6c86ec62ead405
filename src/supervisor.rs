//! The supervisor: the one thread that owns all state and makes every
//! decision. Readers, the waiter, the link and the signal thread send it
//! `Event`s over one `mpsc` channel; it handles each in one `match`.
//!
//! It owns the outbox (what to send and when, ACKs, renumbering after a
//! reconnect), the job's lifecycle (timeout, kill escalation SIGTERM ->
//! SIGKILL, the result code) and every deadline, each an `Instant`; between
//! events it sleeps in `recv_timeout` until the nearest one. Nothing polls.
//!
//! The outside world is reached only through `Effects` (link commands,
//! signals to the job's group, the log), so tests drive it with fake events
//! and fake time, without threads.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::exit_codes::{self, KillReason};
use crate::frames::FramePool;
use crate::link::{LinkCommand, LinkEvent};
use crate::outbox::Outbox;
use crate::protocol::{AckKind, Encoder, Inbound, Stream};

pub enum Event {
    Output {
        stream: Stream,
        text: String,
    },
    StreamClosed(Stream),
    ChildExited {
        status: i32,
    },
    /// An orphan of the job, reaped by us as its subreaper.
    Reaped,
    Link(LinkEvent),
    Signal(i32),
}

/// PROTOCOL.md: a heartbeat every 5 s.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// SIGTERM, then this long, then SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// After a killed job's main process is gone, how often to look whether the
/// rest of its group is gone too (zombies still count as members until
/// reaped; on kernels without subreaper init reaps them and tells us nothing).
const GROUP_RECHECK: Duration = Duration::from_millis(50);
/// How often SIGKILL is repeated until the group is gone (only while killing).
const KILL_REPEAT: Duration = Duration::from_millis(100);
/// After the job's main process exits, how long a background process may keep
/// its stdout/stderr open before we complete without the rest.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for `sync_response` before assuming a per-socket server.
const SYNC_TIMEOUT: Duration = Duration::from_secs(5);
/// Output in flight with no ACK progress for this long: the peer is stuck.
const ACK_STALL: Duration = Duration::from_secs(30);
/// The server waits up to 30 s for the job state before answering `complete`.
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(40);
/// After the job ends, keep trying to deliver for this long after the later
/// of the end and the last contact with the server.
pub const DELIVERY_WINDOW: Duration = Duration::from_secs(60);
/// `complete` attempts that got no answer before we stop trying.
const MAX_COMPLETE_ATTEMPTS: u32 = 5;
/// Output messages in flight at once: enough to keep the pipe full, few
/// enough that a dropped connection leaves little in doubt (docs/delivery.md).
pub const WINDOW: usize = 8;
/// ... and at most this many bytes of output in flight (one message always
/// may be): each in-flight message briefly exists twice, as a batch and as a
/// frame, so this bounds the memory beyond SP_BUFFER_MAX_MB.
pub const WINDOW_BYTES: usize = 4 << 20;

/// Longest piece of a server-supplied string that reaches the log. A hostile
/// server may send 1 MiB strings on every frame; the log must not become the
/// way it fills the disk.
const LOGGED_TEXT_MAX: usize = 200;

/// `text` cut to `LOGGED_TEXT_MAX` bytes (on a character boundary), with the
/// full length noted when it was cut.
fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= LOGGED_TEXT_MAX {
        return text.into();
    }
    let mut end = LOGGED_TEXT_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len()).into()
}

/// What the supervisor does to the world.
pub trait Effects {
    fn link(&mut self, command: LinkCommand);
    /// Signal the job's process group; `false` when no process is left in it.
    fn signal_group(&mut self, signal: i32) -> bool;
    /// `--foreground`: show the job's output on our own stdout/stderr.
    fn tee(&mut self, stream: Stream, text: &str);
    fn reopen_log(&mut self);
    /// Append undelivered output to the job's log.
    fn log_undelivered(&mut self, text: &str);
}

pub struct Settings {
    pub job_instance: String,
    pub machine: String,
    pub version: String,
    pub job_pid: i32,
    pub output_interval: Duration,
    pub timeout: Option<Duration>,
    pub tee: bool,
}

/// How the run ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub retcode: i32,
    /// The server ACKed `complete` with all output delivered.
    pub delivered: bool,
}

struct Conn {
    generation: u64,
    /// The server answered our `connect`. It answers in order, so only a
    /// `sync_response` after this can be the answer to our `sync_request`.
    connect_acked: bool,
    synced: bool,
    opened: Instant,
    /// Last time in-flight output got an ACK (or started being in flight).
    ack_progress: Instant,
    complete_sent: Option<Instant>,
}

struct Kill {
    reason: KillReason,
    next_signal: Instant,
    group_gone: bool,
    /// Set while the job's main process is gone but its group is not.
    recheck: Option<Instant>,
}

pub struct Supervisor<E: Effects> {
    effects: E,
    settings: Settings,
    encoder: Encoder,
    outbox: Outbox,
    /// Recycled buffers for output frames (shared with the link thread).
    frames: FramePool,
    conn: Option<Conn>,
    start_acked: bool,
    /// The server read our `start` (its `sync_response` came after it) and did
    /// not ACK it: it does not know this instance.
    start_ignored: bool,
    last_contact: Instant,
    connect_failures: u32,
    complete_attempts: u32,
    job_exit: Option<(i32, Instant)>,
    streams_open: [bool; 2],
    kill: Option<Kill>,
    timeout_at: Option<Instant>,
    finished: Option<(i32, Instant)>,
    next_heartbeat: Instant,
    /// When a batch was last sealed; `None` until the first, which goes out at once.
    last_seal: Option<Instant>,
    outcome: Option<Outcome>,
    spill_noted: bool,
}

impl<E: Effects> Supervisor<E> {
    pub fn new(
        effects: E,
        settings: Settings,
        encoder: Encoder,
        outbox: Outbox,
        frames: FramePool,
        started: Instant,
    ) -> Self {
        let timeout_at = settings.timeout.map(|t| started + t);
        Supervisor {
            effects,
            settings,
            encoder,
            outbox,
            frames,
            conn: None,
            start_acked: false,
            start_ignored: false,
            last_contact: started,
            connect_failures: 0,
            complete_attempts: 0,
            job_exit: None,
            streams_open: [true, true],
            kill: None,
            timeout_at,
            finished: None,
            next_heartbeat: started + HEARTBEAT_INTERVAL,
            last_seal: None,
            outcome: None,
            spill_noted: false,
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
            if let Some(outcome) = self.take_outcome() {
                self.effects.link(LinkCommand::Shutdown);
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
                    self.give_up("event channel closed");
                }
            }
        }
    }

    /// Handle one event at time `now`.
    pub fn handle(&mut self, event: Event, now: Instant) {
        match event {
            Event::Output { stream, text } => {
                if self.settings.tee {
                    self.effects.tee(stream, &text);
                }
                self.outbox.push(stream, &text);
                if !self.spill_noted {
                    if let Some(path) = self.outbox.spool_path() {
                        self.spill_noted = true;
                        log::warn!(
                            "unacknowledged output passed the memory bound; spilling to {}",
                            path.display()
                        );
                    }
                }
                if self.batch_due().is_none_or(|due| now >= due) {
                    // Leading edge: sparse output goes out at once.
                    self.seal(now);
                }
            }
            Event::StreamClosed(stream) => {
                self.streams_open[stream.index()] = false;
                self.maybe_finish(now);
            }
            Event::Reaped => self.maybe_finish(now),
            Event::ChildExited { status } => {
                log::debug!(
                    "job process {} exited, wait status {status:#x}",
                    self.settings.job_pid
                );
                self.job_exit = Some((status, now));
                self.maybe_finish(now);
            }
            Event::Signal(signal) if signal == libc::SIGHUP => {
                self.effects.reopen_log();
                log::info!("SIGHUP: log file reopened");
            }
            Event::Signal(signal) => {
                log::warn!("wrapper received signal {signal}: killing the job");
                self.begin_kill(KillReason::Request, now);
            }
            Event::Link(link_event) => self.handle_link(link_event, now),
        }
    }

    fn handle_link(&mut self, event: LinkEvent, now: Instant) {
        match event {
            LinkEvent::Connected { generation } => {
                if self.connect_failures > 0 {
                    log::info!(
                        "connected to the server after {} failed attempts",
                        self.connect_failures
                    );
                } else {
                    log::info!("connected to the server");
                }
                self.connect_failures = 0;
                self.last_contact = now;
                self.outbox.on_disconnect();
                self.conn = Some(Conn {
                    generation,
                    connect_acked: false,
                    synced: false,
                    opened: now,
                    ack_progress: now,
                    complete_sent: None,
                });
                let wall = crate::clock::now();
                self.send(self.encoder.connect(wall));
                if !self.start_acked {
                    self.send(self.encoder.start(
                        wall,
                        self.settings.job_pid,
                        &self.settings.version,
                    ));
                }
                let (last_acked, next) = (
                    self.outbox.last_acked_wire_seq(),
                    self.outbox.next_wire_seq(),
                );
                self.send(self.encoder.sync_request(wall, last_acked, next));
            }
            LinkEvent::Disconnected { generation, reason } => {
                if self
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.generation == generation)
                {
                    log::warn!("connection lost: {reason}");
                    self.conn = None;
                    self.outbox.on_disconnect();
                }
            }
            LinkEvent::ConnectFailed { reason } => {
                self.connect_failures += 1;
                if self.connect_failures == 1 {
                    log::warn!("cannot reach the server (retrying every 2 s): {reason}");
                } else {
                    log::debug!(
                        "connection attempt {} failed: {reason}",
                        self.connect_failures
                    );
                }
            }
            LinkEvent::BadFrame { generation, reason } => {
                if self.is_current(generation) {
                    log::debug!("ignored a frame from the server: {}", clip(&reason));
                }
            }
            LinkEvent::Frame { generation, frame } => {
                if self.is_current(generation) {
                    self.last_contact = now;
                    self.handle_frame(frame, now);
                }
            }
        }
    }

    fn is_current(&self, generation: u64) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|c| c.generation == generation)
    }

    fn handle_frame(&mut self, frame: Inbound, now: Instant) {
        if log::log_enabled!(log::Level::Debug) {
            log::debug!("received {}", clip(&format!("{frame:?}")));
        }
        match frame {
            Inbound::Ack {
                kind: AckKind::Connect,
                ..
            } => {
                if let Some(conn) = self.conn.as_mut() {
                    conn.connect_acked = true;
                }
            }
            Inbound::Ack {
                kind: AckKind::Start,
                ..
            } => {
                if !self.start_acked {
                    log::info!("server acknowledged the start");
                }
                self.start_acked = true;
                self.start_ignored = false;
            }
            Inbound::Ack {
                kind: AckKind::Output,
                seq: Some(seq),
            } => {
                if self.outbox.on_ack(seq) > 0 {
                    if let Some(conn) = self.conn.as_mut() {
                        conn.ack_progress = now;
                    }
                }
            }
            Inbound::Ack {
                kind: AckKind::Complete,
                ..
            } => {
                // Only an answer to a `complete` we sent counts.
                if self
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.complete_sent.is_some())
                {
                    let retcode = self
                        .finished
                        .map_or(exit_codes::WRAPPER_ERROR, |(code, _)| code);
                    let delivered = self.outbox.is_empty();
                    log::info!("server recorded the result (retcode {retcode})");
                    if !delivered {
                        self.write_undelivered("the server never accepted this instance's start");
                    }
                    self.outcome = Some(Outcome { retcode, delivered });
                }
            }
            Inbound::Ack { .. } => {}
            Inbound::Nack { expected_seq } => {
                let outcome = self.outbox.on_nack(expected_seq);
                log::debug!("nack, server expects seq {expected_seq}: {outcome:?}");
            }
            Inbound::SyncResponse { last_seq } => {
                if self.conn.as_ref().is_some_and(|c| c.connect_acked) {
                    self.on_synced(Some(last_seq));
                } else {
                    log::debug!("ignored a sync_response that came before the connect ack");
                }
            }
            Inbound::Kill {
                job_instance,
                machine,
            } => {
                let ours = job_instance.as_deref() == Some(self.settings.job_instance.as_str())
                    && machine
                        .as_deref()
                        .is_none_or(|m| m == self.settings.machine);
                if ours {
                    if self.kill.is_none() && self.finished.is_none() {
                        log::info!("kill requested by the server");
                        self.send(self.encoder.killed(crate::clock::now()));
                    }
                    self.begin_kill(KillReason::Request, now);
                } else {
                    log::warn!(
                        "ignored a kill for another instance ({} on {})",
                        clip(&format!("{job_instance:?}")),
                        clip(&format!("{machine:?}"))
                    );
                }
            }
            Inbound::Error { code, message } => {
                let complete_pending = self
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.complete_sent.is_some());
                if code == "JOB_NOT_FOUND" && complete_pending {
                    log::warn!(
                        "server no longer knows this job ({}); output kept in this log",
                        clip(&message)
                    );
                    let retcode = self
                        .finished
                        .map_or(exit_codes::WRAPPER_ERROR, |(code, _)| code);
                    self.write_undelivered(
                        "the server answered JOB_NOT_FOUND (job stopped or restarted)",
                    );
                    self.outcome = Some(Outcome {
                        retcode,
                        delivered: false,
                    });
                } else {
                    log::warn!("server error {}: {}", clip(&code), clip(&message));
                }
            }
            Inbound::Other(kind) => log::debug!("ignored a {kind:?} frame"),
        }
    }

    fn on_synced(&mut self, last_seq: Option<i64>) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if conn.synced {
            return; // unsolicited: the numbering was settled already
        }
        conn.synced = true;
        // Our start came before our sync_request, and the server answers in
        // order: if start is not ACKed now, it never will be on this socket.
        // (Only a real sync_response proves that; a timeout proves nothing.)
        if !self.start_acked && last_seq.is_some() {
            self.start_ignored = true;
            log::warn!("server did not acknowledge the start (unknown instance or machine?)");
        }
        self.outbox.on_sync(last_seq.unwrap_or(-1));
        log::debug!(
            "synced: last_seq {last_seq:?}, next wire seq {}",
            self.outbox.next_wire_seq()
        );
    }

    /// When the open batch may be sealed: one interval after the last seal.
    fn batch_due(&self) -> Option<Instant> {
        self.last_seal.map(|at| at + self.settings.output_interval)
    }

    fn seal(&mut self, now: Instant) {
        self.outbox.seal();
        self.last_seal = Some(now);
    }

    fn begin_kill(&mut self, reason: KillReason, now: Instant) {
        if self.kill.is_some() || self.finished.is_some() {
            return; // repeated kills count once; a finished job has nothing to kill
        }
        let marker = match reason {
            KillReason::Timeout => {
                let secs = crate::config::format_seconds(self.settings.timeout.unwrap_or_default());
                log::warn!("job exceeded its timeout of {secs} s: SIGTERM to its process group");
                format!("\n[Job exceeded timeout of {secs} seconds]\n")
            }
            KillReason::Request => {
                log::info!("SIGTERM to the job's process group");
                "\n[Job terminated by user request]\n".to_string()
            }
        };
        let alive = self.effects.signal_group(libc::SIGTERM);
        self.kill = Some(Kill {
            reason,
            next_signal: now + KILL_GRACE,
            group_gone: !alive,
            recheck: None,
        });
        self.outbox.push(Stream::Stderr, &marker);
        self.seal(now);
    }

    fn maybe_finish(&mut self, now: Instant) {
        if self.finished.is_some() {
            return;
        }
        let Some((status, exited_at)) = self.job_exit else {
            return;
        };
        let drained = self.streams_open == [false, false] || now >= exited_at + DRAIN_GRACE;
        if !drained {
            return;
        }
        if self.streams_open != [false, false] {
            log::warn!(
                "job output still open {} s after its main process exited; completing without the rest",
                DRAIN_GRACE.as_secs()
            );
        }
        if let Some(kill) = self.kill.as_mut() {
            if !kill.group_gone {
                if self.effects.signal_group(0) {
                    // Processes (or unreaped zombies) remain: look again soon;
                    // the kill timer finishes any that ignore SIGTERM.
                    kill.recheck = Some(now + GROUP_RECHECK);
                    return;
                }
                kill.group_gone = true;
            }
        }
        let retcode = exit_codes::job_retcode(status, self.kill.as_ref().map(|k| k.reason));
        log::info!("job finished with retcode {retcode}");
        self.finished = Some((retcode, now));
        self.seal(now);
    }

    /// Fire every deadline that is due.
    pub fn on_time(&mut self, now: Instant) {
        if self.timeout_at.is_some_and(|t| now >= t) {
            self.timeout_at = None;
            self.begin_kill(KillReason::Timeout, now);
        }
        if let Some(kill) = self.kill.as_mut() {
            if !kill.group_gone && now >= kill.next_signal {
                let alive = self.effects.signal_group(libc::SIGKILL);
                kill.group_gone = !alive;
                kill.next_signal = now + KILL_REPEAT;
                if alive {
                    log::debug!("SIGKILL to the job's process group");
                }
                self.maybe_finish(now);
            }
        }
        if self
            .kill
            .as_ref()
            .and_then(|k| k.recheck)
            .is_some_and(|at| now >= at)
        {
            if let Some(kill) = self.kill.as_mut() {
                kill.recheck = None;
            }
            self.maybe_finish(now);
        }
        if self.job_exit.is_some_and(|(_, at)| now >= at + DRAIN_GRACE) {
            self.maybe_finish(now);
        }
        if self.outbox.open_bytes() > 0 && self.batch_due().is_none_or(|due| now >= due) {
            self.seal(now);
        }
        if now >= self.next_heartbeat {
            // Also while killing and while delivering after the end, so the
            // server does not declare the machine lost (253).
            if self.conn.is_some() {
                self.send(self.encoder.heartbeat(crate::clock::now()));
            }
            while self.next_heartbeat <= now {
                self.next_heartbeat += HEARTBEAT_INTERVAL;
            }
        }
        let mut drop_reason = None;
        if let Some(conn) = self.conn.as_ref() {
            if !conn.synced && now >= conn.opened + SYNC_TIMEOUT {
                log::warn!(
                    "no sync_response within {} s; assuming per-socket sequence numbers",
                    SYNC_TIMEOUT.as_secs()
                );
                self.on_synced(None);
            } else if self.outbox.in_flight() > 0 && now >= conn.ack_progress + ACK_STALL {
                drop_reason = Some(format!("no ACK for {} s", ACK_STALL.as_secs()));
            } else if conn
                .complete_sent
                .is_some_and(|at| now >= at + COMPLETE_TIMEOUT)
            {
                drop_reason = Some(format!(
                    "no answer to complete for {} s",
                    COMPLETE_TIMEOUT.as_secs()
                ));
            }
        }
        if let Some(reason) = drop_reason {
            if let Some(conn) = self.conn.take() {
                log::warn!("reconnecting: {reason}");
                self.outbox.on_disconnect();
                self.effects.link(LinkCommand::Drop {
                    generation: conn.generation,
                    reason,
                });
            }
        }
        if let Some((_, finished_at)) = self.finished {
            if self.outcome.is_none() {
                let exhausted = self.complete_attempts >= MAX_COMPLETE_ATTEMPTS
                    && self.conn.as_ref().is_none_or(|c| c.complete_sent.is_none());
                if exhausted || now >= finished_at.max(self.last_contact) + DELIVERY_WINDOW {
                    self.give_up("the server could not be reached or did not answer");
                }
            }
        }
    }

    fn give_up(&mut self, why: &str) {
        if self.outcome.is_some() {
            return;
        }
        let retcode = self
            .finished
            .map_or(exit_codes::WRAPPER_ERROR, |(code, _)| code);
        log::error!("giving up delivery: {why}");
        self.write_undelivered(why);
        self.outcome = Some(Outcome {
            retcode,
            delivered: false,
        });
    }

    fn write_undelivered(&mut self, why: &str) {
        let retcode = self
            .finished
            .map_or(exit_codes::WRAPPER_ERROR, |(code, _)| code);
        let delivered = self.outbox.acked_bytes;
        let mut body = String::new();
        self.outbox
            .take_undelivered(|batch| body.push_str(&batch.text));
        let header = format!(
            "==== sp_wrapper: UNDELIVERED OUTPUT of {} (retcode {retcode}): {why}; {} bytes below were not delivered ({delivered} bytes before them were) ====\n",
            self.settings.job_instance,
            body.len()
        );
        self.effects.log_undelivered(&header);
        self.effects.log_undelivered(&body);
        if !body.ends_with('\n') && !body.is_empty() {
            self.effects.log_undelivered("\n");
        }
        self.effects
            .log_undelivered("==== sp_wrapper: END OF UNDELIVERED OUTPUT ====\n");
    }

    /// Send what the connection state allows: output within the window once
    /// the start is ACKed and the numbering is settled, then `complete`.
    pub fn pump(&mut self, now: Instant) {
        let Some(conn) = self.conn.as_ref() else {
            return;
        };
        if !conn.synced || self.outcome.is_some() {
            return;
        }
        let generation = conn.generation;
        // Nothing may follow `complete` on a connection: the server finalises
        // the result when it reads it.
        if self.start_acked && conn.complete_sent.is_none() {
            if self.outbox.in_flight() == 0 {
                if let Some(conn) = self.conn.as_mut() {
                    conn.ack_progress = now;
                }
            }
            let wall = crate::clock::now();
            while let Some((seq, batch)) = self.outbox.next_to_send(WINDOW, WINDOW_BYTES) {
                let buffer = self.frames.take(batch.text.len() + 256);
                let frame = self
                    .encoder
                    .output(buffer, wall, batch.stream, seq, &batch.text);
                log::debug!("sending output seq {seq} ({} bytes)", batch.text.len());
                self.effects.link(LinkCommand::Send { generation, frame });
            }
            self.outbox.release_empty_spool();
        }
        let Some((retcode, _)) = self.finished else {
            return;
        };
        let ready = self.outbox.is_empty() || (self.start_ignored && !self.start_acked);
        let not_sent = self
            .conn
            .as_ref()
            .is_some_and(|c| c.complete_sent.is_none());
        if ready && not_sent {
            self.complete_attempts += 1;
            let frame =
                self.encoder
                    .complete(crate::clock::now(), retcode, self.outbox.next_wire_seq());
            log::debug!(
                "sending complete (retcode {retcode}, attempt {})",
                self.complete_attempts
            );
            self.effects.link(LinkCommand::Send { generation, frame });
            if let Some(conn) = self.conn.as_mut() {
                conn.complete_sent = Some(now);
            }
        }
    }

    fn send(&mut self, frame: String) {
        if let Some(conn) = self.conn.as_ref() {
            let generation = conn.generation;
            self.effects.link(LinkCommand::Send { generation, frame });
        }
    }

    /// The nearest deadline, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut deadlines: Vec<Instant> = Vec::with_capacity(8);
        deadlines.push(self.next_heartbeat);
        deadlines.extend(self.timeout_at);
        if let Some(kill) = self.kill.as_ref().filter(|k| !k.group_gone) {
            deadlines.push(kill.next_signal);
        }
        deadlines.extend(self.kill.as_ref().and_then(|k| k.recheck));
        if self.finished.is_none() {
            deadlines.extend(self.job_exit.map(|(_, at)| at + DRAIN_GRACE));
        }
        if self.outbox.open_bytes() > 0 {
            deadlines.extend(self.batch_due());
        }
        if let Some(conn) = self.conn.as_ref() {
            if !conn.synced {
                deadlines.push(conn.opened + SYNC_TIMEOUT);
            }
            if self.outbox.in_flight() > 0 {
                deadlines.push(conn.ack_progress + ACK_STALL);
            }
            deadlines.extend(conn.complete_sent.map(|at| at + COMPLETE_TIMEOUT));
        }
        if let Some((_, finished_at)) = self.finished {
            deadlines.push(finished_at.max(self.last_contact) + DELIVERY_WINDOW);
        }
        deadlines.into_iter().min()
    }

    /// The outcome, once there is one.
    pub fn take_outcome(&mut self) -> Option<Outcome> {
        self.outcome.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Records what the supervisor does; the job's group "exists" until told.
    #[derive(Default)]
    struct Fake {
        sent: Vec<(u64, Value)>,
        drops: Vec<u64>,
        signals: Vec<i32>,
        group_alive: bool,
        undelivered: String,
    }

    impl Effects for Fake {
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
    }

    const INSTANCE: &str = "job_1";

    fn supervisor(t0: Instant, timeout: Option<Duration>) -> Supervisor<Fake> {
        let settings = Settings {
            job_instance: INSTANCE.into(),
            machine: "m1".into(),
            version: "test".into(),
            job_pid: 4242,
            output_interval: Duration::from_millis(1000),
            timeout,
            tee: false,
        };
        let fake = Fake {
            group_alive: true,
            ..Fake::default()
        };
        Supervisor::new(
            fake,
            settings,
            Encoder::new("job", INSTANCE, "m1"),
            Outbox::new(1 << 20, vec![]),
            FramePool::default(),
            t0,
        )
    }

    fn frame(sup: &mut Supervisor<Fake>, generation: u64, frame: Inbound, now: Instant) {
        sup.handle(Event::Link(LinkEvent::Frame { generation, frame }), now);
        sup.pump(now);
    }

    fn ack(kind: AckKind, seq: Option<i64>) -> Inbound {
        Inbound::Ack { kind, seq }
    }

    fn types(sup: &Supervisor<Fake>) -> Vec<String> {
        sup.effects()
            .sent
            .iter()
            .map(|(_, v)| v["type"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    fn outputs(sup: &Supervisor<Fake>) -> Vec<(i64, String)> {
        let sent = &sup.effects().sent;
        sent.iter()
            .filter(|(_, v)| v["type"] == "output")
            .map(|(_, v)| {
                (
                    v["seq"].as_i64().unwrap_or(-9),
                    v["data"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// A new connection, answered as the real server does: `ack connect` first.
    fn connect(sup: &mut Supervisor<Fake>, generation: u64, now: Instant) {
        sup.handle(Event::Link(LinkEvent::Connected { generation }), now);
        sup.pump(now);
        frame(sup, generation, ack(AckKind::Connect, None), now);
    }

    #[test]
    fn a_sync_response_before_the_connect_ack_is_not_ours() {
        let t0 = Instant::now();
        let mut sup = supervisor(t0, None);
        sup.handle(
            Event::Output {
                stream: Stream::Stdout,
                text: "kept\n".into(),
            },
            t0,
        );
        job_ends(&mut sup, 0, t0);
        sup.handle(Event::Link(LinkEvent::Connected { generation: 1 }), t0);
        // A hostile or confused server answers before reading our frames.
        frame(&mut sup, 1, Inbound::SyncResponse { last_seq: -1 }, t0);
        assert!(
            !types(&sup).contains(&"complete".to_string()),
            "the start is not yet known to be ignored"
        );
        frame(&mut sup, 1, ack(AckKind::Connect, None), t0);
        frame(&mut sup, 1, ack(AckKind::Start, None), t0);
        frame(&mut sup, 1, Inbound::SyncResponse { last_seq: -1 }, t0);
        assert_eq!(outputs(&sup), [(0, "kept\n".to_string())]);
    }

    fn job_ends(sup: &mut Supervisor<Fake>, status: i32, now: Instant) {
        sup.handle(Event::StreamClosed(Stream::Stdout), now);
        sup.handle(Event::StreamClosed(Stream::Stderr), now);
        sup.handle(Event::ChildExited { status }, now);
        sup.pump(now);
    }

    #[test]
    fn happy_path_output_waits_for_start_ack_then_complete_after_all_acks() {
        let t0 = Instant::now();
        let mut sup = supervisor(t0, None);
        sup.handle(
            Event::Output {
                stream: Stream::Stdout,
                text: "hello\n".into(),
            },
            t0,
        );
        connect(&mut sup, 1, t0);
        assert_eq!(types(&sup), ["connect", "start", "sync_request"]);
        frame(&mut sup, 1, ack(AckKind::Connect, None), t0);
        frame(&mut sup, 1, ack(AckKind::Start, None), t0);
        assert!(
            outputs(&sup).is_empty(),
            "no output before the numbering is settled"
        );
        frame(&mut sup, 1, Inbound::SyncResponse { last_seq: -1 }, t0);
        assert_eq!(outputs(&sup), [(0, "hello\n".to_string())]);
        job_ends(&mut sup, 3 << 8, t0);
        assert!(
            !types(&sup).contains(&"complete".to_string()),
            "complete only after every ACK"
        );
        frame(&mut sup, 1, ack(AckKind::Output, Some(0)), t0);
        let complete = &sup.effects().sent.last().expect("sent").1;
        assert_eq!(
            (
                complete["type"].as_str(),
                complete["retcode"].as_i64(),
                complete["seq"].as_i64()
            ),
            (Some("complete"), Some(3), Some(1))
        );
        frame(&mut sup, 1, ack(AckKind::Complete, Some(1)), t0);
        assert_eq!(
            sup.take_outcome(),
            Some(Outcome {
                retcode: 3,
                delivered: true
            })
        );
    }

    #[test]
    fn reconnect_renumbers_and_resends_only_unacked_output() {
        let t0 = Instant::now();
        let mut sup = supervisor(t0, None);
        connect(&mut sup, 1, t0);
        frame(&mut sup, 1, ack(AckKind::Start, None), t0);
        frame(&mut sup, 1, Inbound::SyncResponse { last_seq: -1 }, t0);
        sup.handle(
            Event::Output {
                stream: Stream::Stdout,
                text: "a".into(),
            },
            t0,
        );
        sup.on_time(t0 + Duration::from_secs(1));
        sup.pump(t0 + Duration::from_secs(1));
        sup.handle(
            Event::Output {
                stream: Stream::Stdout,
                text: "b".into(),
            },
            t0 + Duration::from_secs(2),
        );
        sup.pump(t0 + Duration::from_secs(2));
        assert_eq!(outputs(&sup), [(0, "a".to_string()), (1, "b".to_string())]);
        frame(&mut sup, 1, ack(AckKind::Output, Some(0)), t0);
        sup.handle(
            Event::Link(LinkEvent::Disconnected {
                generation: 1,
                reason: "cut".into(),
            }),
            t0,
        );
        connect(&mut sup, 2, t0);
        // start was ACKed once: it is not sent again (it would reset the output).
        assert_eq!(
            types(&sup)[types(&sup).len() - 2..],
            ["connect", "sync_request"]
        );
        frame(&mut sup, 2, Inbound::SyncResponse { last_seq: -1 }, t0);
        let resent: Vec<_> = sup
            .effects()
            .sent
            .iter()
            .filter(|(g, v)| *g == 2 && v["type"] == "output")
            .collect();
        assert_eq!(resent.len(), 1);
        assert_eq!(
            (resent[0].1["seq"].as_i64(), resent[0].1["data"].as_str()),
            (Some(0), Some("b"))
        );
    }

    #[test]
    fn repeated_kills_count_once_and_escalate_to_sigkill() {
        let t0 = Instant::now();
        let mut sup = supervisor(t0, None);
        connect(&mut sup, 1, t0);
        frame(&mut sup, 1, ack(AckKind::Start, None), t0);
        frame(&mut sup, 1, Inbound::SyncResponse { last_seq: -1 }, t0);
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
        assert_eq!(sup.finished.map(|(code, _)| code), Some(124));
    }

    #[test]
    fn job_not_found_keeps_the_output_in_the_log() {
        let t0 = Instant::now();
        let mut sup = supervisor(t0, None);
        sup.handle(
            Event::Output {
                stream: Stream::Stdout,
                text: "precious output\n".into(),
            },
            t0,
        );
        job_ends(&mut sup, 0, t0);
        connect(&mut sup, 1, t0);
        // The server ignores start for an instance it does not run.
        frame(&mut sup, 1, Inbound::SyncResponse { last_seq: -1 }, t0);
        assert_eq!(types(&sup).last().map(String::as_str), Some("complete"));
        let not_found = Inbound::Error {
            code: "JOB_NOT_FOUND".into(),
            message: "gone".into(),
        };
        frame(&mut sup, 1, not_found, t0);
        assert_eq!(
            sup.take_outcome(),
            Some(Outcome {
                retcode: 0,
                delivered: false
            })
        );
        assert!(
            sup.effects().undelivered.contains("precious output"),
            "{}",
            sup.effects().undelivered
        );
    }

    #[test]
    fn unreachable_server_gives_up_sixty_seconds_after_the_end() {
        let t0 = Instant::now();
        let mut sup = supervisor(t0, None);
        sup.handle(
            Event::Output {
                stream: Stream::Stderr,
                text: "x".into(),
            },
            t0,
        );
        job_ends(&mut sup, 0, t0);
        sup.on_time(t0 + DELIVERY_WINDOW - Duration::from_millis(1));
        assert_eq!(sup.take_outcome(), None);
        sup.on_time(t0 + DELIVERY_WINDOW);
        assert_eq!(
            sup.take_outcome(),
            Some(Outcome {
                retcode: 0,
                delivered: false
            })
        );
        assert!(sup.effects().undelivered.contains("UNDELIVERED"));
    }

    #[test]
    fn heartbeats_every_five_seconds_while_connected() {
        let t0 = Instant::now();
        let mut sup = supervisor(t0, None);
        connect(&mut sup, 1, t0);
        for i in 1..=3 {
            let at = t0 + HEARTBEAT_INTERVAL * i;
            assert_eq!(sup.next_deadline().map(|d| d <= at), Some(true));
            sup.on_time(at);
        }
        assert_eq!(types(&sup).iter().filter(|t| *t == "heartbeat").count(), 3);
    }

    #[test]
    fn server_strings_are_clipped_for_the_log() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(300);
        let clipped = clip(&long);
        assert!(clipped.len() < LOGGED_TEXT_MAX + 20, "{}", clipped.len());
        assert!(clipped.ends_with("... (600 bytes)"), "{clipped}");
    }
}
