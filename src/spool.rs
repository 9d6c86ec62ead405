//! The spool: a FIFO of output batches on disk, for output beyond the memory
//! bound (`SP_BUFFER_MAX_MB`). Owned by the `Outbox` (supervisor thread).
//!
//! Records are `[stream: u8][len: u32 LE][text]`, appended at the write end
//! and read back from the read end with positioned I/O. The file is created
//! on first use (`O_EXCL|O_NOFOLLOW`, mode 0600: job output can hold
//! secrets), truncated whenever it empties, and removed when dropped.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::messages::Stream;

pub struct Spool {
    file: File,
    path: PathBuf,
    read_pos: u64,
    write_pos: u64,
    records: usize,
}

impl Spool {
    /// Create a new spool file at `path`, which must not exist.
    pub fn create(path: &Path) -> io::Result<Spool> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        Ok(Spool {
            file,
            path: path.to_path_buf(),
            read_pos: 0,
            write_pos: 0,
            records: 0,
        })
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

    /// Bytes on disk not yet read back.
    pub fn pending_bytes(&self) -> u64 {
        self.write_pos - self.read_pos
    }

    pub fn push(&mut self, stream: Stream, text: &str) -> io::Result<()> {
        let len = u32::try_from(text.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
        let mut header = [0u8; 5];
        header[0] = stream.index() as u8;
        header[1..].copy_from_slice(&len.to_le_bytes());
        self.file.write_all_at(&header, self.write_pos)?;
        self.file
            .write_all_at(text.as_bytes(), self.write_pos + 5)?;
        self.write_pos += 5 + u64::from(len);
        self.records += 1;
        Ok(())
    }

    /// Take the oldest record.
    pub fn pop(&mut self) -> io::Result<Option<(Stream, String)>> {
        if self.records == 0 {
            return Ok(None);
        }
        let mut header = [0u8; 5];
        self.file.read_exact_at(&mut header, self.read_pos)?;
        let stream = if header[0] == 1 {
            Stream::Stderr
        } else {
            Stream::Stdout
        };
        let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut bytes = vec![0u8; len];
        self.file.read_exact_at(&mut bytes, self.read_pos + 5)?;
        self.read_pos += 5 + len as u64;
        self.records -= 1;
        if self.records == 0 {
            // Empty again: give the disk space back.
            self.read_pos = 0;
            self.write_pos = 0;
            self.file.set_len(0)?;
        }
        // Only whole `String`s are written, so this is UTF-8 unless the disk lied.
        let text = String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        Ok(Some((stream, text)))
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
/// Returns what was removed. A daemon's own guardian copies and removes its
/// spool as soon as it dies; this is for the files whose guardian died too.
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

/// The text of every record in a spool file, in order: `(bytes, records)`
/// counted first (`count_text`), then copied to `out` in bounded chunks
/// (`copy_text`), so a spool of any size costs no more than 64 KiB. A
/// record cut short (the writer died mid-write) ends the file.
pub fn count_text(file: &File) -> (u64, u64) {
    let mut pos = 0;
    let (mut bytes, mut records) = (0, 0);
    let size = file.metadata().map_or(0, |m| m.len());
    let mut header = [0u8; 5];
    while file.read_exact_at(&mut header, pos).is_ok() {
        let len = u64::from(u32::from_le_bytes([
            header[1], header[2], header[3], header[4],
        ]));
        let available = len.min(size.saturating_sub(pos + 5));
        bytes += available;
        records += 1;
        if available < len {
            break;
        }
        pos += 5 + len;
    }
    (bytes, records)
}

/// See `count_text`. Returns the bytes written.
pub fn copy_text(file: &File, out: &mut impl Write) -> io::Result<u64> {
    let mut pos = 0;
    let mut written = 0;
    let mut header = [0u8; 5];
    let mut chunk = vec![0u8; 64 * 1024];
    while file.read_exact_at(&mut header, pos).is_ok() {
        let len = u64::from(u32::from_le_bytes([
            header[1], header[2], header[3], header[4],
        ]));
        let mut at = pos + 5;
        let end = at + len;
        while at < end {
            let want = (end - at).min(chunk.len() as u64) as usize;
            let got = file.read_at(&mut chunk[..want], at)?;
            if got == 0 {
                return Ok(written); // cut short
            }
            out.write_all(&chunk[..got])?;
            at += got as u64;
            written += got as u64;
        }
        pos = end;
    }
    Ok(written)
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
            let mut spool = Spool::create(&path).expect("create");
            assert!(
                Spool::create(&path).is_err(),
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
                0,
                "truncated when empty"
            );
        }
        assert!(!path.exists(), "removed on drop");
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
    fn text_is_copied_record_by_record_and_a_torn_tail_ends_it() {
        let path = std::env::temp_dir().join(format!("sp_spool_copy_{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut spool = Spool::create(&path).expect("create");
        spool.push(Stream::Stdout, "one\n").expect("push");
        spool.push(Stream::Stderr, "twö\n").expect("push");
        let file = File::open(&path).expect("open");
        assert_eq!(count_text(&file), (9, 2));
        let mut out = Vec::new();
        assert_eq!(copy_text(&file, &mut out).expect("copy"), 9);
        assert_eq!(out, "one\ntwö\n".as_bytes());
        // The writer died in the middle of a record: keep what is there.
        let mut torn = [0u8; 5];
        torn[1..].copy_from_slice(&100u32.to_le_bytes());
        let torn_file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        torn_file
            .write_all_at(&torn, spool.write_pos)
            .expect("tear");
        torn_file
            .write_all_at(b"par", spool.write_pos + 5)
            .expect("tear");
        assert_eq!(count_text(&torn_file), (12, 3));
        let mut out = Vec::new();
        copy_text(&torn_file, &mut out).expect("copy");
        assert_eq!(out, "one\ntwö\npar".as_bytes());
    }
}
