//! The ACK-tracked outbound queue of job output. Owned by the supervisor
//! thread; a plain struct with no threads and no clock, unit-tested alone.
//!
//! Output text is appended to an open batch; a sealed batch is a future
//! `output` message. Sealed batches are numbered globally (0, 1, 2, ...) in
//! job order and stay here until the server ACKs them: in memory up to the
//! byte bound, then in the spool file (`spool.rs`).
//!
//! The wire `seq` of a batch is `global - wire_base`. The real server keeps
//! its expected seq per socket and starts again at 0 after a reconnect, so
//! after each reconnect's `sync_response` we renumber, so the oldest unACKed
//! batch is seq 0 on the new socket. Whatever `last_seq` it names (the real
//! server answers -1 on a new socket; Saltpeter has no per-job sequence
//! state), nothing is retired on its word: only ACKs retire.
//!
//! Batches sent but not ACKed when a connection drops are sent again: never
//! lost. If the server had appended one and only its ACK was lost, it appears
//! twice; the window of batches in flight bounds how much (docs/delivery.md).
//!
//! When a batch fits neither in memory nor in the spool (its cap, a full
//! disk), output is being lost: from then on new text goes to a bounded
//! tail (`tail.rs`) until there is room again (memory or spool half free),
//! so each gap is one stretch of the output, marked by one line saying how
//! many bytes were lost there, followed by the last bytes before the gap
//! closed. At the end of the job the last gap closes once what precedes it
//! has drained, so the record ends with the job's last output.

use std::collections::VecDeque;
use std::path::PathBuf;

use crate::messages::Stream;
use crate::spool::Spool;
use crate::tail::Tail;

/// Most text in one `output` message (500 KiB, as the Python wrapper).
pub const MAX_BATCH_BYTES: usize = 500 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub stream: Stream,
    pub text: String,
}

/// What `on_nack` did.
#[derive(Debug, PartialEq, Eq)]
pub enum NackOutcome {
    /// Resend from the oldest unACKed batch.
    Resend,
    /// Nothing to do (a repeat of a NACK already acted on, or nonsense).
    Ignored,
}

/// What a gap keeps of its output: its last bytes.
pub const GAP_TAIL_BYTES: usize = 256 * 1024;

/// Output that could be kept neither in memory nor on disk: a gap, open
/// until there is room again.
struct Loss {
    reason: String,
    /// The gap's last bytes; what fell out of it is lost.
    tail: Tail,
}

fn loss_marker(loss: &Loss) -> String {
    format!(
        "\n[sp_wrapper: {} bytes of output were lost here: {}]\n",
        loss.tail.dropped, loss.reason
    )
}

pub struct Outbox {
    /// Sealed unACKed batches in memory, oldest first; `memory[0]` is global `front`.
    memory: VecDeque<Batch>,
    memory_bytes: usize,
    memory_limit: usize,
    /// Sealed batches after those in `memory`, on disk.
    spool: Option<Spool>,
    spool_candidates: Vec<PathBuf>,
    spool_cap: u64,
    /// Global number of `memory[0]` = number of batches retired.
    front: u64,
    /// How many batches from the front have been sent on the current connection.
    sent: usize,
    /// Their total size.
    sent_bytes: usize,
    wire_base: u64,
    /// The global front at the last NACK we acted on: repeats for the same
    /// front are the rest of the window being refused, not news.
    nack_front: Option<u64>,
    open: Option<Batch>,
    max_batch: usize,
    /// The most text one message may carry when it is sent (the session
    /// follows the link's speed, `pacing.rs`): a longer batch is split in
    /// two as it goes out. Batches are sealed at `max_batch`, few and large
    /// for the server; only a slow link makes messages smaller, and a burst
    /// sealed before the link was timed is cut to the link's size then.
    send_limit: usize,
    /// Retired full-size buffers, reused for new batches: large allocations
    /// are fresh mmaps (page faults, zeroing, TLB shootdowns on unmap), which
    /// cost more than the copy they hold.
    spare: Vec<String>,
    loss: Option<Loss>,
    /// The spool's backlog when a write to it last failed (a full disk): it
    /// is tried again once that has halved, not at every batch.
    spool_failed_at: Option<u64>,
    pub acked_bytes: u64,
    /// Bytes lost in gaps already closed.
    lost_closed: u64,
    /// Gaps opened so far (for the log: one line per gap).
    pub gaps: u64,
    /// Text that must follow an open gap whole rather than join its tail
    /// (the end of the output past `SP_OUTPUT_MAX_MB` and its line).
    epilogue: Option<Batch>,
    /// Why output was last lost (empty while none was): for the log.
    pub loss_reason: String,
}

