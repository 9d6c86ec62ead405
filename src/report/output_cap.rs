//! `SP_OUTPUT_MAX_MB`: how much of one run's output the server receives.
//! The server keeps a run's output as one string and rewrites its whole
//! state for every message, so its cost grows with the square of the output
//! (docs/saltpeter.md). Past the cap, output is not sent: it is written to a
//! file on the minion (`<log dir>/<job>.<instance>.leftout`, up to
//! `SP_LEFTOUT_MAX_MB`), and its last bytes are held in memory. When the job
//! ends, one line says how many bytes were left out and where they are
//! kept, and those last bytes follow: the end of the output is where the
//! error is. A plain struct owned by the session (supervisor thread).
//!
//! A job's `.leftout` files are bounded together, by the agent itself
//! whatever logrotate does: when a run starts its file, the job's oldest
//! ones go until the rest number fewer than `SP_LEFTOUT_JOB_FILES` and, the
//! new one counted at `SP_LEFTOUT_MAX_MB`, fit `SP_LEFTOUT_JOB_MAX_MB`
//! (`prune`). A run holds a `flock` on its file while it writes it, so a
//! concurrent run of the same job never removes it.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::report::tail::Tail;

/// The most of the output's end sent after the cap.
pub const CAP_TAIL_BYTES: usize = 256 * 1024;

/// A job's `.leftout` files together: `SP_LEFTOUT_JOB_MAX_MB` (in bytes)
/// and `SP_LEFTOUT_JOB_FILES`.
pub struct JobBound {
    /// The job's name as in file names (`config::file_name_component`).
    pub job: String,
    pub bytes: u64,
    pub files: u64,
}

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
    job_bound: JobBound,
}

