//! Opening a path that must be a regular file, where what is at the path may
//! have been planted by someone else: the overlap lock file, the minion's
//! configuration, a dead daemon's spool in /tmp. One routine, so each check
//! is written (and reviewed) once:
//!
//! - always `O_NONBLOCK`, so a FIFO planted at the path cannot stall us at
//!   `open` (the caller clears it where it matters; for regular files it
//!   changes nothing);
//! - `O_NOFOLLOW` unless links are followed (Salt follows them for its own
//!   configuration; a symlink at our lock or spool path is refused);
//! - then, on the open file (no race with the path): a regular file, and
//!   where asked, no second hard link (`O_NOFOLLOW` does not stop a hard
//!   link to someone else's file, and kernels before 3.6 have no
//!   `fs.protected_hardlinks`) and owned by our effective user.

use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// What the file at the path must be.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rules {
    pub follow_links: bool,
    pub single_link: bool,
    pub owned_by_us: bool,
}

#[derive(Debug)]
pub enum Refused {
    /// `open` failed (`ELOOP`: a symlink where links are not followed).
    Open(io::Error),
    Stat(io::Error),
    NotRegular,
    HardLinked,
    NotOurs,
}

impl Refused {
    pub fn is_missing(&self) -> bool {
        matches!(self, Refused::Open(e) if e.kind() == io::ErrorKind::NotFound)
    }

    /// `open` itself failed for a reason of its own (not a symlink).
    pub fn is_open_error(&self) -> bool {
        matches!(self, Refused::Open(e) if e.raw_os_error() != Some(libc::ELOOP))
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Open(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                write!(f, "it is a symlink")
            }
            Refused::Open(e) => write!(f, "cannot open: {e}"),
            Refused::Stat(e) => write!(f, "cannot stat: {e}"),
            Refused::NotRegular => write!(f, "not a regular file"),
            Refused::HardLinked => write!(f, "it has other hard links"),
            Refused::NotOurs => write!(f, "owned by another user"),
        }
    }
}

/// Open `path` with `options` (read, write, create... as the caller needs)
/// and `rules`; the file and what `fstat` said of it.
pub fn open(
    path: &Path,
    options: &mut OpenOptions,
    rules: Rules,
) -> Result<(File, Metadata), Refused> {
    let flags = if rules.follow_links {
        libc::O_NONBLOCK
    } else {
        libc::O_NONBLOCK | libc::O_NOFOLLOW
    };
    let file = options
        .custom_flags(flags)
        .open(path)
        .map_err(Refused::Open)?;
    let meta = file.metadata().map_err(Refused::Stat)?;
    if !meta.file_type().is_file() {
        return Err(Refused::NotRegular);
    }
    if rules.single_link && meta.nlink() > 1 {
        return Err(Refused::HardLinked);
    }
    if rules.owned_by_us && meta.uid() != unsafe { libc::geteuid() } {
        return Err(Refused::NotOurs);
    }
    Ok((file, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_fifos_and_hard_links_are_refused_as_asked() {
        let dir = std::env::temp_dir().join(format!("sp_regular_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("file");
        std::fs::write(&file, "x").expect("write");
        let link = dir.join("link");
        std::os::unix::fs::symlink(&file, &link).expect("symlink");
        let hard = dir.join("hard");
        std::fs::hard_link(&file, &hard).expect("hard link");
        let fifo = dir.join("fifo");
        let name = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("c string");
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let read = || {
            let mut options = OpenOptions::new();
            options.read(true);
            options
        };
        let strict = Rules {
            single_link: true,
            owned_by_us: true,
            ..Rules::default()
        };
        assert!(matches!(
            open(&link, &mut read(), Rules::default()),
            Err(Refused::Open(_))
        ));
        assert!(
            open(
                &link,
                &mut read(),
                Rules {
                    follow_links: true,
                    ..Rules::default()
                }
            )
            .is_ok()
        );
        // (Returns at once: O_NONBLOCK.)
        assert!(matches!(
            open(&fifo, &mut read(), Rules::default()),
            Err(Refused::NotRegular)
        ));
        assert!(matches!(
            open(&hard, &mut read(), strict),
            Err(Refused::HardLinked)
        ));
        assert!(open(&hard, &mut read(), Rules::default()).is_ok());
        assert!(open(&dir.join("missing"), &mut read(), strict).is_err_and(|e| e.is_missing()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