impl Outbox {
    /// `spool_candidates`: where to create the spool file, tried in order;
    /// `spool_cap`: the most backlog it may hold (`SP_SPOOL_MAX_MB`).
    pub fn new(memory_limit: usize, spool_candidates: Vec<PathBuf>, spool_cap: u64) -> Self {
        let mut outbox = Self::with_batch_limit(memory_limit, spool_candidates, MAX_BATCH_BYTES);
        outbox.spool_cap = spool_cap;
        outbox
    }

    pub fn with_batch_limit(
        memory_limit: usize,
        spool_candidates: Vec<PathBuf>,
        max_batch: usize,
    ) -> Self {
        Outbox {
            memory: VecDeque::new(),
            memory_bytes: 0,
            memory_limit,
            spool: None,
            spool_candidates,
            spool_cap: u64::MAX,
            front: 0,
            sent: 0,
            sent_bytes: 0,
            wire_base: 0,
            nack_front: None,
            open: None,
            max_batch: max_batch.max(4),
            send_limit: usize::MAX,
            spare: Vec::new(),
            loss: None,
            spool_failed_at: None,
            acked_bytes: 0,
            lost_closed: 0,
            gaps: 0,
            epilogue: None,
            loss_reason: String::new(),
        }
    }

    /// The guardian's outbox (guardian.rs): a dead daemon's spool, whose
    /// records were never sent, after `preface` (in memory, so it goes
    /// first). Later output queues behind the spool, in order.
    pub fn adopt_spool(&mut self, spool: Spool, preface: &str) {
        self.push(Stream::Stdout, preface);
        self.seal();
        self.spool = Some(spool);
    }

    /// Append job output. Seals the open batch when the stream changes (so
    /// messages keep arrival order) and whenever it reaches the size limit.
    pub fn push(&mut self, stream: Stream, mut text: &str) {
        if self.open.as_ref().is_some_and(|b| b.stream != stream) {
            self.seal();
        }
        while !text.is_empty() {
            let (spare, max_batch) = (&mut self.spare, self.max_batch);
            let open = self.open.get_or_insert_with(|| Batch {
                stream,
                text: spare
                    .pop()
                    .unwrap_or_else(|| String::with_capacity(max_batch)),
            });
            let room = self.max_batch - open.text.len();
            if text.len() <= room {
                open.text.push_str(text);
                text = "";
            } else {
                let mut cut = room;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                open.text.push_str(&text[..cut]);
                text = &text[cut..];
            }
            if open.text.len() + 3 >= self.max_batch {
                // Full (a 4-byte character may not fit in the last 3 bytes).
                self.seal();
            }
        }
    }

    /// A new bound on the text of a message as it is sent (`send_limit`).
    pub fn set_send_limit(&mut self, limit: usize) {
        self.send_limit = limit.max(4);
    }

    /// Split `memory[index]`, never sent under the current numbering, so it
    /// fits `send_limit`: the rest becomes the next batch. Later batches are
    /// unsent too, so their numbers shifting by one changes nothing on the
    /// wire. The cut is on a character boundary.
    fn fit_for_sending(&mut self, index: usize) {
        let limit = self.send_limit;
        let Some(batch) = self.memory.get_mut(index) else {
            return;
        };
        if batch.text.len() <= limit {
            return;
        }
        let mut cut = limit;
        while !batch.text.is_char_boundary(cut) {
            cut -= 1;
        }
        let rest = Batch {
            stream: batch.stream,
            text: batch.text.split_off(cut),
        };
        self.memory.insert(index + 1, rest);
    }

    pub fn open_bytes(&self) -> usize {
        self.open.as_ref().map_or(0, |b| b.text.len())
    }

    /// Close the open batch, making it sendable.
    pub fn seal(&mut self) {
        if let Some(mut batch) = self.open.take() {
            if batch.text.is_empty() {
                self.recycle(batch.text);
            } else {
                if batch.text.len() < batch.text.capacity() / 2 {
                    // A small batch of a quiet job: do not pin a full buffer.
                    batch.text.shrink_to_fit();
                }
                self.place(batch);
            }
        }
    }

    fn recycle(&mut self, mut text: String) {
        const SPARES: usize = 2;
        if text.capacity() >= self.max_batch && self.spare.len() < SPARES {
            text.clear();
            self.spare.push(text);
        }
    }

