//! Reusable buffers: the one pool of idle buffers (`BufferPool`, also the
//! readers'), and output frames on loan to tungstenite.
//!
//! Output frames are shared by the supervisor (which fills them) and the
//! link thread (which hands them to tungstenite; tungstenite copies the
//! payload into its own buffer while masking it and then drops the message,
//! which puts the buffer back here).
//!
//! Why: an output frame is up to ~500 KiB, and allocations that large are
//! fresh `mmap`s, so a new buffer per frame costs page faults, page zeroing
//! and, on unmap, TLB shootdowns across our threads: measured as ~8% of the
//! wrapper's CPU at 160 MB/s. A handful of recycled buffers removes that.

use std::sync::{Arc, Mutex};

use tungstenite::Message;
use tungstenite::protocol::frame::Utf8Bytes;

/// How many idle buffers a pool keeps: enough for the link (or a reader) to
/// cycle through while the supervisor works, few enough to stay within the
/// budget.
const KEEP: usize = 4;
/// Buffers smaller than this (control frames) are not kept.
pub const MIN_KEPT: usize = 64 << 10;

/// Idle byte buffers kept for reuse: at most `KEEP`, none under `MIN_KEPT`.
/// The one pool mechanism: output frames (`FramePool`) and the readers'
/// buffers (`readers::recycle`) each have one.
pub struct BufferPool {
    idle: Mutex<Vec<Vec<u8>>>,
}

impl Default for BufferPool {
    fn default() -> Self {
        Self::new()
    }
}

impl BufferPool {
    pub const fn new() -> Self {
        BufferPool {
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle buffer (empty, its capacity at least `MIN_KEPT`), if any.
    pub fn take(&self) -> Option<Vec<u8>> {
        self.idle.lock().ok().and_then(|mut idle| idle.pop())
    }

    /// Keep `bytes` for a later `take`, unless it is small or the pool full.
    pub fn give_back(&self, mut bytes: Vec<u8>) {
        if bytes.capacity() < MIN_KEPT {
            return; // a small control frame: cheap to allocate, not worth keeping
        }
        bytes.clear();
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < KEEP {
                idle.push(bytes);
            }
        }
    }
}

#[derive(Clone)]
pub struct FramePool {
    idle: Arc<BufferPool>,
}

impl Default for FramePool {
    fn default() -> Self {
        FramePool {
            idle: Arc::new(BufferPool::new()),
        }
    }
}

/// A buffer on loan to tungstenite; returns to the pool when dropped.
struct Loaned {
    bytes: Vec<u8>,
    pool: FramePool,
}

impl AsRef<[u8]> for Loaned {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Loaned {
    fn drop(&mut self) {
        self.pool.idle.give_back(std::mem::take(&mut self.bytes));
    }
}

impl FramePool {
    /// An empty `String` to build a frame in, with a recycled buffer if one is idle.
    pub fn take(&self, capacity: usize) -> String {
        let mut bytes = self.idle.take().unwrap_or_default();
        bytes.reserve(capacity);
        // An empty Vec is valid UTF-8.
        String::from_utf8(bytes).unwrap_or_default()
    }

    /// Wrap a finished frame as a text message whose buffer comes back here.
    pub fn message(&self, frame: String) -> Message {
        let loaned = Loaned {
            bytes: frame.into_bytes(),
            pool: self.clone(),
        };
        let bytes = tungstenite::Bytes::from_owner(loaned);
        // SAFETY: the bytes are exactly those of a `String`, so valid UTF-8.
        Message::Text(unsafe { Utf8Bytes::from_bytes_unchecked(bytes) })
    }

    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.idle.idle.lock().map(|idle| idle.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_message_returns_its_buffer() {
        let pool = FramePool::default();
        let mut frame = pool.take(1 << 20);
        frame.push_str("{\"type\":\"output\"}");
        let capacity = frame.capacity();
        let message = pool.message(frame);
        assert_eq!(message.to_text().ok(), Some("{\"type\":\"output\"}"));
        assert_eq!(pool.idle(), 0);
        drop(message);
        assert_eq!(pool.idle(), 1);
        let again = pool.take(16);
        assert!(
            again.is_empty() && again.capacity() >= capacity,
            "the big buffer is reused"
        );
    }
}
