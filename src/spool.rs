//! The spool: a FIFO of output batches on disk, for output beyond the memory
//! bound (`SP_BUFFER_MAX_MB`). Owned by the `Outbox` (supervisor thread).
//!
//! Records are `[stream: u8][len: u32 LE][text]`, appended at the write end
//! and read back from the read end with positioned I/O. The file is created
//! on first use (`O_EXCL|O_NOFOLLOW`, mode 0600: job output can hold
//! secrets), truncated whenever it empties, and removed when dropped.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
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
}
