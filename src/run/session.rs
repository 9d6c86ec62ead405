//! The session with the server, as the supervisor thread runs it: what goes
//! on the wire and when. It owns the outbox (batching, numbering, ACKs, the
//! spool), the connection state (generation, connect ACK, sync, `start`
//! ACKed or ignored), heartbeats, `complete` and its retries, delivery
//! progress, and the give-up report that writes undelivered output to the
//! log.
//!
//! Plain state with no threads and no clock: the supervisor passes `now` and
//! the `Effects` to send through. Every deadline it owns is listed once, in
//! `deadlines`, from which both `next_deadline` and `on_time` are derived.

use std::time::{Duration, Instant, SystemTime};

use crate::messages::{AckKind, Inbound, LinkCommand, LinkEvent, Stream};
use crate::report::outbox::{MAX_BATCH_BYTES, Outbox};
use crate::report::output_cap::OutputCap;
use crate::report::pacing::Pacer;
use crate::run::effects::Effects;
use crate::run::job::Finished;
use crate::timings::Timings;
use crate::wire::frames::FramePool;
use crate::wire::protocol::Encoder;

/// `complete` attempts that got no answer before we stop trying.
const MAX_COMPLETE_ATTEMPTS: u32 = 5;
/// Output messages in flight at once: enough to keep the pipe full, few
/// enough that a dropped connection leaves little in doubt (docs/delivery.md).
/// The bytes in flight follow the link (`pacing.rs`).
pub const WINDOW: usize = 8;

/// The most bytes of escaped text in one `output` frame. Escapes can make
/// a text six times longer (`\u0000` for each NUL), and the frames in
/// flight are memory too: a message whose text escapes to more is cut, so
/// they stay near their text whatever the job writes. Plain lines escape
/// only their newlines, so a full batch fits.
const MAX_FRAME_DATA: usize = MAX_BATCH_BYTES + MAX_BATCH_BYTES / 8;

/// Longest piece of a server-supplied string that reaches the log. A hostile
/// server may send 1 MiB strings on every frame; the log must not become the
/// way it fills the disk.
const LOGGED_TEXT_MAX: usize = 200;

/// `text` cut to `LOGGED_TEXT_MAX` bytes (on a character boundary), with the
/// full length noted when it was cut.
pub fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= LOGGED_TEXT_MAX {
        return text.into();
    }
    let mut end = LOGGED_TEXT_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len()).into()
}

/// Who we are to the server, and how output is batched.
pub struct Settings {
    pub job_name: String,
    pub job_instance: String,
    /// Empty until the link thread reports the machine id it resolved
    /// (`LinkEvent::Identified`), which it does before its first connection.
    pub machine: String,
    pub version: String,
    pub job_pid: i32,
    /// Wall-clock time the job was spawned: `start.timestamp`, the server's
    /// starttime, the same on every (re)send.
    pub spawned_at: SystemTime,
    pub output_interval: Duration,
    /// The heartbeat, the watchdogs and the delivery window (timings.rs).
    pub timings: Timings,
}

/// How the run ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub retcode: i32,
    /// The server ACKed `complete` with all output delivered.
    pub delivered: bool,
}

/// What the session asks of the rest of the supervisor.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// The server sent a `kill` for this instance on this machine.
    Kill,
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
    /// We asked the link to close this connection: nothing more is sent on
    /// it, but its ACKs still count until the link reports it gone (the
    /// server may still be reading what we sent; see `reconnect`).
    closing: bool,
}

/// The deadlines the session owns.
#[derive(Clone, Copy, Debug)]
enum Deadline {
    Heartbeat,
    SealBatch,
    SyncTimeout,
    AckStall,
    CompleteTimeout,
    GiveUp,
}

pub struct Session {
    settings: Settings,
    encoder: Encoder,
    outbox: Outbox,
    /// The output message bound, from the link's speed.
    pacer: Pacer,
    /// `SP_OUTPUT_MAX_MB`, unless 0.
    cap: Option<OutputCap>,
    /// Recycled buffers for output frames (the link thread returns them).
    frames: FramePool,
    conn: Option<Conn>,
    start_acked: bool,
    /// The server read our `start` (its `sync_response` came after it) and did
    /// not ACK it: it does not know this instance.
    start_ignored: bool,
    /// When the session began: the first batch is due from then.
    began: Instant,
    /// Last delivery progress: an ACK for output or a start not ACKed before.
    last_progress: Instant,
    connect_failures: u32,
    /// Connections in a row that ended with nothing ACKed on them: past a
    /// few, the log says only every power of two (a server that closes at
    /// once must not grow the log by lines per attempt forever).
    fruitless_connections: u64,
    /// Something was ACKed on the current connection.
    conn_fruitful: bool,
    complete_attempts: u32,
    /// The job's result, once the job is finished.
    finished: Option<Finished>,
    next_heartbeat: Instant,
    /// When a batch was last sealed; `None` until the first, which goes out at once.
    last_seal: Option<Instant>,
    outcome: Option<Outcome>,
    spill_noted: bool,
    /// `outbox.lost_bytes()` when the log last said so.
    loss_logged: u64,
    /// `outbox.gaps` already reported in the log.
    gaps_logged: u64,
}

