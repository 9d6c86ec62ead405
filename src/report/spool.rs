//! The spool: a write-ahead journal of the job's output on disk, so that
//! nothing the daemon has read dies with it. Owned by the `Outbox`
//! (supervisor thread); its guardian adopts it when the daemon dies.
//!
//! Every piece of text the outbox admits (job output, our markers, the end
//! text past `SP_OUTPUT_MAX_MB`) is appended as a record before it can be
//! sent, to the page cache (no fsync: a process death keeps the page cache;
//! only a machine crash loses it, and with it the job). Memory stays the
//! fast path for sending; batches beyond the memory bound (`SP_BUFFER_MAX_MB`)
//! are not kept in memory but read back from here.
//!
//! The file starts with a 32-byte header: `SPSPOOL3`, then, as u64 LE, the
//! ACKed position (the offset of the record holding the first byte the
//! server has not ACKed, and how many text bytes from that record's start
//! are ACKed: a message cut to the link's size ACKs part of a record), and
//! the offset from which output was held only in memory (0: none; set when
//! a write fails, cleared when the journal is whole again). The outbox
//! rewrites the ACKed position before it drops ACKed batches from memory.
//!
//! Records follow: `[0 stdout | 1 stderr][len: u32 LE][text]`, `[2][offset:
//! u64 LE]` (a jump: the next record is at that offset) and `[3]` (the end).
//! At the end of the file a record and the end mark after it are one write
//! (cut short, the file's size ends it). Over older records (space used
//! again), its body and the end mark after it are written first, then its
//! kind byte over the previous end mark: a reader sees it whole or not at
//! all, whenever the writer dies. The file is created at the start
//! (`O_EXCL|O_NOFOLLOW`, mode 0600: job output can hold secrets) and removed
//! when dropped.
//!
//! ACKed space is used again: once the ACKed space at the start of the file
//! is twice the unACKed backlog, the writer jumps back there, and when it
//! would reach unACKed records it jumps past the end of the file. Writing
//! over pages already in the page cache costs little more than the copy;
//! appending and punching out costs as much again as the rest of the agent's
//! work. Beyond the first `REUSED` bytes, ACKed space is punched out
//! (`FALLOC_FL_PUNCH_HOLE`, whole 1 MiB steps; never where a later segment
//! has records: the writer may be there again), and the file is cut back to
//! its header whenever everything is ACKed. So it holds about the unACKed
//! backlog plus at most `REUSED`, and the cap (`SP_SPOOL_MAX_MB`) counts the
//! backlog.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::messages::Stream;

const MAGIC: &[u8; 8] = b"SPSPOOL3";
const HEADER: u64 = 32;
const RECORD_HEADER: u64 = 5;
const JUMP: u8 = 2;
const END: u8 = 3;
/// A jump record; this much is always left free after the last record.
const JUMP_RECORD: u64 = 9;
/// ACKed space below this offset is written over again, never punched out.
#[cfg(not(test))]
const REUSED: u64 = 16 << 20;
/// ACKed space is returned in steps of this much (fewer syscalls).
#[cfg(not(test))]
const PUNCH_STEP: u64 = 1 << 20;
/// ACKed space at the start beyond twice the backlog before the writer
/// jumps back there.
#[cfg(not(test))]
const WRAP_SLACK: u64 = 1 << 20;
// Small, so that the tests jump and punch often.
#[cfg(test)]
const REUSED: u64 = 4096;
#[cfg(test)]
const PUNCH_STEP: u64 = 4096;
#[cfg(test)]
const WRAP_SLACK: u64 = 64;
/// Jumps a reader follows in one go: a file with more is not ours.
const MAX_JUMPS: usize = 64;

/// A place in the journal's text: `skip` text bytes after the start of the
/// record at `offset` (counting on into the records that follow).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    pub offset: u64,
    pub skip: u64,
}

