//! The spool: a FIFO of output batches on disk, for output beyond the memory
//! bound (`SP_BUFFER_MAX_MB`). Owned by the `Outbox` (supervisor thread).
//!
//! The file starts with a 16-byte header (`SPSPOOL2`, then the read position
//! as a u64 LE, rewritten at every read so the guardian of a dead daemon
//! takes over only what was not read back, `adopt`); records `[stream: u8][len: u32
//! LE][text]` follow, appended at the write end and read back from the read
//! end with positioned I/O. The file is created on first use
//! (`O_EXCL|O_NOFOLLOW`, mode 0600: job output can hold secrets) and removed
//! when dropped.
//!
//! It gives its disk space back as it drains: what has been read back is
//! punched out of the file (`FALLOC_FL_PUNCH_HOLE`, whole 1 MiB steps), and
//! the file is cut back to its header whenever it empties. So it holds about
//! the live backlog, never all output since spilling began, and the cap
//! (`SP_SPOOL_MAX_MB`) applies to that backlog. Where the filesystem cannot
//! punch holes, space comes back only when the file empties, and the cap
//! counts the whole file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::messages::Stream;

const MAGIC: &[u8; 8] = b"SPSPOOL2";
const HEADER: u64 = 16;
const RECORD_HEADER: u64 = 5;
/// Read-back space is returned in steps of this much (fewer syscalls).
const PUNCH_STEP: u64 = 1 << 20;