impl Session {
    pub fn new(settings: Settings, mut outbox: Outbox, frames: FramePool, began: Instant) -> Self {
        let heartbeat = settings.timings.heartbeat;
        let pacer = Pacer::new();
        outbox.set_send_limit(pacer.limit());
        let encoder = Encoder::new(
            &settings.job_name,
            &settings.job_instance,
            &settings.machine,
        );
        Session {
            settings,
            encoder,
            outbox,
            pacer,
            cap: None,
            frames,
            conn: None,
            start_acked: false,
            start_ignored: false,
            began,
            last_progress: began,
            connect_failures: 0,
            fruitless_connections: 0,
            conn_fruitful: false,
            complete_attempts: 0,
            finished: None,
            next_heartbeat: began + heartbeat,
            last_seal: None,
            outcome: None,
            spill_noted: false,
            loss_logged: 0,
            gaps_logged: 0,
        }
    }

    /// The server ACKed this run's `start` already (to a daemon that died):
    /// never send another, which would reset the recorded output.
    pub fn with_start_acked(mut self) -> Self {
        self.start_acked = true;
        self
    }

    /// Bound what the server receives (`SP_OUTPUT_MAX_MB`).
    pub fn with_output_cap(mut self, cap: OutputCap) -> Self {
        self.cap = Some(cap);
        self
    }

    #[cfg(test)]
    pub fn outbox_mut(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    /// Output from the job (or a marker of ours) joins the outbox.
    pub fn on_output(&mut self, stream: Stream, text: &str, now: Instant) {
        let text = match self.cap.as_mut() {
            Some(cap) => cap.admit(text),
            None => text,
        };
        if text.is_empty() {
            return;
        }
        self.outbox.push(stream, text);
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

    /// A kill marker: it ends the current batch so it goes out at once.
    pub fn on_kill_marker(&mut self, stream: Stream, marker: &str, now: Instant) {
        // Past the cap it joins the output's end, which follows at the end.
        let marker = match self.cap.as_mut() {
            Some(cap) => cap.admit(marker),
            None => marker,
        };
        self.outbox.push(stream, marker);
        self.seal(now);
    }

    /// The job is finished: its result is fixed, the last batch goes out.
    pub fn on_job_finished(&mut self, finished: Finished, now: Instant) {
        self.finished = Some(finished);
        if let Some(end) = self.cap.as_mut().and_then(OutputCap::finish) {
            self.outbox.push_end(&end);
        }
        self.seal(now);
    }

    /// We are killing the job at the server's request: tell it so, once.
    pub fn announce_kill(&mut self, effects: &mut impl Effects) {
        log::info!("kill requested by the server");
        self.send(effects, self.encoder.killed(crate::os::clock::now()));
    }

    pub fn on_link(
        &mut self,
        event: LinkEvent,
        now: Instant,
        effects: &mut impl Effects,
    ) -> Option<Request> {
        match event {
            LinkEvent::Identified { machine } => {
                effects.machine_identified(&machine);
                self.encoder = Encoder::new(
                    &self.settings.job_name,
                    &self.settings.job_instance,
                    &machine,
                );
                self.settings.machine = machine;
            }
            LinkEvent::Connected { generation } => self.on_connected(generation, now, effects),
            LinkEvent::Disconnected { generation, reason } => {
                if self.is_current(generation) {
                    let closing = self.conn.as_ref().is_some_and(|c| c.closing);
                    if self.conn_fruitful {
                        self.fruitless_connections = 0;
                    } else {
                        self.fruitless_connections += 1;
                    }
                    let n = self.fruitless_connections;
                    if closing {
                        log::debug!("connection closed: {reason}");
                    } else if n > 3 && self.worth_logging() {
                        log::warn!(
                            "connection lost: {reason} ({n} connections in a row got nothing acknowledged)"
                        );
                    } else if self.worth_logging() {
                        log::warn!("connection lost: {reason}");
                    }
                    self.conn = None;
                    self.outbox.on_disconnect();
                    self.pacer.forget_in_flight();
                }
            }
            LinkEvent::ConnectFailed { reason } => {
                self.connect_failures += 1;
                if self.connect_failures == 1 {
                    log::warn!("cannot reach the server (retrying every 2 s): {reason}");
                } else if self.connect_failures.is_power_of_two() {
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
                    return self.on_frame(frame, now, effects);
                }
            }
        }
        None
    }

    /// Whether a connection's coming and going is worth a log line: the
    /// first few of a fruitless run, then every power of two.
    fn worth_logging(&self) -> bool {
        let n = self.fruitless_connections;
        n <= 3 || n.is_power_of_two()
    }

    fn on_connected(&mut self, generation: u64, now: Instant, effects: &mut impl Effects) {
        if self.connect_failures > 0 {
            log::info!(
                "connected to the server after {} failed attempts",
                self.connect_failures
            );
        } else if self.worth_logging() {
            log::info!("connected to the server");
        }
        self.connect_failures = 0;
        self.conn_fruitful = false;
        self.outbox.on_disconnect();
        self.pacer.forget_in_flight();
        self.conn = Some(Conn {
            generation,
            connect_acked: false,
            synced: false,
            opened: now,
            ack_progress: now,
            complete_sent: None,
            closing: false,
        });
        let wall = crate::os::clock::now();
        self.send(effects, self.encoder.connect(wall));
        if !self.start_acked {
            // The spawn time, not now: the server stores it as the run's
            // starttime, however late we get through.
            let start = self.encoder.start(
                self.settings.spawned_at,
                self.settings.job_pid,
                &self.settings.version,
            );
            self.send(effects, start);
        }
        let (last_acked, next) = (
            self.outbox.last_acked_wire_seq(),
            self.outbox.next_wire_seq(),
        );
        self.send(effects, self.encoder.sync_request(wall, last_acked, next));
    }

    /// An ACK retired `bytes` of output: messages and the bytes in flight
    /// follow the delivery rate (`pacing.rs`).
    fn on_output_acked(&mut self, bytes: usize, now: Instant) {
        let before = self.pacer.limit();
        if let Some(limit) = self.pacer.on_acked(bytes, now) {
            self.outbox.set_send_limit(limit);
            // A shrink is news for whoever reads the log; growth is routine.
            let (level, what) = if limit < before {
                (log::Level::Info, "slow link:")
            } else {
                (log::Level::Debug, "link:")
            };
            log::log!(
                level,
                "{what} output messages now at most {limit} bytes, {} in flight (the server acknowledges {} bytes/s)",
                self.pacer.budget(),
                self.pacer.rate().unwrap_or(0)
            );
        }
    }

    fn is_current(&self, generation: u64) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|c| c.generation == generation)
    }