    fn place(&mut self, batch: Batch) {
        // With an epilogue waiting, only the drain closes the gap (`force_close_gap`).
        if self.loss.is_some() && self.epilogue.is_none() && self.room_to_close_gap() {
            self.close_gap();
        }
        if let Some(loss) = self.loss.as_mut() {
            loss.tail.push(&batch.text);
            self.recycle(batch.text);
            return;
        }
        if let Err((reason, batch)) = self.try_place(batch) {
            self.open_gap(reason, &batch.text);
            self.recycle(batch.text);
        }
    }

    /// Output starts being lost: a new gap keeps its last bytes.
    fn open_gap(&mut self, reason: String, text: &str) {
        let mut tail = Tail::new(GAP_TAIL_BYTES);
        tail.push(text);
        self.loss_reason.clone_from(&reason);
        self.loss = Some(Loss { reason, tail });
        self.gaps += 1;
    }

    /// Whether there is room again, with margin (so that a gap is one
    /// stretch, not one per batch): memory half free with nothing spooled,
    /// or the spool half free and its last failure (a full disk) behind it.
    fn room_to_close_gap(&self) -> bool {
        let tail = self.loss.as_ref().map_or(0, |l| l.tail.bytes()) + 256;
        match self.spool.as_ref().filter(|s| !s.is_empty()) {
            None => self.memory_bytes + tail <= self.memory_limit / 2,
            Some(spool) => {
                let half = spool.disk_bytes() + tail as u64 <= self.spool_cap / 2;
                let disk = self
                    .spool_failed_at
                    .is_none_or(|at| spool.disk_bytes() <= at / 2);
                half && disk
            }
        }
    }

    /// Close the gap: its marker, then its tail, in order. If either finds
    /// no room after all, what is left opens the next gap.
    fn close_gap(&mut self) {
        let Some(mut loss) = self.loss.take() else {
            return;
        };
        self.lost_closed += loss.tail.dropped;
        let marker = Batch {
            stream: Stream::Stderr,
            text: loss_marker(&loss),
        };
        let tail = Batch {
            stream: Stream::Stdout,
            text: loss.tail.take(),
        };
        for batch in [marker, tail] {
            if batch.text.is_empty() {
                continue;
            }
            if self.loss.is_some() {
                if let Some(open) = self.loss.as_mut() {
                    open.tail.push(&batch.text);
                }
            } else if let Err((reason, batch)) = self.try_place(batch) {
                self.open_gap(reason, &batch.text);
            }
        }
    }

    /// Close the open gap into memory whatever the bound, once nothing is
    /// queued before it: the job has ended (or its backlog drained), and the
    /// gap's tail is already in memory, so this costs nothing more.
    fn force_close_gap(&mut self) {
        let Some(mut loss) = self.loss.take() else {
            return;
        };
        self.lost_closed += loss.tail.dropped;
        let epilogue = self.epilogue.take().map_or(String::new(), |b| b.text);
        for (stream, text) in [
            (Stream::Stderr, loss_marker(&loss)),
            (Stream::Stdout, loss.tail.take()),
            (Stream::Stdout, epilogue),
        ] {
            if !text.is_empty() {
                self.memory_bytes += text.len();
                self.memory.push_back(Batch { stream, text });
            }
        }
    }

    /// Append the last text of the job, which must survive whole: after an
    /// open gap rather than in its tail, where its start could fall out.
    pub fn push_end(&mut self, text: &str) {
        self.seal();
        if self.loss.is_some() {
            self.epilogue = Some(Batch {
                stream: Stream::Stdout,
                text: text.to_string(),
            });
        } else {
            self.push(Stream::Stdout, text);
            self.seal();
        }
    }

    /// Bytes of output lost so far (closed gaps and the open one).
    pub fn lost_bytes(&self) -> u64 {
        self.lost_closed + self.loss.as_ref().map_or(0, |l| l.tail.dropped)
    }

    /// Memory while under the bound and nothing is spooled (order!), else the spool.
    fn try_place(&mut self, batch: Batch) -> Result<(), (String, Batch)> {
        let spooling = self.spool.as_ref().is_some_and(|s| !s.is_empty());
        if !spooling && self.memory_bytes + batch.text.len() <= self.memory_limit {
            self.memory_bytes += batch.text.len();
            self.memory.push_back(batch);
            return Ok(());
        }
        match self.spool_push(&batch) {
            Ok(()) => Ok(()),
            Err(reason) => Err((reason, batch)),
        }
    }

