//! The ACK-tracked outbound queue of job output. Owned by the supervisor
//! thread; a plain struct with no threads and no clock, unit-tested alone.
//!
//! Output text is appended to an open batch; a sealed batch is a future
//! `output` message. Sealed batches are numbered globally (0, 1, 2, ...) in
//! job order and stay here until the server ACKs them.
//!
//! Nothing the daemon has read dies with it: every piece of text is written
//! ahead to the spool file (`spool.rs`, a journal in the page cache) as it is
//! pushed, before it can be sent, and the journal's header says how far the
//! server has ACKed, rewritten before ACKed batches are dropped. A guardian
//! that adopts the file after the daemon's death sends exactly what follows
//! (`adopt_spool`). Memory is the fast path for sending: sealed batches stay
//! in memory up to the byte bound; beyond it they are not kept but read back
//! from the journal, where they already are, in order.
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
//! When the journal cannot be written (its cap, a full disk, no file), text
//! is held only in memory, and the journal takes text again only once none of
//! that is left unACKed (so what it holds stays whole and in order; its header
//! marks where it stops meanwhile). When a batch fits neither in memory nor
//! in the journal, output is being lost: from then on new text goes to a
//! bounded tail (`tail.rs`) until there is room again (memory or spool half
//! free), so each gap is one stretch of the output, marked by one line saying
//! how many bytes were lost there, followed by the last bytes before the gap
//! closed. At the end of the job the last gap closes once what precedes it
//! has drained, so the record ends with the job's last output.

use std::collections::VecDeque;
use std::path::PathBuf;

use crate::messages::Stream;
use crate::report::spool::{Adopted, Pos, Spool};
use crate::report::tail::Tail;

/// Most text in one `output` message (500 KiB, as the Python wrapper).
pub const MAX_BATCH_BYTES: usize = 500 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub stream: Stream,
    pub text: String,
    /// Where its text starts in the journal; `None`: held only in memory.
    at: Option<Pos>,
    /// An open batch begun while output is beyond the memory bound: its
    /// text (this many bytes) is only in the journal, `text` stays empty
    /// (no copy that would be dropped at once), and it is sealed to disk.
    disk_only: Option<usize>,
}

impl Batch {
    fn len(&self) -> usize {
        self.text.len() + self.disk_only.unwrap_or(0)
    }
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
    /// The write-ahead journal; `None` when no spool file could be created.
    journal: Option<Spool>,
    /// Why the journal did not take text (for the loss line and the log).
    journal_error: String,
    /// A write to the journal failed: new text is held only in memory.
    suspended: bool,
    /// Sealed batches in `memory` that the journal does not have.
    memory_only: usize,
    /// Sealed batches after those in `memory`, not kept in memory: the
    /// journal's `disk_text` text bytes from `disk_from`.
    disk_from: Pos,
    disk_text: u64,
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
    /// The journal's backlog when a write to it last failed (a full disk):
    /// it is tried again once that has halved, not at every batch.
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
    /// `spool_candidates`: where to create the spool file, tried in order
    /// (at once: output is written ahead from the first byte);
    /// `spool_cap`: the most backlog it may hold (`SP_SPOOL_MAX_MB`).
    pub fn new(memory_limit: usize, spool_candidates: Vec<PathBuf>, spool_cap: u64) -> Self {
        Self::build(memory_limit, &spool_candidates, MAX_BATCH_BYTES, spool_cap)
    }

    #[cfg(test)]
    pub fn with_batch_limit(
        memory_limit: usize,
        spool_candidates: Vec<PathBuf>,
        max_batch: usize,
    ) -> Self {
        Self::build(memory_limit, &spool_candidates, max_batch, u64::MAX)
    }

