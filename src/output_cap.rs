//! `SP_OUTPUT_MAX_MB`: how much of one run's output the server receives.
//! The server keeps a run's output as one string and rewrites its whole
//! state for every message, so its cost grows with the square of the output
//! (docs/saltpeter.md). Past the cap, output is not sent: it is written to a
//! file on the minion (`<log dir>/<job>.<instance>.leftout`, up to
//! `SP_LEFTOUT_MAX_MB`), and its last bytes are held in memory. When the job
//! ends, one line says how many bytes were left out and where they are
//! kept, and those last bytes follow: the end of the output is where the
//! error is. A plain struct owned by the session (supervisor thread).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use crate::tail::Tail;

/// The most of the output's end sent after the cap.
pub const CAP_TAIL_BYTES: usize = 256 * 1024;

pub struct OutputCap {
    /// Bytes of the head sent live: the cap less what the end takes.
    head_limit: u64,
    tail_limit: u64,
    sent: u64,
    /// Bytes past the head (all of them, kept or not).
    diverted: u64,
    tail: Tail,
    path: PathBuf,
    file: Option<File>,
    /// Bytes written to the file.
    kept: u64,
    kept_limit: u64,
    /// Why the file stopped taking bytes (its cap, a full disk), once it did.
    not_kept: Option<String>,
    cap_mb: u64,
}

impl OutputCap {
    /// `limit`: `SP_OUTPUT_MAX_MB` in bytes; `kept_limit`:
    /// `SP_LEFTOUT_MAX_MB` in bytes; `path`: the file for what is left out.
    pub fn new(limit: u64, kept_limit: u64, path: PathBuf) -> Self {
        let tail_limit = (CAP_TAIL_BYTES as u64).min(limit / 2);
        OutputCap {
            head_limit: limit - tail_limit,
            tail_limit,
            sent: 0,
            diverted: 0,
            tail: Tail::new(tail_limit as usize),
            path,
            file: None,
            kept: 0,
            kept_limit,
            not_kept: None,
            cap_mb: limit >> 20,
        }
    }