    fn spool_push(&mut self, batch: &Batch) -> Result<(), String> {
        if self.spool.is_none() {
            let mut errors = Vec::new();
            for path in &self.spool_candidates {
                match Spool::create(path, self.spool_cap) {
                    Ok(spool) => {
                        self.spool = Some(spool);
                        break;
                    }
                    Err(e) => errors.push(format!("{}: {e}", path.display())),
                }
            }
            if self.spool.is_none() {
                return Err(format!(
                    "memory bound reached and no spool file could be created ({})",
                    errors.join("; ")
                ));
            }
        }
        let spool = self.spool.as_mut().ok_or("no spool")?;
        if self
            .spool_failed_at
            .is_some_and(|at| spool.disk_bytes() > at / 2)
        {
            // The disk was full a moment ago: no write per batch to learn it again.
            return Err(self.loss_reason.clone());
        }
        match spool.push(batch.stream, &batch.text) {
            Ok(()) => {
                self.spool_failed_at = None;
                Ok(())
            }
            Err(e) => {
                if e.kind() != std::io::ErrorKind::Other {
                    self.spool_failed_at = Some(spool.disk_bytes());
                }
                Err(format!(
                    "memory bound reached and writing {} failed: {e}",
                    spool.path().display()
                ))
            }
        }
    }

    /// The spool file in use, if output has spilled to disk and not all come back.
    pub fn spool_path(&self) -> Option<PathBuf> {
        self.spool
            .as_ref()
            .filter(|s| !s.is_empty())
            .map(|s| s.path().to_path_buf())
    }

    /// Remove an emptied spool file.
    pub fn release_empty_spool(&mut self) {
        if self.spool.as_ref().is_some_and(|s| s.is_empty()) {
            self.spool = None;
        }
    }

    /// Sealed batches not yet ACKed (memory and spool).
    pub fn unacked_batches(&self) -> usize {
        self.memory.len() + self.spool.as_ref().map_or(0, |s| s.len())
    }

    /// Nothing sealed, nothing open: all output is ACKed.
    pub fn is_empty(&self) -> bool {
        self.unacked_batches() == 0
            && self.open.is_none()
            && self.loss.is_none()
            && self.epilogue.is_none()
    }

    pub fn in_flight(&self) -> usize {
        self.sent
    }