pub struct Spool {
    file: File,
    path: PathBuf,
    /// Where the next record's kind byte goes (an end mark, or the file's end).
    write_pos: u64,
    /// Past every byte ever written: where a jump forward goes.
    file_end: u64,
    /// Where the first text not ACKed starts (as the header says).
    acked: Pos,
    /// The jumps between the ACKed position and `write_pos`, in order:
    /// (where the jump record is, where it goes).
    jumps: Vec<(u64, u64)>,
    /// Output from this offset on is held only in memory (0: none).
    memory_only_from: u64,
    /// In the segment the ACKed position is in, everything before this
    /// offset (from `REUSED` on) has been punched out.
    punched: u64,
    /// The filesystem refused to punch holes: space comes back only when empty.
    punch_unsupported: bool,
    /// Most bytes of backlog the file may hold (`SP_SPOOL_MAX_MB`).
    cap: u64,
}

/// A dead daemon's journal as its guardian finds it (`Spool::adopt`).
pub struct Adopted {
    pub spool: Spool,
    /// Where the text the server has not ACKed starts, and how much there is.
    pub from: Pos,
    pub pending: u64,
    /// The daemon held output after the last record only in memory.
    pub memory_only: bool,
}

/// One record as read: its kind and the number after it (a length, or a
/// jump's offset); `None` at an end mark or the file's end.
fn record_at(file: &File, offset: u64) -> io::Result<Option<(u8, u64)>> {
    let mut bytes = [0u8; JUMP_RECORD as usize];
    let mut got = 0;
    while got < bytes.len() {
        match file.read_at(&mut bytes[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let number = |len: usize| {
        let mut le = [0u8; 8];
        le[..len].copy_from_slice(&bytes[1..=len]);
        u64::from_le_bytes(le)
    };
    match bytes[0] {
        _ if got == 0 => Ok(None),
        END => Ok(None),
        JUMP if got == JUMP_RECORD as usize => Ok(Some((JUMP, number(8)))),
        kind @ (0 | 1) if got >= RECORD_HEADER as usize => Ok(Some((kind, number(4)))),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "not a record")),
    }
}

impl Spool {
    /// Create a new spool file at `path`, which must not exist, holding at
    /// most `cap` bytes of backlog.
    pub fn create(path: &Path, cap: u64) -> io::Result<Spool> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        let spool = Spool {
            file,
            path: path.to_path_buf(),
            write_pos: HEADER,
            file_end: HEADER + 1,
            acked: Pos {
                offset: HEADER,
                skip: 0,
            },
            jumps: Vec::new(),
            memory_only_from: 0,
            punched: HEADER,
            punch_unsupported: false,
            cap,
        };
        // The end mark first: a hole reads as a record of stdout.
        let written = spool
            .file
            .write_all_at(&[END], HEADER)
            .and_then(|()| spool.write_header());
        if let Err(e) = written {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Ok(spool)
    }

    /// Take over the journal of a daemon that died, open for reading and
    /// writing as `file` (the caller checked it is ours): the text after
    /// what the server ACKed, to be sent as it would have been, and room to
    /// append after it. A record longer than the file is kept as far as it
    /// goes and ends the journal. `None` when the file is not a spool.
    pub fn adopt(file: File, path: &Path) -> Option<Adopted> {
        let mut header = [0u8; HEADER as usize];
        file.read_exact_at(&mut header, 0).ok()?;
        if &header[..8] != MAGIC {
            return None;
        }
        let field = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&header[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        let size = file.metadata().ok()?.len();
        // Past the end (the daemon was cutting the file back): nothing.
        let from = Pos {
            offset: field(8).clamp(HEADER, size.max(HEADER)),
            skip: field(16),
        };
        let memory_only_from = field(24);
        let (mut pos, mut text) = (from.offset, 0u64);
        let mut jumps = Vec::new();
        while let Ok(Some((kind, number))) = record_at(&file, pos) {
            if kind == JUMP {
                if jumps.len() >= MAX_JUMPS || number < HEADER {
                    break;
                }
                jumps.push((pos, number));
                pos = number;
                continue;
            }
            let available = number.min(size.saturating_sub(pos + RECORD_HEADER));
            if available < number {
                // Cut short: keep its text, as a record of the length there.
                let mut len = [0u8; 4];
                len.copy_from_slice(&(available as u32).to_le_bytes()[..4]);
                file.write_all_at(&len, pos + 1).ok()?;
                text += available;
                pos += RECORD_HEADER + available;
                let _ = file.write_all_at(&[END], pos);
                break;
            }
            text += available;
            pos += RECORD_HEADER + available;
        }
        // The daemon wrote again at that offset only once nothing it held
        // only in memory was left unACKed.
        let memory_only = memory_only_from != 0 && memory_only_from == pos;
        let spool = Spool {
            file,
            path: path.to_path_buf(),
            write_pos: pos,
            file_end: size.max(pos + 1),
            acked: from,
            jumps,
            memory_only_from: 0,
            punched: from.offset,
            punch_unsupported: false,
            cap: u64::MAX,
        };
        Some(Adopted {
            spool,
            from,
            pending: text.saturating_sub(from.skip),
            memory_only,
        })
    }

    fn write_header(&self) -> io::Result<()> {
        let mut header = [0u8; HEADER as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&self.acked.offset.to_le_bytes());
        header[16..24].copy_from_slice(&self.acked.skip.to_le_bytes());
        header[24..].copy_from_slice(&self.memory_only_from.to_le_bytes());
        self.file.write_all_at(&header, 0)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the next record goes.
    pub fn end(&self) -> Pos {
        Pos {
            offset: self.write_pos,
            skip: 0,
        }
    }

    /// Bytes the unACKed records take, as the cap counts them.
    pub fn disk_bytes(&self) -> u64 {
        let mut start = self.acked.offset;
        let mut total = 0;
        for &(at, target) in &self.jumps {
            total += (at + JUMP_RECORD).saturating_sub(start);
            start = target;
        }
        total + self.write_pos.saturating_sub(start)
    }

    /// Whether a record of `len` text bytes would stay under the cap.
    pub fn has_room(&self, len: usize) -> bool {
        self.disk_bytes() + RECORD_HEADER + len as u64 <= self.cap
    }

    pub fn cap_bytes(&self) -> u64 {
        self.cap
    }

    /// Append a record. Returns its offset.
    pub fn append(&mut self, stream: Stream, text: &str) -> io::Result<u64> {
        let len = u32::try_from(text.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
        if !self.has_room(text.len()) {
            return Err(io::Error::other(format!(
                "the spool cap (SP_SPOOL_MAX_MB, {} MiB) is reached",
                self.cap >> 20
            )));
        }
        let size = RECORD_HEADER + u64::from(len);
        self.make_room(size + JUMP_RECORD)?;
        let at = self.write_pos;
        let kind = [stream.index() as u8];
        let len = len.to_le_bytes();
        if self.file_end <= at + 1 {
            // At the end of the file: one write. Cut short by a death, it
            // ends the file (a reader takes what is there of it); failed
            // (a full disk), it is hidden and cut off again.
            let parts: [&[u8]; 4] = [&kind, &len, text.as_bytes(), &[END]];
            if let Err(e) = write_at(&self.file, &parts, at) {
                let _ = self.file.write_all_at(&[END], at);
                let _ = self.file.set_len(at + 1);
                return Err(e);
            }
        } else {
            // Over older records: the body and the next end mark, then the
            // kind over this end mark, so that it is seen whole or not at all.
            write_at(&self.file, &[&[], &len, text.as_bytes(), &[END]], at + 1)?;
            self.file.write_all_at(&kind, at)?;
        }
        self.write_pos = at + size;
        self.file_end = self.file_end.max(self.write_pos + 1);
        Ok(at)
    }

    /// Where the writer must stop: the start of the nearest unACKed record
    /// ahead of it in the file (`None`: nothing is ahead).
    fn limit(&self) -> Option<u64> {
        let mut limit = None;
        for start in [self.acked.offset]
            .into_iter()
            .chain(self.jumps.iter().map(|j| j.1))
        {
            if start > self.write_pos && limit.is_none_or(|l| start < l) {
                limit = Some(start);
            }
        }
        limit
    }

    /// Jump so that `need` bytes fit at `write_pos`: back to the start when
    /// the ACKed space there is twice the backlog (the writer then stays
    /// behind the ACKs), past the file's end when unACKed records are ahead.
    fn make_room(&mut self, need: u64) -> io::Result<()> {
        let backlog = self.write_pos - self.acked.offset.min(self.write_pos);
        let free_at_start = self.acked.offset.saturating_sub(HEADER);
        if self.jumps.is_empty()
            && self.acked.offset <= self.write_pos
            && free_at_start >= 2 * backlog + WRAP_SLACK + need
        {
            return self.jump(HEADER);
        }
        if self
            .limit()
            .is_some_and(|limit| self.write_pos + need > limit)
        {
            return self.jump(self.file_end.max(self.write_pos + JUMP_RECORD));
        }
        Ok(())
    }

    /// A jump at `write_pos` to `target`: the end mark there first, then
    /// the jump's offset, then its kind (seen whole or not at all).
    fn jump(&mut self, target: u64) -> io::Result<()> {
        self.file.write_all_at(&[END], target)?;
        self.file
            .write_all_at(&target.to_le_bytes(), self.write_pos + 1)?;
        self.file.write_all_at(&[JUMP], self.write_pos)?;
        self.jumps.push((self.write_pos, target));
        self.file_end = self.file_end.max(self.write_pos + JUMP_RECORD);
        self.write_pos = target;
        self.file_end = self.file_end.max(target + 1);
        Ok(())
    }

    /// Read back, from `from`, text of one stream: at most `max` bytes (cut
    /// on a character boundary), never more than one stream's, into
    /// `buffer` (emptied first; a recycled one spares fresh allocations).
    /// Returns it and where the text after it starts.
    pub fn read(&self, from: Pos, max: usize, buffer: String) -> io::Result<(Stream, String, Pos)> {
        let mut pos = from;
        let mut bytes = buffer.into_bytes();
        bytes.clear();
        bytes.reserve(max);
        let mut stream = None;
        let mut jumps = 0;
        while bytes.len() < max {
            let Some((kind, number)) = record_at(&self.file, pos.offset)? else {
                break;
            };
            if kind == JUMP {
                jumps += 1;
                if jumps > MAX_JUMPS {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "jumps in a loop",
                    ));
                }
                pos.offset = number;
                continue;
            }
            let (len, next) = (number, pos.offset + RECORD_HEADER + number);
            if pos.skip >= len {
                pos = Pos {
                    offset: next,
                    skip: pos.skip - len,
                };
                continue;
            }
            let this = if kind == 1 {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            if stream.is_some_and(|s| s != this) {
                break;
            }
            stream = Some(this);
            let n = (len - pos.skip).min((max - bytes.len()) as u64) as usize;
            read_onto(
                &self.file,
                &mut bytes,
                n,
                pos.offset + RECORD_HEADER + pos.skip,
            )?;
            pos.skip += n as u64;
            if pos.skip == len {
                pos = Pos {
                    offset: next,
                    skip: 0,
                };
            }
        }
        let stream = stream.unwrap_or(Stream::Stdout);
        let e = match String::from_utf8(bytes) {
            Ok(text) => return Ok((stream, text, pos)),
            Err(e) => e,
        };
        // Cut at `max` inside a character (never at a record's end): the
        // rest goes with the next read.
        let error = e.utf8_error();
        let mut bytes = e.into_bytes();
        if error.error_len().is_none() {
            let rest = (bytes.len() - error.valid_up_to()) as u64;
            bytes.truncate(error.valid_up_to());
            pos.skip = pos.skip.saturating_sub(rest);
        }
        // Only whole `String`s are written, so this is UTF-8 unless the disk lied.
        let text = String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        Ok((stream, text, pos))
    }

    /// The server has ACKed everything before `pos`: say so in the header
    /// (before the caller drops what it held), then give back the space.
    pub fn set_acked(&mut self, pos: Pos) {
        if pos == self.acked {
            return;
        }
        // The segments the ACKs have left behind (jumped out of).
        let mut passed = 0;
        let mut start = self.acked.offset;
        for &(at, target) in &self.jumps {
            if (start..=at).contains(&pos.offset) {
                break;
            }
            passed += 1;
            start = target;
        }
        self.acked = pos;
        let mut field = [0u8; 16];
        field[..8].copy_from_slice(&pos.offset.to_le_bytes());
        field[8..].copy_from_slice(&pos.skip.to_le_bytes());
        let _ = self.file.write_all_at(&field, 8);
        // Given back only now: the header no longer points there.
        for i in 0..passed {
            let (at, target) = self.jumps[i];
            self.punch(at + JUMP_RECORD, i);
            self.punched = target;
        }
        self.jumps.drain(..passed);
        let upto = pos.offset / PUNCH_STEP * PUNCH_STEP;
        if upto >= self.punched.max(REUSED) + PUNCH_STEP {
            self.punch(upto, 0);
        }
    }

    /// Everything is ACKed: cut the file back to its header. (Cut first: a
    /// death in between leaves an ACKed position past the end, which is
    /// nothing to deliver.)
    pub fn reset(&mut self) {
        if self.write_pos == HEADER && self.memory_only_from == 0 {
            return;
        }
        let _ = self.file.set_len(HEADER);
        let _ = self.file.write_all_at(&[END], HEADER);
        self.write_pos = HEADER;
        self.file_end = HEADER + 1;
        self.jumps.clear();
        self.punched = HEADER;
        self.acked = self.end();
        self.memory_only_from = 0;
        let _ = self.write_header();
    }

    /// From the end on, output is held only in memory (`true`), or the
    /// journal is whole again (`false`).
    pub fn set_memory_only(&mut self, memory_only: bool) {
        self.memory_only_from = if memory_only { self.write_pos } else { 0 };
        let _ = self
            .file
            .write_all_at(&self.memory_only_from.to_le_bytes(), 24);
    }

    /// Give back the ACKed space from `punched` to `upto` (above `REUSED`),
    /// in the segment before `jumps[later]`, but never where a later segment
    /// (from `jumps[later]` on) has records: a writer that went back to the
    /// start writes behind the ACKs, over space this segment had, and in a
    /// burst it comes close to them before the ACKs move on (punching that
    /// out read back as zeros, and as "not a record").
    fn punch(&mut self, upto: u64, later: usize) {
        let mut from = self.punched.max(REUSED);
        let mut upto = upto;
        self.punched = self.punched.max(upto);
        for (k, &(_, start)) in self.jumps.iter().enumerate().skip(later) {
            let end = self
                .jumps
                .get(k + 1)
                .map_or(self.write_pos + 1, |next| next.0 + JUMP_RECORD);
            if start < upto && end > from {
                if start <= from {
                    from = end;
                } else {
                    upto = start;
                }
            }
        }
        if self.punch_unsupported || upto <= from {
            return;
        }
        // SAFETY: fallocate on our own open descriptor; no memory is passed.
        let punched = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                from as libc::off_t,
                (upto - from) as libc::off_t,
            )
        };
        if punched != 0 {
            log::warn!(
                "cannot punch the ACKed part out of {} ({}); its space comes back only when everything is ACKed",
                self.path.display(),
                io::Error::last_os_error()
            );
            self.punch_unsupported = true;
        }
    }
}

/// Read exactly `n` bytes at `offset` onto the end of `bytes`, straight
/// into its spare capacity: all of the output beyond the memory bound is
/// read back, and zeroing it first would be one more pass over every byte.
fn read_onto(file: &File, bytes: &mut Vec<u8>, n: usize, offset: u64) -> io::Result<()> {
    bytes.reserve(n);
    let end = bytes.len() + n;
    while bytes.len() < end {
        let want = end - bytes.len();
        let at = offset + (n - want) as u64;
        let spare = bytes.spare_capacity_mut();
        // SAFETY: the kernel writes at most `want` bytes, within the spare
        // capacity reserved above, and only the bytes it reports are added.
        let got = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                want,
                at as libc::off_t,
            )
        };
        match got {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            1.. => unsafe { bytes.set_len(bytes.len() + got as usize) },
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// `parts` one after another at `at`, in one `pwritev` when the kernel
/// takes it all.
fn write_at(file: &File, parts: &[&[u8]; 4], at: u64) -> io::Result<()> {
    let vectors = parts.map(|part| libc::iovec {
        iov_base: part.as_ptr() as *mut libc::c_void,
        iov_len: part.len(),
    });
    // SAFETY: the buffers outlive the call; the kernel only reads them.
    let written =
        unsafe { libc::pwritev(file.as_raw_fd(), vectors.as_ptr(), 4, at as libc::off_t) };
    if written < 0 {
        return Err(io::Error::last_os_error());
    }
    // Short (rare): the rest part by part.
    let (mut done, mut offset) = (written as usize, at);
    for part in parts {
        let skip = done.min(part.len());
        file.write_all_at(&part[skip..], offset + skip as u64)?;
        done -= skip;
        offset += part.len() as u64;
    }
    Ok(())
}

/// Where the daemon `daemon_pid` running job `job_pid` of the job whose file
/// name is `job_file` creates its spool file, in the order tried: the spool
/// directory, then the system's temporary directory.
pub fn candidates(spool_dir: &Path, job_file: &str, daemon_pid: u32, job_pid: i32) -> Vec<PathBuf> {
    let name = format!("{job_file}.{daemon_pid}.{job_pid}.spool");
    vec![spool_dir.join(&name), std::env::temp_dir().join(&name)]
}

/// The daemon pid in a spool file name (`<job>.<daemon pid>.<job pid>.spool`),
/// or `None` for any other name.
pub fn daemon_pid_of(file_name: &str) -> Option<i32> {
    let rest = file_name.strip_suffix(".spool")?;
    let (rest, job_pid) = rest.rsplit_once('.')?;
    let (job, daemon_pid) = rest.rsplit_once('.')?;
    let numeric = |s: &str| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit());
    if job.is_empty() || !numeric(job_pid) || !numeric(daemon_pid) {
        return None;
    }
    daemon_pid.parse().ok().filter(|&pid| pid > 0)
}

/// Remove, in `dirs`, the spool files of daemons that are gone: regular
/// files of ours named as `candidates` names them whose daemon pid is dead.
/// Returns what was removed. A daemon's own guardian takes its spool over as
/// soon as it dies; this is for the files whose guardian died too.
pub fn remove_stale(dirs: &[&Path]) -> Vec<PathBuf> {
    let euid = unsafe { libc::geteuid() };
    let mut removed = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(daemon_pid_of) else {
                continue;
            };
            // Not through symlinks, and never someone else's file.
            let ours = entry
                .metadata()
                .is_ok_and(|m| m.file_type().is_file() && m.uid() == euid);
            // ESRCH only: EPERM means the pid lives (under another user).
            let dead = unsafe { libc::kill(pid, 0) } != 0
                && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            if ours && dead && std::fs::remove_file(entry.path()).is_ok() {
                removed.push(entry.path());
            }
        }
    }
    removed
}