    /// The part of `text` to send now (a prefix, cut on a character
    /// boundary); the rest is left out and kept.
    pub fn admit<'a>(&mut self, text: &'a str) -> &'a str {
        let room = self.head_limit.saturating_sub(self.sent);
        if self.diverted == 0 && text.len() as u64 <= room {
            self.sent += text.len() as u64;
            return text;
        }
        // Compared in u64: on 32-bit targets a cap past 4 GiB must not wrap.
        let mut cut = room.min(text.len() as u64) as usize;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        if self.diverted > 0 {
            cut = 0;
        }
        let (head, rest) = text.split_at(cut);
        self.sent += head.len() as u64;
        self.keep(rest);
        head
    }

    fn keep(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        self.diverted += text.len() as u64;
        self.tail.push(text);
        if self.not_kept.is_some() {
            return;
        }
        if self.kept_limit == 0 {
            self.stop_keeping("SP_LEFTOUT_MAX_MB is 0".to_string());
            return;
        }
        if self.file.is_none() {
            let opened = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o640)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&self.path);
            match opened {
                Ok(file) => {
                    log::warn!(
                        "output passed SP_OUTPUT_MAX_MB ({} MiB): the rest is kept in {}, its last {} KiB go to the server when the job ends",
                        self.cap_mb,
                        self.path.display(),
                        self.tail_limit >> 10
                    );
                    self.file = Some(file);
                }
                Err(e) => {
                    self.stop_keeping(format!("cannot create it: {e}"));
                    return;
                }
            }
        }
        let room = self.kept_limit.saturating_sub(self.kept);
        let mut take = room.min(text.len() as u64) as usize;
        while !text.is_char_boundary(take) {
            take -= 1;
        }
        let mut bytes = &text.as_bytes()[..take];
        while !bytes.is_empty() {
            // Counted write by write: after a full disk the line says
            // exactly how much the file holds.
            let Some(file) = self.file.as_mut() else {
                return;
            };
            match file.write(bytes) {
                Ok(0) => {
                    self.stop_keeping("writing it failed: no progress".to_string());
                    return;
                }
                Ok(n) => {
                    self.kept += n as u64;
                    bytes = &bytes[n..];
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.stop_keeping(format!("writing it failed: {e}"));
                    return;
                }
            }
        }
        if take < text.len() {
            self.stop_keeping(format!(
                "SP_LEFTOUT_MAX_MB ({} MiB) reached",
                self.kept_limit >> 20
            ));
        }
    }

    fn stop_keeping(&mut self, why: String) {
        log::error!(
            "output past SP_OUTPUT_MAX_MB is no longer kept in {}: {why}",
            self.path.display()
        );
        self.not_kept = Some(why);
        self.file = None;
    }

    /// The job has ended: the line that says what was left out and where
    /// it is, then the output's last bytes; `None` if the cap was not passed.
    pub fn finish(&mut self) -> Option<String> {
        if self.diverted == 0 {
            return None;
        }
        self.file = None;
        let tail = self.tail.take();
        let left_out = self.diverted - tail.len() as u64;
        let path = self.path.display();
        let kept = match &self.not_kept {
            None => format!("kept on the minion in {path}"),
            Some(why) => format!(
                "the first {} of the {} bytes past the cap are kept on the minion in {path} ({why})",
                self.kept, self.diverted
            ),
        };
        let line = format!(
            "\n[sp_wrapper: {left_out} bytes of output were left out here (SP_OUTPUT_MAX_MB={}); {kept}; the last {} bytes follow]\n",
            self.cap_mb,
            tail.len()
        );
        self.diverted = 0;
        Some(line + &tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_goes_live_the_rest_to_the_file_and_the_end_follows_the_line() {
        let dir = std::env::temp_dir().join(format!("sp_cap_{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("job.1.leftout");
        let _ = std::fs::remove_file(&path);
        // A 4 MiB cap: a 3.75 MiB head, 256 KiB of tail.
        let mut cap = OutputCap::new(4 << 20, 1 << 30, path.clone());
        let line = |i: usize| format!("line {i:07}\n"); // 13 bytes
        let mut output = String::new();
        let mut sent = String::new();
        for i in 0..1_000_000 {
            let text = line(i);
            output.push_str(&text);
            sent.push_str(cap.admit(&text));
        }
        assert_eq!(sent.len() as u64, (4 << 20) - (256 << 10));
        let end = cap.finish().expect("passed the cap");
        let (marker, tail) = end[1..].split_once('\n').expect("a line");
        assert!(output.ends_with(tail));
        assert!(tail.len() <= 256 << 10 && tail.len() > 250 << 10);
        let left_out = output.len() - sent.len() - tail.len();
        assert!(
            marker.starts_with(&format!("[sp_wrapper: {left_out} bytes of output were left out here (SP_OUTPUT_MAX_MB=4); kept on the minion in {}", path.display())),
            "{marker}"
        );
        let kept = std::fs::read_to_string(&path).expect("kept");
        assert_eq!(sent + &kept, output, "every byte is either sent or kept");
        assert!(cap.finish().is_none(), "once");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn what_the_file_cannot_take_is_counted_in_the_line() {
        let path = PathBuf::from("/nonexistent/dir/job.leftout");
        let mut cap = OutputCap::new(1 << 20, 1 << 30, path);
        let text = "é".repeat(600_000); // 1.2 MB
        let head = cap.admit(&text);
        assert!(head.len() <= (1 << 20) - (256 << 10));
        let end = cap.finish().expect("passed the cap");
        assert!(end.contains("the first 0 of the"), "{}", &end[..300]);
        assert!(end.contains("cannot create it"), "{}", &end[..300]);
    }
}