    /// Bytes held in memory (sealed batches only).
    #[cfg(test)]
    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }

    fn wire_seq(&self, global: u64) -> u64 {
        global - self.wire_base
    }

    /// The wire seq the next new message would get (for `complete`).
    pub fn next_wire_seq(&self) -> u64 {
        self.wire_seq(self.front + self.unacked_batches() as u64)
    }

    /// The last wire seq ACKed under the current numbering, or -1.
    pub fn last_acked_wire_seq(&self) -> i64 {
        self.front as i64 - self.wire_base as i64 - 1
    }

    /// The next batch to send on this connection, if the window allows (at
    /// most `max_in_flight` messages, and `max_bytes` unless nothing is in
    /// flight): marks it sent and returns its wire seq.
    pub fn next_to_send(
        &mut self,
        max_in_flight: usize,
        max_bytes: usize,
    ) -> Option<(u64, &Batch)> {
        if self.sent >= max_in_flight || (self.sent > 0 && self.sent_bytes >= max_bytes) {
            return None;
        }
        if self.sent == self.memory.len() {
            // All of memory is in flight: bring the next batch back from
            // disk, or, with the spool drained, close an open gap.
            match self.spool.as_mut().map(|spool| spool.pop()) {
                Some(Ok(Some((stream, text)))) => {
                    self.memory_bytes += text.len();
                    self.memory.push_back(Batch { stream, text });
                }
                Some(Err(e)) => {
                    // The spooled rest cannot be read back: count it lost,
                    // ahead of any gap already open (it is older).
                    let bytes = self.spool.as_ref().map_or(0, |s| s.pending_bytes());
                    self.spool = None;
                    let reason = format!("reading the spool file failed: {e}");
                    self.loss_reason.clone_from(&reason);
                    self.lost_closed += bytes;
                    let text = format!(
                        "\n[sp_wrapper: {bytes} bytes of output were lost here: {reason}]\n"
                    );
                    self.memory_bytes += text.len();
                    self.memory.push_back(Batch {
                        stream: Stream::Stderr,
                        text,
                    });
                }
                Some(Ok(None)) | None => {
                    // Nothing queued and no gap open: nothing to send.
                    self.loss.as_ref()?;
                    self.force_close_gap();
                }
            }
        }
        self.fit_for_sending(self.sent);
        let global = self.front + self.sent as u64;
        self.sent_bytes += self.memory.get(self.sent).map_or(0, |b| b.text.len());
        self.sent += 1;
        let seq = self.wire_seq(global);
        self.memory.get(self.sent - 1).map(|batch| (seq, batch))
    }

    fn retire(&mut self, count: usize) -> usize {
        let mut bytes = 0;
        for _ in 0..count {
            let Some(batch) = self.memory.pop_front() else {
                break;
            };
            bytes += batch.text.len();
            let len = batch.text.len();
            self.front += 1;
            self.sent = self.sent.saturating_sub(1);
            self.sent_bytes = self.sent_bytes.saturating_sub(len);
            self.recycle(batch.text);
        }
        self.memory_bytes -= bytes;
        self.acked_bytes += bytes as u64;
        bytes
    }

    /// An `ack` for output `seq`. The server ACKs a seq only once it has every
    /// earlier one on this socket, so an ACK retires everything up to it, but
    /// never beyond what was really sent (a hostile ACK retires nothing).
    /// Returns the bytes retired.
    pub fn on_ack(&mut self, seq: i64) -> usize {
        let Ok(seq) = u64::try_from(seq) else {
            return 0;
        };
        let Some(global) = self.wire_base.checked_add(seq) else {
            return 0;
        };
        if global < self.front || global >= self.front + self.sent as u64 {
            return 0; // a duplicate ACK, or one for something not in flight
        }
        self.retire((global - self.front + 1) as usize)
    }

    /// A `nack`: the server expects wire seq `expected` next.
    pub fn on_nack(&mut self, expected: i64) -> NackOutcome {
        let Ok(expected) = u64::try_from(expected) else {
            return NackOutcome::Ignored;
        };
        let front_wire = self.wire_seq(self.front);
        if expected < front_wire {
            // The server's numbering is behind ours (it lost per-socket state
            // we did not see go): number the oldest unACKed batch `expected`.
            self.wire_base = self.front - expected;
        } else {
            let claimed = expected - front_wire;
            if claimed > self.sent as u64 {
                return NackOutcome::Ignored; // claims data we never sent
            }
            self.retire(claimed as usize);
            if self.nack_front == Some(self.front) {
                return NackOutcome::Ignored; // already resending from here
            }
        }
        self.nack_front = Some(self.front);
        self.sent = 0;
        self.sent_bytes = 0;
        NackOutcome::Resend
    }

    /// The connection dropped: whatever was in flight must be sent again.
    pub fn on_disconnect(&mut self) {
        self.sent = 0;
        self.sent_bytes = 0;
        self.nack_front = None;
    }

    /// The server's `sync_response` on a new connection: renumber from the
    /// oldest unACKed batch (see the module docs). `last_seq` is not
    /// trusted: a claim to hold more retires nothing.
    pub fn on_sync(&mut self, _last_seq: i64) {
        self.wire_base = self.front;
        self.sent = 0;
        self.sent_bytes = 0;
    }

    /// Text bytes not delivered (sealed, open, spooled, an open gap's tail).
    pub fn undelivered_bytes(&self) -> u64 {
        self.memory_bytes as u64
            + self.open_bytes() as u64
            + self.spool.as_ref().map_or(0, |s| s.pending_bytes())
            + self
                .loss
                .as_ref()
                .map_or(0, |l| (loss_marker(l).len() + l.tail.bytes()) as u64)
            + self.epilogue.as_ref().map_or(0, |b| b.text.len() as u64)
    }

    /// Everything not delivered, oldest first, one batch at a time (so the
    /// caller can stream it: memory stays bounded whatever the spool
    /// holds), for the log when delivery is abandoned. Seals the open batch
    /// and empties the outbox.
    pub fn take_undelivered(&mut self, mut each: impl FnMut(&Batch)) {
        self.seal();
        for batch in self.memory.drain(..) {
            each(&batch);
        }
        if let Some(spool) = self.spool.as_mut() {
            while let Ok(Some((stream, text))) = spool.pop() {
                each(&Batch { stream, text });
            }
        }
        // An open gap is always the newest thing.
        if let Some(mut loss) = self.loss.take() {
            self.lost_closed += loss.tail.dropped;
            each(&Batch {
                stream: Stream::Stderr,
                text: loss_marker(&loss),
            });
            each(&Batch {
                stream: Stream::Stdout,
                text: loss.tail.take(),
            });
        }
        if let Some(epilogue) = self.epilogue.take() {
            each(&epilogue);
        }
        self.memory_bytes = 0;
        self.sent = 0;
        self.sent_bytes = 0;
        self.spool = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox() -> Outbox {
        Outbox::with_batch_limit(1 << 20, Vec::new(), 10)
    }

    fn send_all(outbox: &mut Outbox, window: usize) -> Vec<(u64, String)> {
        let mut sent = Vec::new();
        while let Some((seq, batch)) = outbox.next_to_send(window, usize::MAX) {
            sent.push((seq, batch.text.clone()));
        }
        sent
    }

    #[test]
    fn batches_split_at_the_limit_on_char_boundaries() {
        let mut ob = outbox();
        ob.push(Stream::Stdout, "aaaaaaaaé€😀bbbb");
        ob.seal();
        let texts: Vec<String> = send_all(&mut ob, 100).into_iter().map(|(_, t)| t).collect();
        assert_eq!(texts.concat(), "aaaaaaaaé€😀bbbb");
        assert!(texts.iter().all(|t| t.len() <= 10), "{texts:?}");
    }

    /// Sealed large, sent small: a batch over the send limit goes out in
    /// pieces, in order, numbered in turn, cut on character boundaries; a
    /// reconnect resends the pieces; a raised limit leaves pieces as they are.
    #[test]
    fn batches_over_the_send_limit_go_out_in_pieces() {
        let mut ob = Outbox::with_batch_limit(1 << 20, Vec::new(), 1000);
        ob.push(Stream::Stdout, &"é€😀ab".repeat(20)); // 220 bytes
        ob.seal();
        ob.push(Stream::Stderr, "next");
        ob.seal();
        ob.set_send_limit(50);
        let first = send_all(&mut ob, 3);
        assert_eq!(
            first.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert!(first.iter().all(|(_, t)| t.len() <= 50), "{first:?}");
        ob.on_disconnect();
        ob.on_sync(-1);
        ob.set_send_limit(usize::MAX);
        let again = send_all(&mut ob, 100);
        // The three pieces sent, the rest (never sent, so never cut), next.
        assert_eq!(again.len(), 5, "{again:?}");
        assert!(again[3].1.len() > 50, "{again:?}");
        let text: String = again.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(text, "é€😀ab".repeat(20) + "next");
        assert_eq!(again.last().map(|(_, t)| t.as_str()), Some("next"));
    }

    #[test]
    fn stream_change_seals_to_keep_arrival_order() {
        let mut ob = outbox();
        ob.push(Stream::Stdout, "o1");
        ob.push(Stream::Stderr, "e1");
        ob.push(Stream::Stdout, "o2");
        ob.seal();
        let sent: Vec<_> = std::iter::from_fn(|| {
            ob.next_to_send(9, usize::MAX)
                .map(|(s, b)| (s, b.stream, b.text.clone()))
        })
        .collect();
        assert_eq!(
            sent,
            vec![
                (0, Stream::Stdout, "o1".into()),
                (1, Stream::Stderr, "e1".into()),
                (2, Stream::Stdout, "o2".into())
            ]
        );
    }

    #[test]
    fn window_bounds_messages_in_flight_and_acks_retire_cumulatively() {
        let mut ob = outbox();
        for i in 0..6 {
            ob.push(Stream::Stdout, &format!("m{i}"));
            ob.seal();
        }
        assert_eq!(send_all(&mut ob, 3).len(), 3);
        assert_eq!(ob.next_to_send(3, usize::MAX), None);
        assert_eq!(ob.on_ack(1), 4); // retires m0 and m1
        assert_eq!(ob.in_flight(), 1);
        assert_eq!(
            send_all(&mut ob, 3)
                .iter()
                .map(|(s, _)| *s)
                .collect::<Vec<_>>(),
            vec![3, 4]
        );
        ob.on_ack(4);
        assert_eq!(send_all(&mut ob, 3), vec![(5, "m5".into())]);
        ob.on_ack(5);
        assert!(ob.is_empty());
        assert_eq!(ob.next_wire_seq(), 6);
    }

    #[test]
    fn bytes_in_flight_are_bounded_but_one_message_always_goes() {
        let mut ob = outbox();
        for text in ["aaaaaaaa", "bbbbbbbb", "cccccccc"] {
            ob.push(Stream::Stdout, text);
            ob.seal();
        }
        assert_eq!(
            ob.next_to_send(8, 4).map(|(s, _)| s),
            Some(0),
            "one message even over the byte budget"
        );
        assert_eq!(ob.next_to_send(8, 4), None);
        ob.on_ack(0);
        let sent: Vec<u64> =
            std::iter::from_fn(|| ob.next_to_send(8, 16).map(|(s, _)| s)).collect();
        assert_eq!(sent, [1, 2]);
        ob.on_disconnect();
        assert_eq!(
            ob.next_to_send(8, 8).map(|(s, _)| s),
            Some(1),
            "budget resets with the connection"
        );
    }

    #[test]
    fn hostile_acks_retire_nothing_unsent() {
        let mut ob = outbox();
        for i in 0..3 {
            ob.push(Stream::Stdout, &format!("m{i}"));
            ob.seal();
        }
        ob.next_to_send(1, usize::MAX);
        for bogus in [-1, 1, 2, 99, i64::MAX, i64::MIN] {
            assert_eq!(ob.on_ack(bogus), 0, "{bogus}");
        }
        assert_eq!(ob.unacked_batches(), 3);
        assert_eq!(ob.on_ack(0), 2);
        assert_eq!(ob.on_ack(0), 0, "duplicate ack");
    }

    #[test]
    fn reconnect_to_a_per_socket_server_renumbers_from_zero_and_resends_unacked() {
        let mut ob = outbox();
        for i in 0..4 {
            ob.push(Stream::Stdout, &format!("m{i}"));
            ob.seal();
        }
        send_all(&mut ob, 4);
        ob.on_ack(1); // m0, m1 delivered; m2, m3 in flight when the link drops
        ob.on_disconnect();
        ob.on_sync(-1); // fresh socket: the server expects 0
        assert_eq!(
            send_all(&mut ob, 4),
            vec![(0, "m2".into()), (1, "m3".into())]
        );
        ob.on_ack(1);
        assert!(ob.is_empty());
    }

    #[test]
    fn a_sync_response_never_retires_and_always_renumbers() {
        let mut ob = outbox();
        for i in 0..4 {
            ob.push(Stream::Stdout, &format!("m{i}"));
            ob.seal();
        }
        send_all(&mut ob, 4);
        ob.on_ack(0);
        ob.on_disconnect();
        // A claim to hold m1 and m2 (no Saltpeter server makes one on a new
        // socket) retires nothing: everything unACKed is sent again from 0.
        ob.on_sync(2);
        assert_eq!(
            send_all(&mut ob, 4),
            vec![(0, "m1".into()), (1, "m2".into()), (2, "m3".into())]
        );
    }

    #[test]
    fn nack_resends_once_and_rebases_when_the_server_is_behind() {
        let mut ob = outbox();
        for i in 0..3 {
            ob.push(Stream::Stdout, &format!("m{i}"));
            ob.seal();
        }
        send_all(&mut ob, 3);
        // The server has m0 and wants 1; m2 arrived out of order.
        assert_eq!(ob.on_nack(1), NackOutcome::Resend);
        assert_eq!(
            ob.on_nack(1),
            NackOutcome::Ignored,
            "repeat for the same front"
        );
        assert_eq!(
            send_all(&mut ob, 3),
            vec![(1, "m1".into()), (2, "m2".into())]
        );
        // Nonsense is ignored.
        assert_eq!(ob.on_nack(-5), NackOutcome::Ignored);
        assert_eq!(ob.on_nack(1_000), NackOutcome::Ignored);
        // A server that forgot its state and expects 0: renumber.
        assert_eq!(ob.on_nack(0), NackOutcome::Resend);
        assert_eq!(
            send_all(&mut ob, 3),
            vec![(0, "m1".into()), (1, "m2".into())]
        );
    }

    #[test]
    fn beyond_the_memory_bound_output_spills_to_disk_in_order() {
        let dir = std::env::temp_dir().join(format!("sp_outbox_spill_{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let spool_path = dir.join("job.spool");
        let _ = std::fs::remove_file(&spool_path);
        let mut ob = Outbox::with_batch_limit(25, vec![spool_path.clone()], 10);
        let expected: String = (0..20).map(|i| format!("line{i:02}\n")).collect();
        ob.push(Stream::Stdout, &expected);
        ob.seal();
        assert!(ob.memory_bytes() <= 25);
        assert!(ob.spool_path().is_some(), "spilled");
        let mut delivered = String::new();
        loop {
            let sent = send_all(&mut ob, 2);
            if sent.is_empty() {
                break;
            }
            assert!(ob.memory_bytes() <= 25 + 2 * 10);
            for (_, text) in &sent {
                delivered.push_str(text);
            }
            ob.on_ack(sent.last().map(|(s, _)| *s as i64).unwrap_or(-1));
        }
        assert_eq!(delivered, expected);
        assert!(ob.is_empty());
        ob.release_empty_spool();
        assert!(!spool_path.exists(), "spool removed once delivered");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_memory_or_disk_the_loss_is_counted_and_marked() {
        let mut ob =
            Outbox::with_batch_limit(8, vec![PathBuf::from("/nonexistent/dir/x.spool")], 10);
        ob.push(Stream::Stdout, "12345678");
        ob.seal();
        ob.push(Stream::Stdout, "lost-data");
        ob.seal();
        ob.push(Stream::Stdout, "after");
        ob.seal();
        // Both went into the gap's tail: nothing is lost yet.
        assert_eq!(ob.lost_bytes(), 0);
        let mut all = String::new();
        ob.take_undelivered(|b| all.push_str(&b.text));
        assert!(all.starts_with("12345678"));
        assert!(all.contains("0 bytes of output were lost here"), "{all}");
        assert!(all.ends_with("lost-dataafter"), "{all}");
    }

    /// Pushes `count` sealed batches of `size` bytes numbered from `from`.
    fn push_lines(ob: &mut Outbox, from: usize, count: usize, size: usize) -> String {
        let mut all = String::new();
        for i in from..from + count {
            let line = format!("{i:0width$}\n", width = size - 1);
            ob.push(Stream::Stdout, &line);
            ob.seal();
            all.push_str(&line);
        }
        all
    }

    #[test]
    fn a_long_loss_is_one_gap_with_one_line_and_the_record_ends_with_the_last_output() {
        // 1 KiB of memory, a spool capped at 2 KiB, no server for a while:
        // 10,000 lines of 100 bytes.
        let dir = std::env::temp_dir().join(format!("sp_outbox_gap_{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let spool_path = dir.join("gap.spool");
        let _ = std::fs::remove_file(&spool_path);
        let mut ob = Outbox::with_batch_limit(1024, vec![spool_path.clone()], 200);
        ob.spool_cap = 2048;
        let written = push_lines(&mut ob, 0, 10_000, 100);
        assert!(ob.lost_bytes() > 500_000, "{}", ob.lost_bytes());
        // The server comes back: everything drains, in order.
        let mut delivered = String::new();
        loop {
            let sent = send_all(&mut ob, 4);
            if sent.is_empty() {
                break;
            }
            for (_, text) in &sent {
                delivered.push_str(text);
            }
            ob.on_ack(sent.last().map(|(s, _)| *s as i64).unwrap_or(-1));
        }
        assert!(ob.is_empty());
        assert_eq!(delivered.matches("were lost here").count(), 1, "one gap");
        assert!(delivered.starts_with(&written[..1000]));
        assert!(
            delivered.ends_with(&written[written.len() - 100_000..]),
            "the tail"
        );
        let marker = format!(
            "[sp_wrapper: {} bytes of output were lost here",
            ob.lost_bytes()
        );
        assert!(delivered.contains(&marker), "{marker}");
        // What was kept plus what was lost is all of it (less the marker line).
        let marker_line_len = delivered.len() - delivered.replace(&marker, "").len();
        assert!(marker_line_len > 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_end_pushed_during_a_gap_follows_it_whole() {
        let mut ob =
            Outbox::with_batch_limit(1000, vec![PathBuf::from("/nonexistent/x.spool")], 100);
        push_lines(&mut ob, 0, 3000, 100); // a gap far longer than its tail
        let end = format!("[the line]\n{}", "e".repeat(GAP_TAIL_BYTES));
        ob.push_end(&end);
        let mut delivered = String::new();
        while let Some((seq, batch)) = ob.next_to_send(4, usize::MAX) {
            delivered.push_str(&batch.text.clone());
            ob.on_ack(seq as i64);
        }
        assert!(ob.is_empty());
        assert!(delivered.ends_with(&end), "the end was cut");
        assert_eq!(delivered.matches("were lost here").count(), 1);
    }

    #[test]
    fn a_gap_closes_only_when_half_the_room_is_back() {
        let mut ob =
            Outbox::with_batch_limit(1000, vec![PathBuf::from("/nonexistent/x.spool")], 100);
        push_lines(&mut ob, 0, 30, 100); // 10 fit, 20 go to the gap
        let mut delivered = String::new();
        // The server ACKs one message at a time while the job goes on.
        for round in 0..40 {
            if let Some((seq, batch)) = ob.next_to_send(1, usize::MAX) {
                delivered.push_str(&batch.text.clone());
                ob.on_ack(seq as i64);
            }
            push_lines(&mut ob, 30 + round, 1, 100);
        }
        while let Some((seq, batch)) = ob.next_to_send(1, usize::MAX) {
            delivered.push_str(&batch.text.clone());
            ob.on_ack(seq as i64);
        }
        let gaps = delivered.matches("were lost here").count();
        assert!(gaps <= 3, "{gaps} gaps in {delivered}");
        assert!(delivered.ends_with(&format!("{:099}\n", 69)), "{delivered}");
    }
}
