//! The last bytes of a stream of text, in bounded memory: what the record
//! keeps of output it cannot take whole (past `SP_OUTPUT_MAX_MB`, or while
//! output is being lost), because the end of a job's output is where its
//! error is. A plain struct, used by `outbox.rs` and `output_cap.rs`.

use std::collections::VecDeque;

pub struct Tail {
    chunks: VecDeque<String>,
    bytes: usize,
    limit: usize,
    /// Bytes that passed through and fell out of the front.
    pub dropped: u64,
}

/// The first character boundary at or after `at`.
fn boundary_from(text: &str, mut at: usize) -> usize {
    while at < text.len() && !text.is_char_boundary(at) {
        at += 1;
    }
    at.min(text.len())
}

impl Tail {
    pub fn new(limit: usize) -> Self {
        Tail {
            chunks: VecDeque::new(),
            bytes: 0,
            limit,
            dropped: 0,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn push(&mut self, text: &str) {
        let skip = boundary_from(text, text.len().saturating_sub(self.limit));
        self.dropped += skip as u64;
        let text = &text[skip..];
        if text.is_empty() {
            return;
        }
        self.bytes += text.len();
        self.chunks.push_back(text.to_owned());
        while self.bytes > self.limit {
            let excess = self.bytes - self.limit;
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let cut = if front.len() <= excess {
                front.len()
            } else {
                boundary_from(front, excess)
            };
            if cut == front.len() {
                self.chunks.pop_front();
            } else {
                front.drain(..cut);
            }
            self.bytes -= cut;
            self.dropped += cut as u64;
        }
    }

    /// Everything held, oldest first, as one string; the tail is left empty.
    pub fn take(&mut self) -> String {
        let mut text = String::with_capacity(self.bytes);
        for chunk in self.chunks.drain(..) {
            text.push_str(&chunk);
        }
        self.bytes = 0;
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