    /// A `complete` of ours awaits its answer on this connection.
    fn complete_pending(&self) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|c| c.complete_sent.is_some())
    }

    fn on_frame(
        &mut self,
        frame: Inbound,
        now: Instant,
        effects: &mut impl Effects,
    ) -> Option<Request> {
        // Logged once acted on, so the line means it is done: an output
        // ACK's is written after the journal's header says so (the crash
        // sweep waits for these lines before it kills).
        let described =
            log::log_enabled!(log::Level::Debug).then(|| clip(&format!("{frame:?}")).into_owned());
        let request = self.handle_frame(frame, now, effects);
        if let Some(described) = described {
            log::debug!("received {described}");
        }
        request
    }

    fn handle_frame(
        &mut self,
        frame: Inbound,
        now: Instant,
        effects: &mut impl Effects,
    ) -> Option<Request> {
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
                self.conn_fruitful = true;
                if !self.start_acked {
                    // Told first: output follows from now on, and the
                    // guardian must then never send `start` again.
                    effects.start_acked();
                    log::info!("server acknowledged the start");
                    self.last_progress = now;
                }
                self.start_acked = true;
                self.start_ignored = false;
            }
            Inbound::Ack {
                kind: AckKind::Output,
                seq: Some(seq),
            } => {
                let bytes = self.outbox.on_ack(seq);
                if bytes > 0 {
                    self.last_progress = now;
                    self.conn_fruitful = true;
                    if let Some(conn) = self.conn.as_mut() {
                        conn.ack_progress = now;
                    }
                    self.on_output_acked(bytes, now);
                }
            }
            Inbound::Ack {
                kind: AckKind::Complete,
                ..
            } => {
                // Only an answer to a `complete` we sent counts.
                if self.complete_pending() {
                    let retcode = self.retcode();
                    let delivered = self.outbox.is_empty();
                    if !delivered {
                        self.write_undelivered(
                            "the server never accepted this instance's start",
                            effects,
                        );
                    }
                    self.settle(Outcome { retcode, delivered }, effects);
                    log::info!("server recorded the result (retcode {retcode})");
                }
            }
            Inbound::Ack { .. } => {}
            Inbound::Nack { expected_seq } => {
                let outcome = self.outbox.on_nack(expected_seq);
                if outcome == crate::report::outbox::NackOutcome::Resend {
                    self.pacer.forget_in_flight();
                }
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
                    return Some(Request::Kill);
                }
                log::warn!(
                    "ignored a kill for another instance ({} on {})",
                    clip(&format!("{job_instance:?}")),
                    clip(&format!("{machine:?}"))
                );
            }
            Inbound::Error { code, message } => {
                if code == "JOB_NOT_FOUND" && self.complete_pending() {
                    log::warn!(
                        "server no longer knows this job ({}); output kept in this log",
                        clip(&message)
                    );
                    let retcode = self.retcode();
                    self.write_undelivered(
                        "the server answered JOB_NOT_FOUND (job stopped or restarted)",
                        effects,
                    );
                    self.settle(
                        Outcome {
                            retcode,
                            delivered: false,
                        },
                        effects,
                    );
                } else {
                    log::warn!("server error {}: {}", clip(&code), clip(&message));
                }
            }
            Inbound::Other(kind) => log::debug!("ignored a {kind:?} frame"),
        }
        None
    }

    /// The job's result code, or the wrapper-error code while it has none.
    fn retcode(&self) -> i32 {
        self.finished
            .map_or(crate::exit_codes::WRAPPER_ERROR, |finished| {
                finished.retcode
            })
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
        self.pacer.forget_in_flight();
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

    /// When delivery is abandoned: the delivery window after the later of the
    /// job's end and the last delivery progress.
    fn delivery_deadline(&self) -> Option<Instant> {
        self.finished.map(|finished| {
            finished.at.max(self.last_progress) + self.settings.timings.delivery_window
        })
    }

    /// Every deadline the session has now, each once.
    fn deadlines(&self) -> impl Iterator<Item = (Deadline, Instant)> {
        // A closing connection has nothing more to check: the link ends it.
        let conn = self.conn.as_ref().filter(|c| !c.closing);
        // Open output with no seal yet is due at once (from the beginning).
        let seal = (self.outbox.open_bytes() > 0).then(|| self.batch_due().unwrap_or(self.began));
        let timings = &self.settings.timings;
        let sync = conn
            .filter(|c| !c.synced)
            .map(|c| c.opened + timings.sync_timeout);
        // The one stall watchdog (timings.rs): ACKs are the end of the way,
        // so this also catches a socket whose writes stopped moving.
        let ack_stall = conn
            .filter(|_| self.outbox.in_flight() > 0)
            .map(|c| c.ack_progress + timings.stall);
        let complete = conn
            .and_then(|c| c.complete_sent)
            .map(|at| at + timings.complete_timeout);
        let give_up = self.delivery_deadline().filter(|_| self.outcome.is_none());
        [
            (Deadline::Heartbeat, Some(self.next_heartbeat)),
            (Deadline::SealBatch, seal),
            (Deadline::SyncTimeout, sync),
            (Deadline::AckStall, ack_stall),
            (Deadline::CompleteTimeout, complete),
            (Deadline::GiveUp, give_up),
        ]
        .into_iter()
        .filter_map(|(deadline, at)| Some((deadline, at?)))
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines().map(|(_, at)| at).min()
    }

    /// Fire every deadline that is due.
    pub fn on_time(&mut self, now: Instant, effects: &mut impl Effects) {
        let due: Vec<Deadline> = self
            .deadlines()
            .filter(|(_, at)| now >= *at)
            .map(|(deadline, _)| deadline)
            .collect();
        for deadline in due {
            match deadline {
                Deadline::Heartbeat => {
                    // Also while killing and while delivering after the end,
                    // so the server does not declare the machine lost (253).
                    self.send(effects, self.encoder.heartbeat(crate::os::clock::now()));
                    while self.next_heartbeat <= now {
                        self.next_heartbeat += self.settings.timings.heartbeat;
                    }
                }
                Deadline::SealBatch => self.seal(now),
                Deadline::SyncTimeout => {
                    log::warn!(
                        "no sync_response within {} s; assuming per-socket sequence numbers",
                        self.settings.timings.sync_timeout.as_secs()
                    );
                    self.on_synced(None);
                }
                Deadline::AckStall => {
                    let stall = self.settings.timings.stall;
                    self.reconnect(format!("no ACK for {} s", stall.as_secs()), effects);
                }
                Deadline::CompleteTimeout => self.reconnect(
                    format!(
                        "no answer to complete for {} s",
                        self.settings.timings.complete_timeout.as_secs()
                    ),
                    effects,
                ),
                Deadline::GiveUp => self.give_up(
                    &format!(
                        "no delivery progress for {} s after the job ended (server unreachable, or not acknowledging)",
                        self.settings.timings.delivery_window.as_secs()
                    ),
                    effects,
                ),
            }
        }
        let exhausted = self.complete_attempts >= MAX_COMPLETE_ATTEMPTS && !self.complete_pending();
        if exhausted && self.finished.is_some() {
            self.give_up(
                &format!("the server did not answer complete in {MAX_COMPLETE_ATTEMPTS} attempts"),
                effects,
            );
        }
    }

    /// Drop the current connection: the link closes it and reconnects.
    ///
    /// Not at once: what we sent may still be on its way to the server (in
    /// a slow link's queue), and the server appends it when it comes. The
    /// real endpoint keeps its sequence state per job instance and machine,
    /// not per socket: a new socket's `connect` resets it, the old socket's
    /// late messages are then judged by the new socket's numbers, and when
    /// the old socket's handler ends it deletes the state, after which the
    /// server appends our output without ACKing it, so we send it again and
    /// it is recorded twice (issue 24). So the link sends a close frame
    /// behind what it sent and waits (bounded) for the server to close the
    /// socket, and the ACKs that come meanwhile still retire output; only
    /// then is the connection gone (`LinkEvent::Disconnected`) and a new one
    /// opened.
    fn reconnect(&mut self, reason: String, effects: &mut impl Effects) {
        let Some(conn) = self.conn.as_mut().filter(|c| !c.closing) else {
            return;
        };
        log::warn!("reconnecting: {reason}");
        conn.closing = true;
        effects.link(LinkCommand::Drop {
            generation: conn.generation,
            reason,
        });
    }

    /// Stop delivering: undelivered output goes to the log.
    pub fn give_up(&mut self, why: &str, effects: &mut impl Effects) {
        if self.outcome.is_some() {
            return;
        }
        let retcode = self.retcode();
        log::error!("giving up delivery: {why}");
        self.write_undelivered(why, effects);
        self.settle(
            Outcome {
                retcode,
                delivered: false,
            },
            effects,
        );
    }

    /// The run's end is settled: the result is recorded, or the server
    /// refused it, or what was not delivered is in the log. The guardian is
    /// told first, so a death from here on makes it report nothing (a
    /// second `complete` would overwrite a delivered result with 255).
    fn settle(&mut self, outcome: Outcome, effects: &mut impl Effects) {
        effects.settled();
        self.outcome = Some(outcome);
    }

    /// Undelivered output to the log, between clear markers.
    fn write_undelivered(&mut self, why: &str, effects: &mut impl Effects) {
        let retcode = self.retcode();
        let delivered = self.outbox.acked_bytes;
        self.outbox.seal();
        let header = format!(
            "==== sp_wrapper: UNDELIVERED OUTPUT of {} (retcode {retcode}): {why}; {} bytes below were not delivered ({delivered} bytes before them were) ====\n",
            self.settings.job_instance,
            self.outbox.undelivered_bytes()
        );
        effects.log_undelivered(&header);
        // Batch by batch (at most 500 KiB each, the spool read back one
        // record at a time): memory stays bounded whatever the backlog.
        let mut ends_with_newline = true;
        self.outbox.take_undelivered(|batch| {
            if !batch.text.is_empty() {
                effects.log_undelivered(&batch.text);
                ends_with_newline = batch.text.ends_with('\n');
            }
        });
        if !ends_with_newline {
            effects.log_undelivered("\n");
        }
        effects.log_undelivered("==== sp_wrapper: END OF UNDELIVERED OUTPUT ====\n");
    }

    /// Send what the connection state allows: output within the window once
    /// the start is ACKed and the numbering is settled, then `complete`.
    pub fn pump(&mut self, now: Instant, effects: &mut impl Effects) {
        let Some(conn) = self.conn.as_ref() else {
            return;
        };
        if !conn.synced || conn.closing || self.outcome.is_some() {
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
            let wall = crate::os::clock::now();
            while self.pacer.may_send(now) {
                let budget = self.pacer.budget();
                let Some((seq, batch)) = self.outbox.next_to_send(WINDOW, budget) else {
                    break;
                };
                let buffer = self.frames.take(batch.text.len().min(MAX_FRAME_DATA) + 256);
                let whole = batch.text.len();
                let (frame, carried) = self.encoder.output(
                    buffer,
                    wall,
                    (batch.stream, seq),
                    &batch.text,
                    MAX_FRAME_DATA,
                );
                if carried < whole {
                    // Escapes made it too long: the rest is the next batch.
                    self.outbox.cut_last_sent(carried);
                }
                self.pacer.on_sent(carried, now);
                log::debug!("sending output seq {seq} ({carried} bytes)");
                effects.link(LinkCommand::Send { generation, frame });
            }
        }
        let Some(finished) = self.finished else {
            return;
        };
        let ready = self.outbox.is_empty() || (self.start_ignored && !self.start_acked);
        if ready && !self.complete_pending() {
            if self.complete_attempts == 0 && self.outbox.is_empty() {
                effects.complete_sent();
            }
            self.complete_attempts += 1;
            // The main process's exit time, not now: the server stores it as
            // the run's endtime, however long delivery took.
            let frame = self.encoder.complete(
                finished.exited_at,
                finished.retcode,
                self.outbox.next_wire_seq(),
            );
            log::debug!(
                "sending complete (retcode {}, attempt {})",
                finished.retcode,
                self.complete_attempts
            );
            effects.link(LinkCommand::Send { generation, frame });
            if let Some(conn) = self.conn.as_mut() {
                conn.complete_sent = Some(now);
            }
        }
    }

    /// Send `frame` on the current connection, if there is one and it is
    /// not closing.
    fn send(&self, effects: &mut impl Effects, frame: String) {
        if let Some(conn) = self.conn.as_ref().filter(|c| !c.closing) {
            effects.link(LinkCommand::Send {
                generation: conn.generation,
                frame,
            });
        }
    }

    /// Output that could be kept neither in memory nor in the spool is lost
    /// (a marker in the text says where); the log must say so too.
    pub fn log_new_loss(&mut self) {
        let lost = self.outbox.lost_bytes();
        // Once per gap, then at most every 64 MiB lost: not once per batch.
        let new_gap = self.outbox.gaps > self.gaps_logged;
        if new_gap || lost >= self.loss_logged + (64 << 20) {
            log::error!(
                "output is being lost (gap {}, {lost} bytes lost so far; the last 256 KiB of each gap are kept): {}",
                self.outbox.gaps,
                self.outbox.loss_reason
            );
            self.loss_logged = lost;
            self.gaps_logged = self.outbox.gaps;
        }
    }

    /// The outcome, once there is one.
    pub fn take_outcome(&mut self) -> Option<Outcome> {
        self.outcome.take()
    }
}