    fn build(memory_limit: usize, candidates: &[PathBuf], max_batch: usize, cap: u64) -> Self {
        let mut journal = None;
        let mut journal_error = String::from("there is no spool file");
        for path in candidates {
            match Spool::create(path, cap) {
                Ok(spool) => {
                    journal = Some(spool);
                    break;
                }
                Err(e) => {
                    journal_error =
                        format!("no spool file could be created ({}: {e})", path.display());
                }
            }
        }
        if journal.is_none() && !candidates.is_empty() {
            log::warn!("{journal_error}: output held in memory dies with the agent");
        }
        Outbox {
            memory: VecDeque::new(),
            memory_bytes: 0,
            memory_limit,
            journal,
            journal_error,
            suspended: false,
            memory_only: 0,
            disk_from: Pos::default(),
            disk_text: 0,
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

    /// The guardian's outbox (guardian.rs), still empty: a dead daemon's
    /// journal, whose text after the ACKed position the server does not
    /// have, then `missing` if the daemon held output after it only in
    /// memory. Later output follows, in order.
    pub fn adopt_spool(&mut self, adopted: Adopted, missing: &str) {
        self.disk_from = adopted.from;
        self.disk_text = adopted.pending;
        self.journal = Some(adopted.spool);
        self.suspended = false;
        if adopted.memory_only {
            self.push(Stream::Stdout, missing);
            self.seal();
        }
    }

    /// Whether new text is written ahead to the journal.
    fn journaling(&self) -> bool {
        self.journal.is_some() && !self.suspended
    }

    /// Write `text` ahead: its record's offset, or `None` when it is held
    /// only in memory.
    fn journal_append(&mut self, stream: Stream, text: &str) -> Option<u64> {
        if !self.journaling() {
            return None;
        }
        match self.journal.as_mut()?.append(stream, text) {
            Ok(offset) => Some(offset),
            Err(e) => {
                self.journal_failed(e);
                None
            }
        }
    }

    fn journal_failed(&mut self, e: std::io::Error) {
        if let Some(journal) = self.journal.as_mut() {
            if e.kind() != std::io::ErrorKind::Other {
                self.spool_failed_at = Some(journal.disk_bytes());
                self.journal_error = format!("writing {} failed: {e}", journal.path().display());
            } else {
                self.journal_error = e.to_string();
            }
            // Marked again: a jump may have moved the end before the write failed.
            journal.set_memory_only(true);
        }
        self.suspended = true;
    }

    /// From here on text is held only in memory; the header says where.
    fn suspend(&mut self) {
        if !self.suspended {
            self.suspended = true;
            if let Some(journal) = self.journal.as_mut() {
                journal.set_memory_only(true);
            }
        }
    }

    /// Whether the journal may be tried again after a failure: its backlog
    /// has halved since a write failed (a full disk), or none failed.
    fn journal_retry_due(&self) -> bool {
        self.journal.as_ref().is_some_and(|journal| {
            self.spool_failed_at
                .is_none_or(|at| journal.disk_bytes() <= at / 2)
        })
    }

    /// A sealed batch held only in memory joins the journal if nothing
    /// before it is missing there: no batch held only in memory unACKed
    /// and no gap open. The journal then takes text again.
    fn journal_late(&mut self, batch: &mut Batch) {
        if batch.at.is_some()
            || self.memory_only > 0
            || self.loss.is_some()
            || !self.journal_retry_due()
        {
            return;
        }
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        match journal.append(batch.stream, &batch.text) {
            Ok(offset) => {
                batch.at = Some(Pos { offset, skip: 0 });
                if self.suspended {
                    self.suspended = false;
                    self.spool_failed_at = None;
                    journal.set_memory_only(false);
                }
            }
            Err(e) => self.journal_failed(e),
        }
    }

    /// Append job output. Seals the open batch when the stream changes (so
    /// messages keep arrival order) and whenever it reaches the size limit.
    pub fn push(&mut self, stream: Stream, mut text: &str) {
        if text.is_empty() {
            return;
        }
        // A batch is wholly in the journal or wholly held in memory.
        let journaling = self.journaling();
        if self
            .open
            .as_ref()
            .is_some_and(|b| b.stream != stream || b.at.is_some() != journaling)
        {
            self.seal();
        }
        let mut at = self.journal_append(stream, text);
        if at.is_none() && self.open.as_ref().is_some_and(|b| b.at.is_some()) {
            self.seal();
        }
        let mut consumed = 0;
        while !text.is_empty() {
            if self.open.is_none() && at.is_none() && self.journaling() {
                // The journal took text again as the last batch was sealed.
                at = self.journal_append(stream, text);
                consumed = 0;
            }
            // Beyond the memory bound the batch goes to disk anyway.
            let beyond = at.is_some() && self.disk_text > 0;
            let (spare, max_batch) = (&mut self.spare, self.max_batch);
            let open = self.open.get_or_insert_with(|| Batch {
                stream,
                text: if beyond {
                    String::new()
                } else {
                    spare
                        .pop()
                        .unwrap_or_else(|| String::with_capacity(max_batch))
                },
                at: at.map(|offset| Pos {
                    offset,
                    skip: consumed,
                }),
                disk_only: beyond.then_some(0),
            });
            let room = self.max_batch - open.len();
            let mut cut = text.len().min(room);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            match open.disk_only.as_mut() {
                Some(bytes) => *bytes += cut,
                None => open.text.push_str(&text[..cut]),
            }
            text = &text[cut..];
            consumed += cut as u64;
            if open.len() + 3 >= self.max_batch {
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
        self.split(index, cut);
    }

    /// The batch just sent (`next_to_send`) went out with only its first
    /// `carried` bytes (a character boundary; its frame would have been too
    /// long): the rest becomes the next batch, not yet sent. Only the first
    /// sending under a numbering cuts: what is sent again fits.
    pub fn cut_last_sent(&mut self, carried: usize) {
        let Some(index) = self.sent.checked_sub(1) else {
            return;
        };
        let whole = self.memory.get(index).map_or(0, |b| b.text.len());
        if carried == 0 || carried >= whole {
            return;
        }
        self.split(index, carried);
        self.sent_bytes = self.sent_bytes.saturating_sub(whole - carried);
    }

    /// `memory[index]` becomes its first `cut` bytes, and the rest the batch
    /// after it.
    fn split(&mut self, index: usize, cut: usize) {
        let Some(batch) = self.memory.get_mut(index) else {
            return;
        };
        let rest = Batch {
            stream: batch.stream,
            text: batch.text.split_off(cut),
            at: batch.at.map(|at| Pos {
                offset: at.offset,
                skip: at.skip + cut as u64,
            }),
            disk_only: None,
        };
        if rest.at.is_none() {
            self.memory_only += 1;
        }
        self.memory.insert(index + 1, rest);
    }

    pub fn open_bytes(&self) -> usize {
        self.open.as_ref().map_or(0, Batch::len)
    }

    /// Close the open batch, making it sendable.
    pub fn seal(&mut self) {
        if let Some(mut batch) = self.open.take() {
            if let (Some(bytes @ 1..), Some(at)) = (batch.disk_only, batch.at) {
                // Already where it goes: after everything before it.
                if self.disk_text == 0 {
                    self.disk_from = at;
                }
                self.disk_text += bytes as u64;
            } else if batch.text.is_empty() {
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
        self.admit_sealed(batch);
    }

    /// A sealed batch, no gap open: memory, else the journal, else a new gap.
    fn admit_sealed(&mut self, mut batch: Batch) {
        self.journal_late(&mut batch);
        if batch.at.is_none() {
            // Until it is ACKed, the journal must not take what follows it.
            self.suspend();
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
    /// stretch, not one per batch): memory half free with nothing beyond
    /// it on disk, or the journal half free and its last failure behind it.
    fn room_to_close_gap(&self) -> bool {
        let tail = self.loss.as_ref().map_or(0, |l| l.tail.bytes()) + 256;
        if self.disk_text == 0 {
            return self.memory_bytes + tail <= self.memory_limit / 2;
        }
        self.journal.as_ref().is_some_and(|journal| {
            journal.disk_bytes() + tail as u64 <= journal.cap_bytes() / 2
                && self.journal_retry_due()
                && self.memory_only == 0
        })
    }

    /// Close the gap: its marker, then its tail, in order. If either finds
    /// no room after all, what is left opens the next gap.
    fn close_gap(&mut self) {
        let Some(mut loss) = self.loss.take() else {
            return;
        };
        self.lost_closed += loss.tail.dropped;
        let marker = loss_marker(&loss);
        let tail = loss.tail.take();
        for (stream, text) in [(Stream::Stderr, marker), (Stream::Stdout, tail)] {
            if text.is_empty() {
                continue;
            }
            if let Some(open) = self.loss.as_mut() {
                open.tail.push(&text);
            } else {
                self.admit_sealed(Batch {
                    stream,
                    text,
                    at: None,
                    disk_only: None,
                });
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
                let mut batch = Batch {
                    stream,
                    text,
                    at: None,
                    disk_only: None,
                };
                self.journal_late(&mut batch);
                if batch.at.is_none() {
                    self.suspend();
                    self.memory_only += 1;
                }
                self.memory_bytes += batch.text.len();
                self.memory.push_back(batch);
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
                at: None,
                disk_only: None,
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

    /// Memory while under the bound and nothing is beyond it on disk
    /// (order!); else, if the journal has it, leave it there.
    fn try_place(&mut self, batch: Batch) -> Result<(), (String, Batch)> {
        if self.disk_text == 0 && self.memory_bytes + batch.text.len() <= self.memory_limit {
            self.memory_bytes += batch.text.len();
            if batch.at.is_none() {
                self.memory_only += 1;
            }
            self.memory.push_back(batch);
            return Ok(());
        }
        let Some(at) = batch.at else {
            let reason = format!("memory bound reached and {}", self.journal_error);
            return Err((reason, batch));
        };
        if self.disk_text == 0 {
            self.disk_from = at;
        }
        self.disk_text += batch.text.len() as u64;
        self.recycle(batch.text);
        Ok(())
    }

    /// The next batch beyond memory, read back from the journal into memory.
    fn read_back(&mut self) {
        let max = self.max_batch.min(self.disk_text as usize);
        let buffer = self.spare.pop().unwrap_or_default();
        let read = match self.journal.as_ref() {
            Some(journal) => journal.read(self.disk_from, max, buffer),
            None => Err(std::io::Error::other("no spool file")),
        };
        match read {
            Ok((stream, text, next)) if !text.is_empty() => {
                let at = Some(self.disk_from);
                self.disk_from = next;
                self.disk_text -= (text.len() as u64).min(self.disk_text);
                self.memory_bytes += text.len();
                self.memory.push_back(Batch {
                    stream,
                    text,
                    at,
                    disk_only: None,
                });
            }
            failed => {
                // The rest on disk cannot be read back: count it lost, ahead
                // of any gap already open (it is older). The journal is no
                // longer whole: drop it; text is held only in memory now.
                let why = failed
                    .err()
                    .map_or("it ended early".into(), |e| e.to_string());
                let bytes = std::mem::take(&mut self.disk_text);
                let reason = format!("reading the spool file failed: {why}");
                self.journal = None;
                self.journal_error.clone_from(&reason);
                self.suspended = true;
                self.loss_reason.clone_from(&reason);
                self.lost_closed += bytes;
                let text =
                    format!("\n[sp_wrapper: {bytes} bytes of output were lost here: {reason}]\n");
                self.memory_bytes += text.len();
                self.memory_only += 1;
                self.memory.push_back(Batch {
                    stream: Stream::Stderr,
                    text,
                    at: None,
                    disk_only: None,
                });
            }
        }
    }

    /// The spool file, once output beyond the memory bound is kept only there.
    pub fn spool_path(&self) -> Option<PathBuf> {
        let journal = self.journal.as_ref().filter(|_| self.disk_text > 0)?;
        Some(journal.path().to_path_buf())
    }

    /// Sealed batches not yet ACKed (those beyond memory count as one).
    pub fn unacked_batches(&self) -> usize {
        self.memory.len() + usize::from(self.disk_text > 0)
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
            // disk, or, with nothing on disk, close an open gap.
            if self.disk_text > 0 {
                self.read_back();
            } else {
                // Nothing queued and no gap open: nothing to send.
                self.loss.as_ref()?;
                self.force_close_gap();
            }
        }
        self.fit_for_sending(self.sent);
        let global = self.front + self.sent as u64;
        self.sent_bytes += self.memory.get(self.sent).map_or(0, |b| b.text.len());
        self.sent += 1;
        let seq = self.wire_seq(global);
        self.memory.get(self.sent - 1).map(|batch| (seq, batch))
    }

    /// Where the oldest text not ACKed starts in the journal once the first
    /// `count` batches in memory are: `None` when nothing is left.
    /// Text held only in memory starts at the journal's end (where the
    /// journal stopped taking text).
    fn unacked_from(&self, count: usize) -> Option<Pos> {
        let end = self.journal.as_ref().map_or(Pos::default(), Spool::end);
        if let Some(batch) = self.memory.get(count) {
            return Some(batch.at.unwrap_or(end));
        }
        if self.disk_text > 0 {
            return Some(self.disk_from);
        }
        if self.loss.is_some() || self.epilogue.is_some() {
            return Some(end);
        }
        let open = self.open.as_ref().filter(|b| b.len() > 0)?;
        Some(open.at.unwrap_or(end))
    }

    fn retire(&mut self, count: usize) -> usize {
        // Tell the journal first: a death from here on must not send these
        // again. Everything ACKed: it is cut back, and whole again.
        let next = self.unacked_from(count);
        if let Some(journal) = self.journal.as_mut() {
            match next {
                Some(pos) => journal.set_acked(pos),
                None => {
                    journal.reset();
                    self.suspended = false;
                    self.spool_failed_at = None;
                }
            }
        }
        let mut bytes = 0;
        for _ in 0..count {
            let Some(batch) = self.memory.pop_front() else {
                break;
            };
            if batch.at.is_none() {
                self.memory_only = self.memory_only.saturating_sub(1);
            }
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
            + self.disk_text
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
        if let Some(journal) = self.journal.as_ref() {
            let mut buffer = String::new();
            while self.disk_text > 0 {
                let max = self.max_batch.min(self.disk_text as usize);
                let Ok((stream, text, next)) = journal.read(self.disk_from, max, buffer) else {
                    break;
                };
                if text.is_empty() {
                    break;
                }
                self.disk_from = next;
                self.disk_text -= (text.len() as u64).min(self.disk_text);
                let batch = Batch {
                    stream,
                    text,
                    at: None,
                    disk_only: None,
                };
                each(&batch);
                buffer = batch.text;
            }
        }
        // An open gap is always the newest thing.
        if let Some(mut loss) = self.loss.take() {
            self.lost_closed += loss.tail.dropped;
            each(&Batch {
                stream: Stream::Stderr,
                text: loss_marker(&loss),
                at: None,
                disk_only: None,
            });
            each(&Batch {
                stream: Stream::Stdout,
                text: loss.tail.take(),
                at: None,
                disk_only: None,
            });
        }
        if let Some(epilogue) = self.epilogue.take() {
            each(&epilogue);
        }
        self.memory_bytes = 0;
        self.sent = 0;
        self.sent_bytes = 0;
        self.disk_text = 0;
        self.memory_only = 0;
        // What it held is in the log now.
        self.journal = None;
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

    fn temp_spool(name: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("sp_outbox_{name}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("job.spool");
        (dir, path)
    }

    /// Sends and ACKs everything, `window` messages at a time: the text.
    fn drain(ob: &mut Outbox, window: usize) -> String {
        let mut delivered = String::new();
        loop {
            let sent = send_all(ob, window);
            if sent.is_empty() {
                return delivered;
            }
            for (_, text) in &sent {
                delivered.push_str(text);
            }
            ob.on_ack(sent.last().map(|(s, _)| *s as i64).unwrap_or(-1));
        }
    }

    #[test]
    fn beyond_the_memory_bound_output_is_read_back_from_the_journal_in_order() {
        let (dir, spool_path) = temp_spool("spill");
        let mut ob = Outbox::with_batch_limit(25, vec![spool_path.clone()], 10);
        assert!(spool_path.exists(), "created at the start");
        let expected: String = (0..20).map(|i| format!("line{i:02}\n")).collect();
        ob.push(Stream::Stdout, &expected);
        ob.seal();
        assert!(ob.memory_bytes() <= 25);
        assert_eq!(ob.spool_path(), Some(spool_path.clone()), "beyond memory");
        let mut delivered = String::new();
        loop {
            let sent = send_all(&mut ob, 2);
            if sent.is_empty() {
                break;
            }
            assert!(ob.memory_bytes() <= 25 + 2 * 10);
            assert!(sent.iter().all(|(_, t)| t.len() <= 10), "{sent:?}");
            for (_, text) in &sent {
                delivered.push_str(text);
            }
            ob.on_ack(sent.last().map(|(s, _)| *s as i64).unwrap_or(-1));
            // At every ACK the journal holds exactly the rest.
            let (rest, missing) = crate::report::spool::unacked_text(&spool_path);
            assert!(!missing);
            assert_eq!(format!("{delivered}{rest}"), expected);
        }
        assert_eq!(delivered, expected);
        assert!(ob.is_empty());
        let len = std::fs::metadata(&spool_path).expect("kept").len();
        assert_eq!(len, 33, "cut back to its header once all is ACKed");
        drop(ob);
        assert!(!spool_path.exists(), "removed at the end");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The header's ACKed position follows ACKs exactly, also when a
    /// message was cut to the link's size (part of a batch ACKed) and
    /// across a reconnect's renumbering and a NACK.
    #[test]
    fn the_journal_says_exactly_what_the_server_has_not_acked() {
        let (dir, spool_path) = temp_spool("acked");
        let mut ob = Outbox::with_batch_limit(1 << 20, vec![spool_path.clone()], 1000);
        let mut written = String::new();
        let mut acked = String::new();
        let check = |written: &str, acked: &str| {
            let (rest, missing) = crate::report::spool::unacked_text(&spool_path);
            assert!(!missing);
            assert_eq!(format!("{acked}{rest}"), written, "acked {acked:?}");
        };
        for (i, stream) in [Stream::Stdout, Stream::Stderr, Stream::Stdout]
            .into_iter()
            .enumerate()
        {
            let text = format!("{i}:{}\n", "é€😀ab".repeat(10));
            ob.push(stream, &text);
            written.push_str(&text);
        }
        check(&written, &acked); // the open batch is in the journal already
        ob.seal();
        ob.set_send_limit(30);
        let first = send_all(&mut ob, 2);
        ob.on_ack(first[0].0 as i64);
        acked.push_str(&first[0].1);
        check(&written, &acked);
        ob.on_disconnect();
        ob.on_sync(-1);
        let again = send_all(&mut ob, 3);
        assert_eq!(again[0].1, first[1].1, "resent after the reconnect");
        // The server has the first of them and NACKs the second.
        assert_eq!(ob.on_nack(1), NackOutcome::Resend);
        acked.push_str(&again[0].1);
        check(&written, &acked);
        ob.set_send_limit(usize::MAX);
        acked.push_str(&drain(&mut ob, 4));
        assert_eq!(acked, written);
        check(&written, &acked);
        drop(ob);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A message whose frame would be too long (escapes) goes out with the
    /// start of its batch only (`cut_last_sent`): the rest is the next
    /// message, the journal says exactly what the server lacks after the
    /// first's ACK, and after a reconnect the rest goes again as it was.
    #[test]
    fn a_batch_cut_as_it_is_sent_goes_out_whole_in_order() {
        let (dir, spool_path) = temp_spool("cut");
        let mut ob = Outbox::with_batch_limit(1 << 20, vec![spool_path.clone()], 1000);
        let check = |acked: &str, written: &str| {
            let (rest, missing) = crate::report::spool::unacked_text(&spool_path);
            assert!(!missing);
            assert_eq!(format!("{acked}{rest}"), written, "acked {acked:?}");
        };
        let written = format!("{}{}", "é".repeat(30), "\0".repeat(40));
        ob.push(Stream::Stdout, &written);
        ob.seal();
        let (seq, batch) = ob.next_to_send(8, usize::MAX).expect("a batch");
        assert_eq!((seq, batch.text.len()), (0, 100));
        ob.cut_last_sent(24);
        let (seq, batch) = ob.next_to_send(8, usize::MAX).expect("the rest");
        assert_eq!((seq, batch.text.as_str()), (1, &written[24..]));
        assert!(ob.next_to_send(8, usize::MAX).is_none());
        assert_eq!(ob.on_ack(0), 24);
        check(&written[..24], &written);
        ob.on_disconnect();
        ob.on_sync(-1);
        let (seq, batch) = ob.next_to_send(8, usize::MAX).expect("sent again");
        assert_eq!((seq, batch.text.as_str()), (0, &written[24..]));
        assert_eq!(ob.on_ack(0), 76);
        assert!(ob.is_empty());
        drop(ob);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A full spool (its cap here): output is held only in memory, the
    /// journal says from where, and takes text again, whole, once none of
    /// that is left unACKed.
    #[test]
    fn past_the_spool_cap_output_is_held_in_memory_and_the_journal_says_so() {
        let (dir, spool_path) = temp_spool("cap");
        let mut ob = Outbox::build(1 << 20, std::slice::from_ref(&spool_path), 100, 300);
        let lines = push_lines(&mut ob, 0, 5, 100);
        let (rest, missing) = crate::report::spool::unacked_text(&spool_path);
        assert!(missing, "the header says output is held only in memory");
        assert!(
            lines.starts_with(&rest) && rest.len() < lines.len(),
            "{rest}"
        );
        let delivered = drain(&mut ob, 8);
        assert_eq!(delivered, lines, "nothing was lost: memory had room");
        assert_eq!(
            crate::report::spool::unacked_text(&spool_path),
            (String::new(), false)
        );
        // Whole again: the next output is written ahead.
        let more = push_lines(&mut ob, 5, 2, 100);
        assert_eq!(
            crate::report::spool::unacked_text(&spool_path),
            (more, false)
        );
        drop(ob);
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
        let (dir, spool_path) = temp_spool("gap");
        let mut ob = Outbox::build(1024, &[spool_path], 200, 2048);
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
