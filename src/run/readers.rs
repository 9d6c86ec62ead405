//! The reader threads: one per job output pipe (one pipe for stdout and
//! stderr by default; two with `SP_OUTPUT=separate`). Each drains its pipe
//! as fast as the job writes, whether or not a server is reachable (the
//! supervisor only appends to the outbox, bounded by its spool; the event
//! channel between them holds 32 reads), decodes UTF-8 across reads
//! (`utf8.rs`) and sends `Event::Output` to the supervisor, then
//! `Event::StreamClosed` at EOF.
//!
//! Large reads (64 KiB) keep the per-byte cost constant and the number of
//! events low; there is no per-line work. What the pipe already holds
//! (`FIONREAD`) is read straight into the event's own buffer, which becomes
//! its text when it is whole UTF-8 (nearly always): no copy. The supervisor
//! hands each text's buffer back once it has taken the text (`recycle`), so
//! a burst reuses a few buffers instead of a fresh allocation per read
//! (under musl each is an `mmap` and `munmap`: page faults in the reader,
//! TLB shootdowns in the supervisor, about a tenth of the agent's CPU).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::io::AsRawFd;
use std::sync::mpsc::SyncSender;

use crate::messages::{Event, Stream};
use crate::os::threads::SpawnDetached;
use crate::run::utf8::Utf8Stream;
use crate::wire::frames::BufferPool;

/// As large as a pool keeps (`frames::MIN_KEPT`), so every read buffer is kept.
const READ_SIZE: usize = crate::wire::frames::MIN_KEPT;

/// Buffers of texts the supervisor is done with, for the next reads (the
/// reader takes one back per event it sends, so a few suffice).
static IDLE: BufferPool = BufferPool::new();

/// Give the buffer of an event's text back for a later read.
pub fn recycle(text: String) {
    give_back(text.into_bytes());
}

fn give_back(bytes: Vec<u8>) {
    IDLE.give_back(bytes);
}

/// An empty buffer of at least `READ_SIZE` bytes, recycled if one is idle.
fn take_buffer() -> Vec<u8> {
    IDLE.take().unwrap_or_else(|| Vec::with_capacity(READ_SIZE))
}

/// `bytes` decoded (after what the decoder holds), in a recycled buffer.
fn decoded(decoder: &mut Utf8Stream, bytes: &[u8]) -> String {
    // An empty buffer is valid UTF-8.
    let mut text = String::from_utf8(take_buffer()).unwrap_or_default();
    decoder.decode(bytes, &mut text);
    text
}

/// Sends `StreamClosed` when the thread ends, however it ends.
struct ClosedGuard {
    stream: Stream,
    events: SyncSender<Event>,
}

impl Drop for ClosedGuard {
    fn drop(&mut self) {
        let _ = self.events.send(Event::StreamClosed(self.stream));
    }
}

/// Bytes the pipe holds now (`FIONREAD`), at most `READ_SIZE`; 0 when it
/// is empty or cannot say.
fn bytes_ready(pipe: &File) -> usize {
    let mut ready: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer we pass.
    let asked = unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut ready) };
    if asked < 0 {
        return 0;
    }
    usize::try_from(ready).unwrap_or(0).min(READ_SIZE)
}

/// Read up to `len` bytes (that many are ready, at most `READ_SIZE`) into a
/// buffer of its own, which becomes the event's text.
fn read_new(pipe: &mut File, len: usize) -> io::Result<Vec<u8>> {
    let mut bytes = take_buffer();
    let len = len.min(bytes.capacity());
    // SAFETY: the kernel writes at most `len` bytes (within the empty
    // vector's capacity) into its spare capacity, and only the bytes it
    // reports become its contents.
    let count = unsafe { libc::read(pipe.as_raw_fd(), bytes.as_mut_ptr().cast(), len) };
    if count < 0 {
        return Err(io::Error::last_os_error());
    }
    unsafe { bytes.set_len(count as usize) };
    Ok(bytes)
}

pub fn spawn_reader(stream: Stream, mut pipe: File, events: SyncSender<Event>) -> io::Result<()> {
    std::thread::Builder::new()
        .name(stream.name().into())
        .stack_size(128 * 1024)
        .spawn_detached(move || {
            let guard = ClosedGuard { stream, events };
            let mut decoder = Utf8Stream::new();
            let mut buffer = vec![0u8; READ_SIZE];
            loop {
                // What the pipe holds already is read straight into the
                // text's own buffer: whole characters (nearly always) need
                // no copy. Else (an empty pipe: a read that waits) the
                // reusable buffer, then the decoder.
                let ready = bytes_ready(&pipe);
                let read = match ready {
                    0 => pipe.read(&mut buffer).map(|n| (n, None)),
                    ready => read_new(&mut pipe, ready).map(|b| (b.len(), Some(b))),
                };
                let (count, own) = match read {
                    Ok((0, _)) => break,
                    Ok(read) => read,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::warn!("reading the job's {}: {e}", stream.name());
                        break;
                    }
                };
                let text = match own {
                    Some(bytes) if decoder.holds_nothing() => match String::from_utf8(bytes) {
                        Ok(text) => text,
                        Err(e) => {
                            let bytes = e.into_bytes();
                            let text = decoded(&mut decoder, &bytes);
                            give_back(bytes);
                            text
                        }
                    },
                    own => {
                        let text =
                            decoded(&mut decoder, own.as_deref().unwrap_or(&buffer[..count]));
                        if let Some(bytes) = own {
                            give_back(bytes);
                        }
                        text
                    }
                };
                if !text.is_empty() && guard.events.send(Event::Output { stream, text }).is_err() {
                    return; // the supervisor is gone: the process is exiting
                }
            }
            let mut tail = String::new();
            decoder.finish(&mut tail);
            if !tail.is_empty() {
                let _ = guard.events.send(Event::Output { stream, text: tail });
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    fn next_text(events: &std::sync::mpsc::Receiver<Event>) -> Option<String> {
        match events.recv_timeout(Duration::from_secs(10)) {
            Ok(Event::Output { text, .. }) => Some(text),
            _ => None,
        }
    }

    /// Read straight into the text's buffer, a character cut between two
    /// reads and an invalid byte still decode as `from_utf8_lossy` would.
    #[test]
    fn ready_bytes_become_the_text_and_cut_characters_are_joined() {
        let (read_end, write_end) = crate::os::pipe::cloexec(0).expect("pipe");
        let mut writer = File::from(write_end);
        writer.write_all(b"a\xC3").expect("write");
        let (events, inbox) = std::sync::mpsc::sync_channel(8);
        spawn_reader(Stream::Stdout, File::from(read_end), events).expect("reader");
        assert_eq!(next_text(&inbox).as_deref(), Some("a"));
        writer.write_all(b"\xA9b\xFFc").expect("write");
        drop(writer);
        assert_eq!(next_text(&inbox).as_deref(), Some("éb\u{FFFD}c"));
        assert!(matches!(
            inbox.recv_timeout(Duration::from_secs(10)),
            Ok(Event::StreamClosed(Stream::Stdout))
        ));
    }
}
