//! The overlap lock (`SP_ALLOW_OVERLAP=false`), taken by the guardian before
//! the daemon exists (by the agent itself with `--foreground`) and held, on
//! one open file shared by both, until no process of the job is left
//! (docs/architecture.md, "The guardian").
//!
//! Semantics (docs/configuration.md, "Overlap lock"):
//! - The lock is `flock(LOCK_EX)` on the lock file, which also holds the
//!   holder's PID as text (`"<pid>\n"`, the Python wrapper's format).
//! - The file is opened with `O_NOFOLLOW`: a symlink planted at the path is
//!   refused, never written through. Only regular files are used.
//! - After locking, the path must still name the locked inode; otherwise a
//!   finishing holder unlinked it meanwhile, and we start over. So N
//!   simultaneous launches give exactly one holder.
//! - A file with more than one hard link is refused: it may be someone
//!   else's file linked there, and we would truncate it.
//! - A file with a live PID but no flock was written by the Python wrapper
//!   (it never flocks): held. A dead PID or garbage: stale, taken over.
//! - On release the file is unlinked (if it is still ours), then closed.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::exit_codes::LaunchError;
use crate::os::regular_file;

pub struct Lock {
    file: File,
    path: PathBuf,
}

#[derive(Debug)]
pub enum LockError {
    /// Another live instance holds it.
    Held { pid: Option<i32> },
    /// The lock file could not be used (symlink, permissions, ...).
    Io { path: PathBuf, error: String },
}

fn io_error(path: &Path, what: &str, error: impl std::fmt::Display) -> LockError {
    LockError::Io {
        path: path.to_path_buf(),
        error: format!("{what}: {error}"),
    }
}

fn pid_alive(pid: i32) -> bool {
    // kill(pid, 0) checks existence; EPERM means it exists but is not ours.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

fn read_pid(file: &File) -> Option<i32> {
    // One `pread` of a small buffer: a PID is a few digits, and this is
    // smaller code than a reader over the file.
    let mut text = [0u8; 64];
    let read = file.read_at(&mut text, 0).ok()?;
    std::str::from_utf8(&text[..read]).ok()?.trim().parse().ok()
}

impl Lock {
    /// Take the lock at `path` for process `pid`.
    pub fn acquire(path: &Path, pid: i32) -> Result<Lock, LockError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| io_error(dir, "cannot create the lock directory", e))?;
            }
        }
        // A holder may unlink the file between our open and our flock; a few
        // rounds settle that race, the bound only stops a pathological loop.
        for _ in 0..100 {
            // Never a symlink (refused, not written through), never a file
            // with a second hard link: our lock file is never linked twice,
            // so a second name means someone else's file, which we must not
            // truncate.
            let rules = regular_file::Rules {
                single_link: true,
                ..regular_file::Rules::default()
            };
            let mut options = OpenOptions::new();
            options.read(true).write(true).create(true).mode(0o644);
            let (mut file, meta) =
                regular_file::open(path, &mut options, rules).map_err(|refused| {
                    let what = if refused.is_open_error() {
                        "cannot open the lock file"
                    } else {
                        "refusing to use it as the lock file"
                    };
                    io_error(path, what, refused)
                })?;
            use std::os::fd::AsRawFd;
            // flock, not fcntl locks: fcntl locks are per process and dropped by
            // any close of the file; flock belongs to this open file only.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let error = io::Error::last_os_error();
                if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    return Err(LockError::Held {
                        pid: read_pid(&file),
                    });
                }
                return Err(io_error(path, "flock", error));
            }
            // Still the file at `path`? (A finishing holder unlinks it.)
            match std::fs::symlink_metadata(path) {
                Ok(now) if now.dev() == meta.dev() && now.ino() == meta.ino() => {}
                _ => continue,
            }
            if let Some(holder) = read_pid(&file) {
                if holder != pid && pid_alive(holder) {
                    // Live PID without a flock: a Python wrapper holds it.
                    return Err(LockError::Held { pid: Some(holder) });
                }
            }
            let write = file
                .set_len(0)
                .and_then(|_| file.seek(SeekFrom::Start(0)))
                .and_then(|_| file.write_all(format!("{pid}\n").as_bytes()));
            write.map_err(|e| io_error(path, "cannot write the lock file", e))?;
            return Ok(Lock {
                file,
                path: path.to_path_buf(),
            });
        }
        Err(io_error(
            path,
            "lock file keeps changing",
            "gave up after 100 attempts",
        ))
    }

    /// Give the lock up: unlink the file if it is still ours, then close it.
    pub fn release(self) {
        if let (Ok(ours), Ok(now)) = (self.file.metadata(), std::fs::symlink_metadata(&self.path)) {
            if ours.dev() == now.dev() && ours.ino() == now.ino() {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// The job's overlap lock, unless overlap is allowed, for this process
/// (the guardian; with `--foreground`, the agent itself) and its children.
pub fn acquire_for_job(cfg: &Config) -> Result<Option<Lock>, LaunchError> {
    if cfg.allow_overlap {
        return Ok(None);
    }
    match Lock::acquire(&cfg.lockfile, std::process::id() as i32) {
        Ok(lock) => Ok(Some(lock)),
        Err(LockError::Held { pid }) => Err(LaunchError::Overlap {
            job: cfg.job_name.clone(),
            pid,
        }),
        Err(LockError::Io { path, error }) => Err(LaunchError::LockUnusable { path, error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sp_lock_{}_{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn second_holder_is_refused_and_release_frees() {
        let dir = temp("basic");
        let path = dir.join("job.lock");
        let me = std::process::id() as i32;
        let lock = Lock::acquire(&path, me).expect("first");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            format!("{me}\n")
        );
        assert!(
            matches!(Lock::acquire(&path, me), Err(LockError::Held { pid: Some(p) }) if p == me)
        );
        lock.release();
        assert!(!path.exists());
        Lock::acquire(&path, me).expect("after release").release();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stale_pid_is_taken_over_and_live_unlocked_pid_is_held() {
        let dir = temp("stale");
        let path = dir.join("job.lock");
        std::fs::write(&path, "999999999\n").expect("write");
        Lock::acquire(&path, 12345)
            .expect("stale taken over")
            .release();
        // A Python wrapper's lock: live PID (our parent), no flock.
        let parent = unsafe { libc::getppid() };
        std::fs::write(&path, format!("{parent}\n")).expect("write");
        assert!(
            matches!(Lock::acquire(&path, 12345), Err(LockError::Held { pid: Some(p) }) if p == parent)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn symlink_is_refused_and_its_target_untouched() {
        let dir = temp("symlink");
        let target = dir.join("precious");
        std::fs::write(&target, "keep me").expect("write");
        let path = dir.join("job.lock");
        std::os::unix::fs::symlink(&target, &path).expect("symlink");
        assert!(matches!(Lock::acquire(&path, 1), Err(LockError::Io { .. })));
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep me");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn hard_link_is_refused_and_its_target_untouched() {
        let dir = temp("hardlink");
        let target = dir.join("precious");
        std::fs::write(&target, "keep me").expect("write");
        let path = dir.join("job.lock");
        std::fs::hard_link(&target, &path).expect("hard link");
        assert!(matches!(Lock::acquire(&path, 1), Err(LockError::Io { .. })));
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep me");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