impl OutputCap {
    /// `limit`: `SP_OUTPUT_MAX_MB` in bytes; `kept_limit`:
    /// `SP_LEFTOUT_MAX_MB` in bytes; `path`: the file for what is left out;
    /// `job_bound`: what all of the job's such files may take.
    pub fn new(limit: u64, kept_limit: u64, path: PathBuf, job_bound: JobBound) -> Self {
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
            job_bound,
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
                    // Held until the file is closed: "still being written"
                    // to the pruning of a concurrent run.
                    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
                    log::warn!(
                        "output passed SP_OUTPUT_MAX_MB ({} MiB): the rest is kept in {}, its last {} KiB go to the server when the job ends",
                        self.cap_mb,
                        self.path.display(),
                        self.tail_limit >> 10
                    );
                    self.file = Some(file);
                    self.prune_older_files();
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

    /// Makes room for this run's new file among the job's others.
    fn prune_older_files(&self) {
        let (Some(dir), Some(own)) = (self.path.parent(), self.path.file_name()) else {
            return;
        };
        let (removed, freed) = prune(dir, own, &self.job_bound, self.kept_limit);
        if removed > 0 {
            log::info!(
                "removed this job's {removed} oldest .leftout files ({freed} bytes; SP_LEFTOUT_JOB_FILES, SP_LEFTOUT_JOB_MAX_MB)"
            );
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

/// Whether `name` is one of `job`'s left-out files: `<job>.<run>.leftout`
/// with no dot in `<run>` (`Config::leftout_path` encodes them), or a copy
/// logrotate renamed (`.leftout.3`, `.leftout.3.gz`).
pub fn of_job(name: &str, job: &str) -> bool {
    let Some(rest) = name.strip_prefix(job).and_then(|r| r.strip_prefix('.')) else {
        return false;
    };
    let Some((run, suffix)) = rest.split_once(".leftout") else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    !run.is_empty()
        && !run.contains('.')
        && match suffix.strip_prefix('.') {
            None => suffix.is_empty(),
            Some(rotated) => match rotated.split_once('.') {
                None => digits(rotated),
                Some((number, extension)) => {
                    digits(number)
                        && (1..=4).contains(&extension.len())
                        && extension.bytes().all(|b| b.is_ascii_alphanumeric())
                }
            },
        }
}

/// Makes room in `dir` for the job's new left-out file `own`, which may
/// grow to `reserve` bytes. Of the job's other files (regular files of our
/// user, never through a symlink), the newest are kept while they number
/// fewer than `bound.files` and fit `bound.bytes` with `reserve`; all older
/// ones are removed, except one a run still writes (it holds a flock: it is
/// kept and counted). Returns how many files were removed and their bytes.
pub fn prune(dir: &Path, own: &OsStr, bound: &JobBound, reserve: u64) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    let euid = unsafe { libc::geteuid() };
    let mut files = Vec::new();
    for entry in entries {
        let Ok(entry) = entry else {
            continue;
        };
        let name = entry.file_name();
        if name == own || !name.to_str().is_some_and(|n| of_job(n, &bound.job)) {
            continue;
        }
        let path = entry.path();
        // lstat: a symlink is never followed, nor counted.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_file() && meta.uid() == euid {
            files.push((
                (meta.mtime(), meta.mtime_nsec()),
                meta.len(),
                meta.ino(),
                path,
            ));
        }
    }
    let (mut count, mut bytes, mut full) = (1, reserve, false);
    let (mut removed, mut freed) = (0, 0);
    // Newest first, by picking (a few files: no sort routine to link).
    while let Some(newest) = (0..files.len()).max_by_key(|&i| files[i].0) {
        let (_, len, ino, path) = files.swap_remove(newest);
        full = full || count >= bound.files || bytes.saturating_add(len) > bound.bytes;
        if full && remove_unless_written(&path, ino) {
            removed += 1;
            freed += len;
        } else {
            count += 1;
            bytes = bytes.saturating_add(len);
        }
    }
    (removed, freed)
}

/// Removes the file at `path` if it is still the inode `ino` and no run
/// holds its flock (one that still writes it).
fn remove_unless_written(path: &Path, ino: u64) -> bool {
    let Ok(file) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return false;
    };
    file.metadata().is_ok_and(|meta| meta.ino() == ino)
        && unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0
        && std::fs::remove_file(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unbounded(job: &str) -> JobBound {
        JobBound {
            job: job.to_string(),
            bytes: u64::MAX,
            files: u64::MAX,
        }
    }

    #[test]
    fn the_head_goes_live_the_rest_to_the_file_and_the_end_follows_the_line() {
        let dir = std::env::temp_dir().join(format!("sp_cap_{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("job.1.leftout");
        let _ = std::fs::remove_file(&path);
        // A 4 MiB cap: a 3.75 MiB head, 256 KiB of tail.
        let mut cap = OutputCap::new(4 << 20, 1 << 30, path.clone(), unbounded("job"));
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
        let mut cap = OutputCap::new(1 << 20, 1 << 30, path, unbounded("job"));
        let text = "é".repeat(600_000); // 1.2 MB
        let head = cap.admit(&text);
        assert!(head.len() <= (1 << 20) - (256 << 10));
        let end = cap.finish().expect("passed the cap");
        assert!(end.contains("the first 0 of the"), "{}", &end[..300]);
        assert!(end.contains("cannot create it"), "{}", &end[..300]);
    }
}

#[cfg(test)]
mod pruning {
    use super::*;
    use std::time::{Duration, SystemTime};

    /// A fresh directory under the temp dir, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!("sp_prune_{name}_{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            Dir(dir)
        }

        /// A file of `len` bytes, last modified `age` minutes ago.
        fn file(&self, name: &str, len: usize, age: u64) -> PathBuf {
            let path = self.0.join(name);
            let file = File::create(&path).expect("create");
            file.set_len(len as u64).expect("size");
            let when = SystemTime::now() - Duration::from_secs(60 * age);
            file.set_modified(when).expect("mtime");
            path
        }

        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(&self.0)
                .expect("list")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn bound(job: &str, mb: u64, files: u64) -> JobBound {
        JobBound {
            job: job.to_string(),
            bytes: mb << 20,
            files,
        }
    }

    #[test]
    fn a_jobs_files_are_told_from_other_jobs_and_other_files() {
        for name in [
            "a.r1.leftout",
            "a.12345.leftout",
            "a.r%2E1.leftout",
            "a.r1.leftout.1",
            "a.r1.leftout.12.gz",
            "a.r1.leftout.3.xz",
        ] {
            assert!(of_job(name, "a"), "{name} is job a's");
        }
        for name in [
            "a.log",
            "a.log.1",
            "a.leftout",
            "a..leftout",
            "a.r1.leftout2",
            "a.r1.leftout.",
            "a.r1.leftout.x",
            "a.r1.leftout.1.",
            "a.r1.leftout.1.leftout",
            "a.r1.leftout.1.gz.2",
            "a.r1.leftout-20261207",
            "ab.r1.leftout",
            // Job "a.b" (run "r1"), and job "a.b.leftout" (run "7").
            "a.b.r1.leftout",
            "a.b.leftout.7.leftout",
            "sp_wrapper_a.r1.leftout",
        ] {
            assert!(!of_job(name, "a"), "{name} is not job a's");
        }
        assert!(of_job("a.b.r1.leftout", "a.b"));
    }

    #[test]
    fn the_oldest_go_by_count_and_nothing_else_is_touched() {
        let dir = Dir::new("count");
        let outside = Dir::new("count_outside");
        for (i, age) in [50, 40, 30, 20, 10].iter().enumerate() {
            dir.file(&format!("job.run{i}.leftout"), 1000, *age);
        }
        dir.file("job.old.leftout.1", 1000, 500);
        dir.file("job.older.leftout.2.gz", 1000, 600);
        dir.file("job.log", 1000, 900);
        dir.file("job.x.run9.leftout", 1000, 900); // job "job.x"
        dir.file("other.run1.leftout", 1000, 900);
        // A symlink and a directory with a job's name: never followed, never removed.
        let target = outside.file("target", 1000, 900);
        std::os::unix::fs::symlink(&target, dir.0.join("job.link.leftout")).expect("symlink");
        std::fs::create_dir(dir.0.join("job.dir.leftout")).expect("dir");
        let own = dir.file("job.new.leftout", 0, 0);
        let (removed, freed) = prune(
            &dir.0,
            own.file_name().expect("name"),
            &bound("job", 1024, 3),
            1 << 20,
        );
        assert_eq!((removed, freed), (5, 5000));
        assert_eq!(
            dir.names(),
            [
                "job.dir.leftout",
                "job.link.leftout",
                "job.log",
                "job.new.leftout",
                "job.run3.leftout",
                "job.run4.leftout",
                "job.x.run9.leftout",
                "other.run1.leftout"
            ]
        );
        assert!(target.exists());
    }

    #[test]
    fn the_oldest_go_by_size_with_room_for_the_new_file() {
        let dir = Dir::new("size");
        let mb = 1 << 20;
        for (i, age) in [40, 30, 20, 10].iter().enumerate() {
            dir.file(&format!("job.run{i}.leftout"), mb, *age);
        }
        // 4 MiB in all, 2 MiB reserved for the new file: two old ones stay.
        let (removed, freed) = prune(
            &dir.0,
            OsStr::new("job.new.leftout"),
            &bound("job", 4, 100),
            2 * mb as u64,
        );
        assert_eq!((removed, freed), (2, 2 * mb as u64));
        assert_eq!(dir.names(), ["job.run2.leftout", "job.run3.leftout"]);
    }

    #[test]
    fn a_file_a_run_still_writes_is_kept_and_counted() {
        let dir = Dir::new("busy");
        let kept_limit = 1 << 20;
        let run = |name: &str| {
            OutputCap::new(1 << 20, kept_limit, dir.0.join(name), bound("job", 1024, 1))
        };
        // Two overlapping runs pass the cap; each keeps only its own file.
        let text = "x".repeat(1200 << 10);
        let mut first = run("job.first.leftout");
        first.admit(&text);
        let mut second = run("job.second.leftout");
        second.admit(&text);
        assert_eq!(
            dir.names(),
            ["job.first.leftout", "job.second.leftout"],
            "the first run still writes its file"
        );
        first.admit("more");
        assert!(
            first
                .finish()
                .expect("capped")
                .contains("kept on the minion in")
        );
        assert!(
            second
                .finish()
                .expect("capped")
                .contains("kept on the minion in")
        );
        // Both are done: the next run keeps only its own.
        let mut third = run("job.third.leftout");
        third.admit(&text);
        assert_eq!(dir.names(), ["job.third.leftout"]);
        let kept = std::fs::metadata(dir.0.join("job.third.leftout"))
            .expect("kept")
            .len();
        assert!(kept > 0, "the third run's own file is written");
    }
}
