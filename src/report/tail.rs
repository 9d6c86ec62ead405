//! The last bytes of a stream of text, in bounded memory: what the record
//! keeps of output it cannot take whole (past `SP_OUTPUT_MAX_MB`, or while
//! output is being lost), because the end of a job's output is where its
//! error is. One ring of bytes, never larger than the limit, whatever the
//! sizes of the writes (a `String` per write would cost its header and
//! allocation slack for every tiny write). A plain struct, used by
//! `outbox.rs` and `output_cap.rs`.

use std::collections::VecDeque;

pub struct Tail {
    /// The kept bytes, oldest first: always a suffix of the text pushed
    /// since the last `take`, starting on a character boundary.
    ring: VecDeque<u8>,
    limit: usize,
    /// Bytes that passed through and fell out of the front.
    pub dropped: u64,
}

impl Tail {
    pub fn new(limit: usize) -> Self {
        Tail {
            ring: VecDeque::new(),
            limit,
            dropped: 0,
        }
    }

    pub fn bytes(&self) -> usize {
        self.ring.len()
    }

    /// Keeps the longest suffix of everything pushed (since the last
    /// `take`) that fits the limit and starts on a character boundary.
    pub fn push(&mut self, text: &str) {
        let bytes = text.as_bytes();
        let skip = bytes.len().saturating_sub(self.limit);
        let bytes = &bytes[skip..];
        // At most the ring's length, as bytes.len() <= limit.
        let excess = (self.ring.len() + bytes.len()).saturating_sub(self.limit);
        // Byte by byte: as cheap as the copy that follows, and less code
        // than `drain`.
        for _ in 0..excess {
            self.ring.pop_front();
        }
        self.dropped += (skip + excess) as u64;
        let needed = self.ring.len() + bytes.len();
        if needed > self.ring.capacity() {
            // Grow by doubling for many small writes, never past the limit.
            let want = needed.max(self.ring.capacity() * 2).min(self.limit);
            self.ring.reserve_exact(want - self.ring.len());
        }
        self.ring.extend(bytes);
        // A cut inside a character leaves its continuation bytes (10xxxxxx)
        // in front: they go too.
        while self.ring.front().is_some_and(|&b| b & 0xC0 == 0x80) {
            self.ring.pop_front();
            self.dropped += 1;
        }
    }

    /// Everything held, oldest first, as one string; the tail is left empty
    /// (and its memory with the string).
    pub fn take(&mut self) -> String {
        let (front, back) = self.ring.as_slices();
        let mut bytes = Vec::with_capacity(front.len() + back.len());
        bytes.extend_from_slice(front);
        bytes.extend_from_slice(back);
        self.ring = VecDeque::new();
        // Always valid: a suffix of UTF-8 text cut on a character boundary.
        String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::xorshift::XorShift;

    #[test]
    fn keeps_the_last_bytes_on_character_boundaries_and_counts_the_rest() {
        let mut tail = Tail::new(10);
        tail.push("0123456");
        tail.push("789ab");
        assert_eq!((tail.bytes(), tail.dropped), (10, 2));
        tail.push("ééé"); // 6 bytes: cuts may not split a character
        assert!(tail.bytes() <= 10);
        let kept = tail.take();
        assert!(kept.ends_with("ééé"), "{kept}");
        assert_eq!(kept.len() as u64 + tail.dropped, 18);
        tail.push(&"x".repeat(25));
        assert_eq!(tail.take(), "x".repeat(10));
    }

    /// Memory is the limit plus a constant for any write pattern: ten
    /// million 1-byte writes, then 64 KiB writes, then both interleaved.
    #[test]
    fn memory_stays_at_the_limit_for_tiny_and_large_writes() {
        const LIMIT: usize = 256 * 1024;
        // What the struct holds besides the ring's allocation.
        const CONSTANT: usize = 64;
        let mut tail = Tail::new(LIMIT);
        let mut most = 0;
        for i in 0..10_000_000u32 {
            tail.push(if i % 2 == 0 { "a" } else { "b" });
            most = most.max(tail.ring.capacity());
        }
        assert!(most <= LIMIT + CONSTANT, "1-byte writes: capacity {most}");
        assert_eq!(tail.bytes(), LIMIT);
        assert_eq!(tail.dropped, 10_000_000 - LIMIT as u64);
        let block = "y".repeat(64 * 1024);
        for i in 0..100 {
            tail.push(&block);
            if i % 3 == 0 {
                tail.push("z");
            }
            most = most.max(tail.ring.capacity());
        }
        assert!(most <= LIMIT + CONSTANT, "64 KiB writes: capacity {most}");
        assert!(std::mem::size_of::<Tail>() <= CONSTANT);
        let kept = tail.take();
        assert_eq!(kept.len(), LIMIT);
        assert!(
            kept.ends_with(&(block + "z")),
            "the last write (i = 99) was a z"
        );
    }

    /// The longest suffix of `text` of at most `limit` bytes that starts on
    /// a character boundary: what `Tail` promises.
    fn expected_tail(text: &str, limit: usize) -> &str {
        let mut at = text.len().saturating_sub(limit);
        while !text.is_char_boundary(at) {
            at += 1;
        }
        &text[at..]
    }

    #[test]
    fn random_writes_keep_exactly_the_last_bytes_on_a_character_boundary() {
        let mut rng = XorShift::new(0x7a11_5eed);
        let pieces = ["a", "é", "€", "😀", "\n", "xyz"];
        for round in 0..300 {
            let limit = 1 + (rng.next_u64() % 300) as usize;
            let mut tail = Tail::new(limit);
            let mut written = String::new();
            for _ in 0..(rng.next_u64() % 60) {
                // Sizes from empty to several times the limit.
                let count = (rng.next_u64() % (3 * limit as u64 / 2 + 2)) as usize;
                let piece = pieces[(rng.next_u64() % pieces.len() as u64) as usize];
                let write: String = (0..count)
                    .map(|i| if i % 7 == 3 { "é" } else { piece })
                    .collect();
                tail.push(&write);
                written.push_str(&write);
                assert!(tail.ring.capacity() <= limit, "round {round}");
            }
            let want = expected_tail(&written, limit);
            assert_eq!(tail.bytes(), want.len(), "round {round}");
            assert_eq!(tail.dropped, (written.len() - want.len()) as u64);
            assert_eq!(tail.take(), want, "round {round}, limit {limit}");
            assert_eq!(tail.bytes(), 0);
        }
    }
}
