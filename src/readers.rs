//! The reader threads: one per job output pipe (one pipe for stdout and
//! stderr by default; two with `SP_OUTPUT=separate`). Each drains its pipe
//! as fast as the job writes, whether or not a server is reachable (the
//! supervisor only appends to the outbox, bounded by its spool; the event
//! channel between them holds 32 reads), decodes UTF-8 across reads
//! (`utf8.rs`) and sends `Event::Output` to the supervisor, then
//! `Event::StreamClosed` at EOF.
//!
//! Large reads (64 KiB) keep the per-byte cost constant and the number of
//! events low; there is no per-line work.

use std::fs::File;
use std::io::{self, Read};
use std::sync::mpsc::SyncSender;

use crate::messages::{Event, Stream};
use crate::utf8::Utf8Stream;

const READ_SIZE: usize = 64 * 1024;

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

pub fn spawn_reader(stream: Stream, mut pipe: File, events: SyncSender<Event>) -> io::Result<()> {
    std::thread::Builder::new()
        .name(stream.name().into())
        .stack_size(128 * 1024)
        .spawn(move || {
            let guard = ClosedGuard { stream, events };
            let mut decoder = Utf8Stream::new();
            let mut buffer = vec![0u8; READ_SIZE];
            loop {
                let count = match pipe.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::warn!("reading the job's {}: {e}", stream.name());
                        break;
                    }
                };
                let mut text = String::with_capacity(count + 4);
                decoder.decode(&buffer[..count], &mut text);
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
