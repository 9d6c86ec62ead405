//! Close-on-exec pipes: the one `pipe2` wrapper, for the launcher's status
//! pipe, the guardian's pipe, the job's output pipe and the link's wake
//! pipe. `O_CLOEXEC` from the start (pipe2, Linux 2.6.27+), so no pipe of
//! ours leaks into the job or into a process another thread forks meanwhile.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// A close-on-exec pipe, `(read end, write end)`, with `extra_flags`
/// (`O_NONBLOCK` or 0) on both ends.
pub fn cloexec(extra_flags: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | extra_flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are new and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