/// What the session's and the supervisor's unit tests build a session from.
#[cfg(test)]
pub mod testing {
    use std::time::{Duration, Instant, SystemTime};

    use super::{Outcome, Session, Settings};
    use crate::messages::{AckKind, Event, Inbound, LinkEvent, Stream};
    use crate::report::outbox::Outbox;
    use crate::timings::Timings;
    use crate::wire::frames::FramePool;

    /// The instance the test session reports (job "job", machine "m1").
    pub const INSTANCE: &str = "job_1";
    /// The fake job's spawn time: 2026-11-22T08:40:02.123456+00:00.
    const SPAWNED_MICROS: u64 = 1_795_336_802_123_456;

    pub fn spawned_at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_micros(SPAWNED_MICROS)
    }

    /// A session as the daemon builds one, begun at `t0`.
    pub fn session(t0: Instant) -> Session {
        let settings = Settings {
            job_name: "job".into(),
            job_instance: INSTANCE.into(),
            machine: "m1".into(),
            version: "test".into(),
            job_pid: 4242,
            spawned_at: spawned_at(),
            output_interval: Duration::from_millis(1000),
            timings: Timings::DEFAULT,
        };
        Session::new(
            settings,
            Outbox::new(1 << 20, vec![], u64::MAX),
            FramePool::default(),
            t0,
        )
    }

    /// What the tests drive: the supervisor, or a session alone (with the
    /// supervisor's handling of output and link events).
    pub trait Drive {
        fn handle(&mut self, event: Event, now: Instant);
        fn pump(&mut self, now: Instant);
    }

    /// A frame from the server on connection `generation`.
    pub fn frame(driven: &mut impl Drive, generation: u64, frame: Inbound, now: Instant) {
        driven.handle(Event::Link(LinkEvent::Frame { generation, frame }), now);
        driven.pump(now);
    }

    pub fn ack(kind: AckKind, seq: Option<i64>) -> Inbound {
        Inbound::Ack { kind, seq }
    }

    /// A new connection, answered as the real server does: `ack connect` first.
    pub fn connect(driven: &mut impl Drive, generation: u64, now: Instant) {
        driven.handle(Event::Link(LinkEvent::Connected { generation }), now);
        driven.pump(now);
        frame(driven, generation, ack(AckKind::Connect, None), now);
    }

    /// Output of the job's, as a reader thread sends it.
    pub fn output(driven: &mut impl Drive, stream: Stream, text: &str, now: Instant) {
        let text = text.into();
        driven.handle(Event::Output { stream, text }, now);
    }

    /// Connection `generation` lost (the link's report).
    pub fn cut(driven: &mut impl Drive, generation: u64, now: Instant) {
        let reason = "cut".into();
        driven.handle(
            Event::Link(LinkEvent::Disconnected { generation, reason }),
            now,
        );
    }

    /// Connection 1, its start ACKed and numbering settled.
    pub fn sync(driven: &mut impl Drive, t0: Instant) {
        connect(driven, 1, t0);
        frame(driven, 1, ack(AckKind::Start, None), t0);
        frame(driven, 1, Inbound::SyncResponse { last_seq: -1 }, t0);
    }

    pub fn delivered(retcode: i32) -> Outcome {
        Outcome {
            retcode,
            delivered: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use super::testing::{
        Drive, ack, connect, cut, delivered, frame, output, session, spawned_at, sync,
    };
    use crate::exit_codes;
    use crate::messages::Event;
    use crate::run::effects::fake::FakeEffects;

    const DELIVERY_WINDOW: Duration = Timings::DEFAULT.delivery_window;
    const HEARTBEAT_INTERVAL: Duration = Timings::DEFAULT.heartbeat;

    /// A session and the fake world it acts on: the supervisor's part of
    /// the wiring without the job's lifecycle (a test ends the job itself).
    struct Run {
        session: Session,
        effects: FakeEffects,
    }

    impl Run {
        fn new(t0: Instant) -> Run {
            Run {
                session: session(t0),
                effects: FakeEffects::new(),
            }
        }

        fn on_time(&mut self, now: Instant) {
            self.session.on_time(now, &mut self.effects);
        }

        fn next_deadline(&self) -> Option<Instant> {
            self.session.next_deadline()
        }

        fn take_outcome(&mut self) -> Option<Outcome> {
            self.session.take_outcome()
        }

        fn effects(&self) -> &FakeEffects {
            &self.effects
        }
    }

    impl Drive for Run {
        /// What the supervisor does with an output or link event.
        fn handle(&mut self, event: Event, now: Instant) {
            match event {
                Event::Output { stream, text } => self.session.on_output(stream, &text, now),
                Event::Link(event) => {
                    let _ = self.session.on_link(event, now, &mut self.effects);
                }
                _ => panic!("not an event the session handles"),
            }
        }

        fn pump(&mut self, now: Instant) {
            self.session.pump(now, &mut self.effects);
        }
    }

    fn types(run: &Run) -> Vec<String> {
        run.effects().types()
    }

    fn outputs(run: &Run) -> Vec<(i64, String)> {
        run.effects().outputs()
    }

    /// A session on connection 1, its start ACKed and numbering settled.
    fn synced(t0: Instant) -> Run {
        let mut run = Run::new(t0);
        sync(&mut run, t0);
        run
    }

    fn job_ends(run: &mut Run, status: i32, now: Instant) {
        job_ends_at(run, status, now, crate::os::clock::now());
    }

    /// The job's main process exited (wait status `status`) at wall-clock
    /// time `at`, its output pipes closed.
    fn job_ends_at(run: &mut Run, status: i32, now: Instant, at: SystemTime) {
        let finished = Finished {
            retcode: exit_codes::job_retcode(status, None),
            at: now,
            exited_at: at,
        };
        run.session.on_job_finished(finished, now);
        run.pump(now);
    }

    fn sent_timestamps(run: &Run, kind: &str) -> Vec<String> {
        run.effects().sent_timestamps(kind)
    }

    #[test]
    fn server_strings_are_clipped_for_the_log() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(300);
        let clipped = clip(&long);
        assert!(clipped.len() < LOGGED_TEXT_MAX + 20, "{}", clipped.len());
        assert!(clipped.ends_with("... (600 bytes)"), "{clipped}");
    }

    #[test]
    fn a_sync_response_before_the_connect_ack_is_not_ours() {
        let t0 = Instant::now();
        let mut run = Run::new(t0);
        output(&mut run, Stream::Stdout, "kept\n", t0);
        job_ends(&mut run, 0, t0);
        run.handle(Event::Link(LinkEvent::Connected { generation: 1 }), t0);
        // A hostile or confused server answers before reading our frames.
        frame(&mut run, 1, Inbound::SyncResponse { last_seq: -1 }, t0);
        assert!(
            !types(&run).contains(&"complete".to_string()),
            "the start is not yet known to be ignored"
        );
        frame(&mut run, 1, ack(AckKind::Connect, None), t0);
        frame(&mut run, 1, ack(AckKind::Start, None), t0);
        frame(&mut run, 1, Inbound::SyncResponse { last_seq: -1 }, t0);
        assert_eq!(outputs(&run), [(0, "kept\n".to_string())]);
    }

    #[test]
    fn start_carries_the_spawn_time_and_complete_the_exit_time_on_every_resend() {
        let t0 = Instant::now();
        let mut run = Run::new(t0);
        let exited = spawned_at() + Duration::from_millis(1500);
        // The server is away while the job runs and ends.
        job_ends_at(&mut run, 0, t0 + Duration::from_secs(1), exited);
        let late = t0 + Duration::from_secs(30);
        // First connection: start is not ACKed (cut), then a second one.
        run.handle(Event::Link(LinkEvent::Connected { generation: 1 }), late);
        cut(&mut run, 1, late);
        connect(&mut run, 2, late);
        frame(&mut run, 2, ack(AckKind::Start, None), late);
        frame(&mut run, 2, Inbound::SyncResponse { last_seq: -1 }, late);
        // complete goes out; its ACK is lost with the connection; resent.
        cut(&mut run, 2, late);
        connect(&mut run, 3, late + Duration::from_secs(5));
        frame(
            &mut run,
            3,
            Inbound::SyncResponse { last_seq: -1 },
            late + Duration::from_secs(5),
        );
        let starts = sent_timestamps(&run, "start");
        let completes = sent_timestamps(&run, "complete");
        assert_eq!(starts, ["2026-11-22T08:40:02.123456+00:00"; 2]);
        assert_eq!(completes, ["2026-11-22T08:40:03.623456+00:00"; 2]);
    }

    #[test]
    fn a_server_that_never_acks_output_cannot_keep_the_agent_alive() {
        let t0 = Instant::now();
        let mut run = Run::new(t0);
        output(&mut run, Stream::Stdout, "never acked\n", t0);
        job_ends(&mut run, 0, t0);
        // Every 20 s a new connection whose start is ACKed, output never is.
        let mut now = t0;
        let mut generation = 0;
        while run.take_outcome().is_none() {
            assert!(
                now < t0 + DELIVERY_WINDOW + Duration::from_secs(1),
                "still delivering {:?} after the job ended",
                now - t0
            );
            generation += 1;
            connect(&mut run, generation, now);
            frame(&mut run, generation, ack(AckKind::Start, None), now);
            frame(
                &mut run,
                generation,
                Inbound::SyncResponse { last_seq: -1 },
                now,
            );
            now += Duration::from_secs(20);
            run.on_time(now);
            cut(&mut run, generation, now);
        }
        assert!(run.effects().undelivered.contains("never acked"));
    }

    #[test]
    fn happy_path_output_waits_for_start_ack_then_complete_after_all_acks() {
        let t0 = Instant::now();
        let mut run = Run::new(t0);
        output(&mut run, Stream::Stdout, "hello\n", t0);
        connect(&mut run, 1, t0);
        assert_eq!(types(&run), ["connect", "start", "sync_request"]);
        frame(&mut run, 1, ack(AckKind::Connect, None), t0);
        frame(&mut run, 1, ack(AckKind::Start, None), t0);
        assert!(
            outputs(&run).is_empty(),
            "no output before the numbering is settled"
        );
        frame(&mut run, 1, Inbound::SyncResponse { last_seq: -1 }, t0);
        assert_eq!(outputs(&run), [(0, "hello\n".to_string())]);
        job_ends(&mut run, 3 << 8, t0);
        assert!(
            !types(&run).contains(&"complete".to_string()),
            "complete only after every ACK"
        );
        frame(&mut run, 1, ack(AckKind::Output, Some(0)), t0);
        let complete = &run.effects().sent.last().expect("sent").1;
        assert_eq!(
            (
                complete["type"].as_str(),
                complete["retcode"].as_i64(),
                complete["seq"].as_i64()
            ),
            (Some("complete"), Some(3), Some(1))
        );
        frame(&mut run, 1, ack(AckKind::Complete, Some(1)), t0);
        assert_eq!(run.take_outcome(), Some(delivered(3)));
    }

    #[test]
    fn reconnect_renumbers_and_resends_only_unacked_output() {
        let t0 = Instant::now();
        let mut run = synced(t0);
        output(&mut run, Stream::Stdout, "a", t0);
        run.on_time(t0 + Duration::from_secs(1));
        run.pump(t0 + Duration::from_secs(1));
        output(&mut run, Stream::Stdout, "b", t0 + Duration::from_secs(2));
        run.pump(t0 + Duration::from_secs(2));
        assert_eq!(outputs(&run), [(0, "a".to_string()), (1, "b".to_string())]);
        frame(&mut run, 1, ack(AckKind::Output, Some(0)), t0);
        cut(&mut run, 1, t0);
        connect(&mut run, 2, t0);
        // start was ACKed once: it is not sent again (it would reset the output).
        assert_eq!(
            types(&run)[types(&run).len() - 2..],
            ["connect", "sync_request"]
        );
        frame(&mut run, 2, Inbound::SyncResponse { last_seq: -1 }, t0);
        let resent: Vec<_> = run
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

    /// Issue 24: a connection we drop may still carry our messages to the
    /// server, which appends them (and shares its sequence state between
    /// our sockets). Until the link reports it gone, nothing more is sent
    /// on it, no new connection is made, and its late ACKs still retire
    /// output, so what the server appended there is not sent again.
    #[test]
    fn a_dropped_connection_sends_nothing_more_and_its_late_acks_still_count() {
        let t0 = Instant::now();
        let mut run = synced(t0);
        output(&mut run, Stream::Stdout, "a", t0);
        run.pump(t0);
        assert_eq!(outputs(&run), [(0, "a".to_string())]);
        // The one stall watchdog (timings.rs): no ACK progress for `stall`.
        let stalled = t0 + Timings::DEFAULT.stall;
        run.on_time(stalled - Duration::from_millis(1));
        assert!(
            run.effects().drops.is_empty(),
            "dropped before the stall bound"
        );
        run.on_time(stalled);
        assert_eq!(
            run.effects().drops,
            [1],
            "no ACK for the stall bound: dropped"
        );
        let sent_before = run.effects().sent.len();
        output(&mut run, Stream::Stdout, "b", stalled);
        run.on_time(stalled + Duration::from_secs(6));
        run.pump(stalled + Duration::from_secs(6));
        assert_eq!(
            run.effects().sent.len(),
            sent_before,
            "nothing on a closing connection"
        );
        assert_eq!(run.effects().drops, [1], "dropped once");
        // The server's ACK for "a", late, before it closes the socket.
        frame(&mut run, 1, ack(AckKind::Output, Some(0)), stalled);
        run.handle(
            Event::Link(LinkEvent::Disconnected {
                generation: 1,
                reason: "no ACK for 30 s".into(),
            }),
            stalled,
        );
        connect(&mut run, 2, stalled);
        frame(&mut run, 2, Inbound::SyncResponse { last_seq: -1 }, stalled);
        let resent: Vec<_> = run
            .effects()
            .sent
            .iter()
            .filter(|(g, v)| *g == 2 && v["type"] == "output")
            .map(|(_, v)| (v["seq"].as_i64(), v["data"].as_str().map(str::to_string)))
            .collect();
        assert_eq!(resent, [(Some(0), Some("b".to_string()))]);
    }

    #[test]
    fn job_not_found_keeps_the_output_in_the_log() {
        let t0 = Instant::now();
        let mut run = Run::new(t0);
        output(&mut run, Stream::Stdout, "precious output\n", t0);
        job_ends(&mut run, 0, t0);
        connect(&mut run, 1, t0);
        // The server ignores start for an instance it does not run.
        frame(&mut run, 1, Inbound::SyncResponse { last_seq: -1 }, t0);
        assert_eq!(types(&run).last().map(String::as_str), Some("complete"));
        let not_found = Inbound::Error {
            code: "JOB_NOT_FOUND".into(),
            message: "gone".into(),
        };
        frame(&mut run, 1, not_found, t0);
        assert_eq!(
            run.take_outcome(),
            Some(Outcome {
                retcode: 0,
                delivered: false
            })
        );
        assert!(
            run.effects().undelivered.contains("precious output"),
            "{}",
            run.effects().undelivered
        );
    }

    #[test]
    fn unreachable_server_gives_up_sixty_seconds_after_the_end() {
        let t0 = Instant::now();
        let mut run = Run::new(t0);
        output(&mut run, Stream::Stderr, "x", t0);
        job_ends(&mut run, 0, t0);
        run.on_time(t0 + DELIVERY_WINDOW - Duration::from_millis(1));
        assert_eq!(run.take_outcome(), None);
        run.on_time(t0 + DELIVERY_WINDOW);
        assert_eq!(
            run.take_outcome(),
            Some(Outcome {
                retcode: 0,
                delivered: false
            })
        );
        assert!(run.effects().undelivered.contains("UNDELIVERED"));
    }

    #[test]
    fn heartbeats_every_five_seconds_while_connected() {
        let t0 = Instant::now();
        let mut run = Run::new(t0);
        connect(&mut run, 1, t0);
        for i in 1..=3 {
            let at = t0 + HEARTBEAT_INTERVAL * i;
            assert_eq!(run.next_deadline().map(|d| d <= at), Some(true));
            run.on_time(at);
        }
        assert_eq!(types(&run).iter().filter(|t| *t == "heartbeat").count(), 3);
    }
}
