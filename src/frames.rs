//! Reusable buffers for output frames, shared by the supervisor (which fills
//! them) and the link thread (which hands them to tungstenite; tungstenite
//! copies the payload into its own buffer while masking it and then drops the
//! message, which puts the buffer back here).
//!
//! Why: an output frame is up to ~500 KiB, and allocations that large are
//! fresh `mmap`s, so a new buffer per frame costs page faults, page zeroing
//! and, on unmap, TLB shootdowns across our threads: measured as ~8% of the
//! wrapper's CPU at 160 MB/s. A handful of recycled buffers removes that.

use std::sync::{Arc, Mutex};

use tungstenite::Message;
use tungstenite::protocol::frame::Utf8Bytes;

/// How many idle buffers to keep: enough for the link to cycle through while
/// the supervisor refills the window, few enough to stay within the budget.
const KEEP: usize = 4;
/// Buffers smaller than this (control frames) are not kept.
const MIN_KEPT: usize = 64 << 10;

#[derive(Clone, Default)]
pub struct FramePool {
    idle: Arc<Mutex<Vec<Vec<u8>>>>,
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
        let mut bytes = std::mem::take(&mut self.bytes);
        if bytes.capacity() < MIN_KEPT {
            return; // a small control frame: cheap to allocate, not worth keeping
        }
        bytes.clear();
        if let Ok(mut idle) = self.pool.idle.lock() {
            if idle.len() < KEEP {
                idle.push(bytes);
            }
        }
    }
}

impl FramePool {
    /// An empty `String` to build a frame in, with a recycled buffer if one is idle.
    pub fn take(&self, capacity: usize) -> String {
        let recycled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut bytes = recycled.unwrap_or_default();
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
        self.idle.lock().map(|idle| idle.len()).unwrap_or(0)
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