pub struct Spool {
    file: File,
    path: PathBuf,
    read_pos: u64,
    write_pos: u64,
    records: usize,
    /// Text bytes in the records not yet read back.
    text_bytes: u64,
    /// Everything before this offset (past the header) has been punched out.
    punched: u64,
    /// The filesystem refused to punch holes: space comes back only when empty.
    punch_unsupported: bool,
    /// Most bytes the file may hold beyond its header (`SP_SPOOL_MAX_MB`).
    cap: u64,
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
            read_pos: HEADER,
            write_pos: HEADER,
            records: 0,
            text_bytes: 0,
            punched: HEADER,
            punch_unsupported: false,
            cap,
        };
        if let Err(e) = spool.write_header() {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Ok(spool)
    }

    /// Take over the spool file of a daemon that died, open for reading and
    /// writing as `file` (the caller checked it is ours): the records it had
    /// not read back, oldest first, to be sent as they would have been. A
    /// record cut short (the writer died mid-write) is kept as far as it
    /// goes and ends the file. `None` when the file is not a spool.
    pub fn adopt(file: File, path: &Path) -> Option<Spool> {
        let mut header = [0u8; HEADER as usize];
        file.read_exact_at(&mut header, 0).ok()?;
        if &header[..8] != MAGIC {
            return None;
        }
        let size = file.metadata().ok()?.len();
        let mut read_from = [0u8; 8];
        read_from.copy_from_slice(&header[8..]);
        let read_pos = u64::from_le_bytes(read_from).clamp(HEADER, size.max(HEADER));
        let (mut pos, mut records, mut text_bytes) = (read_pos, 0, 0);
        let mut record = [0u8; RECORD_HEADER as usize];
        while file.read_exact_at(&mut record, pos).is_ok() {
            let len = u64::from(u32::from_le_bytes([
                record[1], record[2], record[3], record[4],
            ]));
            let available = len.min(size.saturating_sub(pos + RECORD_HEADER));
            if available < len {
                // Torn: keep its text, as a record of the length written.
                if available == 0 {
                    break;
                }
                record[1..].copy_from_slice(&(available as u32).to_le_bytes());
                file.write_all_at(&record, pos).ok()?;
            }
            records += 1;
            text_bytes += available;
            pos += RECORD_HEADER + available;
            if available < len {
                break;
            }
        }
        // Appends (the guardian's own line) go right after the last record.
        let _ = file.set_len(pos);
        Some(Spool {
            file,
            path: path.to_path_buf(),
            read_pos,
            write_pos: pos,
            records,
            text_bytes,
            punched: read_pos,
            punch_unsupported: false,
            cap: u64::MAX,
        })
    }

    fn write_header(&self) -> io::Result<()> {
        let mut header = [0u8; HEADER as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..].copy_from_slice(&self.read_pos.to_le_bytes());
        self.file.write_all_at(&header, 0)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    pub fn len(&self) -> usize {
        self.records
    }

    /// Text bytes not yet read back (what the records hold, headers excluded).
    pub fn pending_bytes(&self) -> u64 {
        self.text_bytes
    }

    /// Bytes of disk the backlog takes, as the cap counts them.
    pub fn disk_bytes(&self) -> u64 {
        if self.punch_unsupported {
            self.write_pos - HEADER
        } else {
            self.write_pos - self.punched
        }
    }

    /// Whether a record of `len` text bytes would stay under the cap.
    pub fn has_room(&self, len: usize) -> bool {
        self.disk_bytes() + RECORD_HEADER + len as u64 <= self.cap
    }

    pub fn push(&mut self, stream: Stream, text: &str) -> io::Result<()> {
        let len = u32::try_from(text.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
        if !self.has_room(text.len()) {
            return Err(io::Error::other(format!(
                "the spool cap (SP_SPOOL_MAX_MB, {} MiB) is reached",
                self.cap >> 20
            )));
        }
        let mut header = [0u8; RECORD_HEADER as usize];
        header[0] = stream.index() as u8;
        header[1..].copy_from_slice(&len.to_le_bytes());
        let written = self
            .file
            .write_all_at(&header, self.write_pos)
            .and_then(|()| {
                self.file
                    .write_all_at(text.as_bytes(), self.write_pos + RECORD_HEADER)
            });
        if let Err(e) = written {
            // A torn record (ENOSPC mid-write) must not be read back: cut
            // it off, so the file ends at the last whole record.
            let _ = self.file.set_len(self.write_pos);
            return Err(e);
        }
        self.write_pos += RECORD_HEADER + u64::from(len);
        self.records += 1;
        self.text_bytes += u64::from(len);
        Ok(())
    }

    /// Take the oldest record.
    pub fn pop(&mut self) -> io::Result<Option<(Stream, String)>> {
        if self.records == 0 {
            return Ok(None);
        }
        let mut header = [0u8; RECORD_HEADER as usize];
        self.file.read_exact_at(&mut header, self.read_pos)?;
        let stream = if header[0] == 1 {
            Stream::Stderr
        } else {
            Stream::Stdout
        };
        let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut bytes = vec![0u8; len];
        self.file
            .read_exact_at(&mut bytes, self.read_pos + RECORD_HEADER)?;
        self.read_pos += RECORD_HEADER + len as u64;
        self.records -= 1;
        self.text_bytes -= len as u64;
        // The record is out: what follows only gives space back and keeps
        // the header right for a guardian, so a failure there must not lose it.
        if self.records == 0 {
            // Empty again: give all the disk space back.
            self.read_pos = HEADER;
            self.write_pos = HEADER;
            self.punched = HEADER;
            let _ = self.file.set_len(HEADER);
        } else {
            self.punch_read_back();
        }
        let _ = self.write_header();
        // Only whole `String`s are written, so this is UTF-8 unless the disk lied.
        let text = String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        Ok(Some((stream, text)))
    }

    /// Return the space of what has been read back, in whole steps.
    fn punch_read_back(&mut self) {
        if self.punch_unsupported {
            return;
        }
        let upto = self.read_pos / PUNCH_STEP * PUNCH_STEP;
        if upto <= self.punched {
            return;
        }
        let (offset, len) = (
            self.punched as libc::off_t,
            (upto - self.punched) as libc::off_t,
        );
        // SAFETY: fallocate on our own open descriptor; no memory is passed.
        let punched = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        if punched == 0 {
            self.punched = upto;
        } else {
            log::warn!(
                "cannot punch the read-back part out of {} ({}); its space comes back only when it empties",
                self.path.display(),
                io::Error::last_os_error()
            );
            self.punch_unsupported = true;
        }
    }
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

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_round_trip_and_cleanup() {
        let path = std::env::temp_dir().join(format!("sp_spool_test_{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        {
            let mut spool = Spool::create(&path, u64::MAX).expect("create");
            assert!(
                Spool::create(&path, u64::MAX).is_err(),
                "must not reuse an existing file"
            );
            spool.push(Stream::Stdout, "one").expect("push");
            spool.push(Stream::Stderr, "twö").expect("push");
            assert_eq!(spool.len(), 2);
            assert_eq!(
                spool.pop().expect("pop"),
                Some((Stream::Stdout, "one".to_string()))
            );
            spool.push(Stream::Stdout, "three").expect("push");
            assert_eq!(
                spool.pop().expect("pop"),
                Some((Stream::Stderr, "twö".to_string()))
            );
            assert_eq!(
                spool.pop().expect("pop"),
                Some((Stream::Stdout, "three".to_string()))
            );
            assert_eq!(spool.pop().expect("pop"), None);
            assert_eq!(
                std::fs::metadata(&path).expect("exists").len(),
                HEADER,
                "cut back to the header when empty"
            );
        }
        assert!(!path.exists(), "removed on drop");
    }

    #[test]
    fn read_back_space_is_returned_and_the_cap_counts_the_backlog() {
        let path = std::env::temp_dir().join(format!("sp_spool_punch_{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let chunk = "x".repeat(256 * 1024);
        let mut spool = Spool::create(&path, 3 << 20).expect("create");
        let blocks = || std::fs::metadata(&path).expect("exists").blocks() * 512;
        for _ in 0..11 {
            spool.push(Stream::Stdout, &chunk).expect("under the cap");
        }
        let error = spool
            .push(Stream::Stdout, &chunk)
            .expect_err("over the cap");
        assert!(error.to_string().contains("SP_SPOOL_MAX_MB"), "{error}");
        // Reading back frees space: the cap admits more, the file shrinks.
        for _ in 0..8 {
            spool.pop().expect("pop");
        }
        if !spool.punch_unsupported {
            assert!(blocks() < (2 << 20), "{} bytes still allocated", blocks());
            assert!(spool.has_room(chunk.len()));
            spool.push(Stream::Stdout, &chunk).expect("room again");
        }
        // A guardian takes over only what was not read back.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        let adopted = Spool::adopt(file, &path).expect("a spool");
        assert_eq!(adopted.pending_bytes(), spool.pending_bytes());
        drop(spool);
        drop(adopted);
        assert!(!path.exists());
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

    #[test]
    fn an_adopted_spool_yields_the_unread_records_and_a_torn_tail_ends_it() {
        let path = std::env::temp_dir().join(format!("sp_spool_adopt_{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut spool = Spool::create(&path, u64::MAX).expect("create");
        spool.push(Stream::Stdout, "read back\n").expect("push");
        spool.push(Stream::Stdout, "one\n").expect("push");
        spool.push(Stream::Stderr, "twö\n").expect("push");
        assert_eq!(
            spool.pop().expect("pop").map(|r| r.1),
            Some("read back\n".into())
        );
        // The writer died in the middle of a record: keep what is there.
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
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .expect("open")
        };
        let mut adopted = Spool::adopt(open(), &path).expect("a spool");
        std::mem::forget(spool); // (its drop would remove the file)
        assert_eq!((adopted.len(), adopted.pending_bytes()), (3, 12));
        // What the guardian adds goes after the last record, torn or not.
        adopted.push(Stream::Stdout, "end\n").expect("push");
        let mut text = String::new();
        while let Some((stream, part)) = adopted.pop().expect("pop") {
            text.push_str(&part);
            if part == "twö\n" {
                assert_eq!(stream, Stream::Stderr);
            }
        }
        assert_eq!(text, "one\ntwö\nparend\n");
        drop(adopted);
        assert!(!path.exists(), "removed when done");
        // Not a spool (a file planted at the name): nothing adopted.
        std::fs::write(&path, "\0\0\0\0\x20not ours\n").expect("write");
        assert!(Spool::adopt(open(), &path).is_none());
        let _ = std::fs::remove_file(&path);
    }
}