/// What a guardian would deliver from the journal at `path` now, and whether
/// it would say that output held only in memory is missing.
#[cfg(test)]
pub fn unacked_text(path: &Path) -> (String, bool) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open the journal");
    let adopted = Spool::adopt(file, path).expect("a spool");
    let mut text = String::new();
    let mut pos = adopted.from;
    loop {
        let (_, part, next) = adopted.spool.read(pos, 7, String::new()).expect("read");
        if part.is_empty() {
            break;
        }
        text.push_str(&part);
        pos = next;
    }
    assert_eq!(text.len() as u64, adopted.pending);
    let mut spool = adopted.spool;
    spool.path = PathBuf::new(); // closed, but the file is the writer's: kept
    (text, adopted.memory_only)
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("sp_spool_{name}_{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    fn open(path: &Path) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .expect("open")
    }

    #[test]
    fn records_read_back_by_stream_and_cut_on_character_boundaries() {
        let path = temp_path("read");
        {
            let mut spool = Spool::create(&path, u64::MAX).expect("create");
            assert!(
                Spool::create(&path, u64::MAX).is_err(),
                "must not reuse an existing file"
            );
            let first = spool.append(Stream::Stdout, "oné").expect("append");
            spool.append(Stream::Stdout, "two").expect("append");
            spool.append(Stream::Stderr, "twö").expect("append");
            let start = Pos {
                offset: first,
                skip: 0,
            };
            // Same stream joins across records; a character is never split.
            let (stream, text, next) = spool.read(start, 3, String::new()).expect("read");
            assert_eq!((stream, text.as_str()), (Stream::Stdout, "on"));
            let (_, text, next) = spool.read(next, 100, String::new()).expect("read");
            assert_eq!(text, "étwo", "up to the stream's change");
            let (stream, text, next) = spool.read(next, 100, String::new()).expect("read");
            assert_eq!((stream, text.as_str()), (Stream::Stderr, "twö"));
            assert_eq!(spool.read(next, 100, String::new()).expect("read").1, "");
            // A position past several records skips across them.
            let (_, text, _) = spool
                .read(
                    Pos {
                        offset: first,
                        skip: 5,
                    },
                    100,
                    String::new(),
                )
                .expect("read");
            assert_eq!(text, "wo");
        }
        assert!(!path.exists(), "removed on drop");
    }

    #[test]
    fn the_header_says_what_was_acked_and_a_guardian_takes_only_the_rest() {
        let path = temp_path("acked");
        let mut spool = Spool::create(&path, u64::MAX).expect("create");
        let first = spool.append(Stream::Stdout, "acked ").expect("append");
        spool.append(Stream::Stdout, "half").expect("append");
        spool.append(Stream::Stderr, "rest\n").expect("append");
        assert_eq!(unacked_text(&path), ("acked halfrest\n".into(), false));
        spool.set_acked(Pos {
            offset: first,
            skip: 8,
        });
        assert_eq!(unacked_text(&path), ("lfrest\n".into(), false));
        // From here on the daemon held output only in memory.
        spool.set_memory_only(true);
        assert_eq!(unacked_text(&path), ("lfrest\n".into(), true));
        // Everything ACKed: cut back to the header, nothing to deliver.
        spool.reset();
        assert_eq!(std::fs::metadata(&path).expect("exists").len(), HEADER + 1);
        assert_eq!(unacked_text(&path), (String::new(), false));
        // A record the writer did not finish is kept as far as it goes.
        spool.append(Stream::Stdout, "one\n").expect("append");
        let mut torn = [0u8; 5];
        torn[1..].copy_from_slice(&100u32.to_le_bytes());
        spool
            .file
            .write_all_at(&torn, spool.write_pos)
            .expect("tear");
        spool
            .file
            .write_all_at(b"par", spool.write_pos + 5)
            .expect("tear");
        let mut adopted = Spool::adopt(open(&path), &path).expect("a spool");
        std::mem::forget(spool);
        assert_eq!(adopted.pending, 7);
        // What the guardian adds goes after the last record, torn or not.
        adopted
            .spool
            .append(Stream::Stdout, "end\n")
            .expect("append");
        let (_, text, _) = adopted
            .spool
            .read(adopted.from, 100, String::new())
            .expect("read");
        assert_eq!(text, "one\nparend\n");
        drop(adopted);
        assert!(!path.exists(), "removed when done");
        // Not a spool (a file planted at the name): nothing adopted.
        std::fs::write(&path, "\0\0\0\0\x20not ours\n").expect("write");
        assert!(Spool::adopt(open(&path), &path).is_none());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn acked_space_is_used_again_or_returned_and_the_cap_counts_the_backlog() {
        let path = temp_path("punch");
        let chunk = "x".repeat(2000);
        let mut spool = Spool::create(&path, 24_000).expect("create");
        let blocks = || std::fs::metadata(&path).expect("exists").blocks() * 512;
        let mut offsets = Vec::new();
        for _ in 0..11 {
            offsets.push(spool.append(Stream::Stdout, &chunk).expect("under the cap"));
        }
        let error = spool
            .append(Stream::Stdout, &chunk)
            .expect_err("over the cap");
        assert!(error.to_string().contains("SP_SPOOL_MAX_MB"), "{error}");
        let allocated = blocks();
        // ACKs free space: the cap admits more; past `REUSED` the space is
        // punched out, and the writer goes back to the ACKed start.
        spool.set_acked(Pos {
            offset: offsets[8],
            skip: 0,
        });
        if !spool.punch_unsupported {
            assert!(blocks() < allocated, "{} bytes still allocated", blocks());
        }
        let again = spool.append(Stream::Stderr, &chunk).expect("room again");
        assert_eq!(again, HEADER, "back at the start");
        // Up to the unACKed records ahead, then past the end of the file.
        spool.cap = u64::MAX;
        for _ in 0..10 {
            spool.append(Stream::Stdout, &chunk).expect("append");
        }
        assert_eq!(spool.jumps.len(), 2, "{:?}", spool.jumps);
        let (text, _) = unacked_text(&path);
        assert_eq!(
            text.len(),
            chunk.len() * 14,
            "{:?} at {}",
            spool.jumps,
            spool.write_pos
        );
        assert!(text.bytes().all(|b| b == b'x'), "in order across the jumps");
        // ACKed past both jumps: the writer's segment is all that is left.
        let last = spool.end();
        spool.set_acked(last);
        assert!(spool.jumps.is_empty());
        assert_eq!(spool.disk_bytes(), 0);
        assert_eq!(unacked_text(&path), (String::new(), false));
    }

    /// A burst: the writer goes back to the start, and its new records
    /// come up close behind the ACKs of the old segment; the ACKs then move
    /// on and give back the old segment's space there, which must not take
    /// the new records with it (it did: the guardian, and the read-back,
    /// found zeros and "not a record" where they were).
    #[test]
    fn space_given_back_behind_the_acks_keeps_what_the_writer_put_there_again() {
        let path = temp_path("behind");
        let mut spool = Spool::create(&path, u64::MAX).expect("create");
        let (a, b) = ("a".repeat(1000), "b".repeat(1000));
        let old: Vec<u64> = (0..100)
            .map(|_| spool.append(Stream::Stdout, &a).expect("append"))
            .collect();
        spool.set_acked(Pos {
            offset: old[89],
            skip: 0,
        });
        for _ in 0..88 {
            spool.append(Stream::Stdout, &b).expect("append");
        }
        assert_eq!(spool.jumps.first().map(|j| j.1), Some(HEADER), "went back");
        assert!(spool.write_pos > old[86], "close behind the ACKs");
        spool.set_acked(Pos {
            offset: old[99],
            skip: 0,
        });
        let expected = format!("{a}{}", b.repeat(88));
        assert_eq!(unacked_text(&path), (expected.clone(), false));
        let (_, text, _) = spool
            .read(spool.acked, 1 << 20, String::new())
            .expect("read back");
        assert_eq!(text, expected);
    }

    #[test]
    fn a_journal_the_server_keeps_up_with_stays_small() {
        let path = temp_path("steady");
        let mut spool = Spool::create(&path, u64::MAX).expect("create");
        let chunk = "y".repeat(1000);
        let mut previous = spool.append(Stream::Stdout, &chunk).expect("append");
        for _ in 0..1000 {
            let at = spool.append(Stream::Stdout, &chunk).expect("append");
            spool.set_acked(Pos {
                offset: previous,
                skip: 500,
            });
            previous = at;
        }
        let size = std::fs::metadata(&path).expect("exists").len();
        assert!(size < 10_000, "{size} bytes for a backlog of 1.5 KB");
        let (text, _) = unacked_text(&path);
        assert_eq!(text.len(), 1500);
    }

    #[test]
    fn names_parse_from_the_right() {
        let path = &candidates(Path::new("/var/log/sp"), "a.b", 42, 43)[0];
        assert_eq!(path, Path::new("/var/log/sp/a.b.42.43.spool"));
        assert_eq!(daemon_pid_of("a.b.42.43.spool"), Some(42));
        assert_eq!(daemon_pid_of("job.1.2.spool"), Some(1));
        for other in [
            "job.spool",
            ".1.2.spool",
            "job.x.2.spool",
            "job.1..spool",
            "job.1.2.spool.tmp",
            "job.0.2.spool",
            "job.99999999999.2.spool",
            "print.spool",
        ] {
            assert_eq!(daemon_pid_of(other), None, "{other}");
        }
    }
}
