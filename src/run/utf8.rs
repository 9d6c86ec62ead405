//! Streaming UTF-8 decoding of the job's output (run by each reader thread).
//!
//! A pipe read can end in the middle of a multi-byte character. The decoder
//! keeps such an incomplete tail (at most 3 bytes) and joins it to the next
//! read, so characters are never split or mangled. Invalid bytes become U+FFFD
//! exactly as `String::from_utf8_lossy` would replace them in the whole
//! stream; an incomplete character at end of stream becomes one U+FFFD.

/// Decoder state for one stream.
#[derive(Default)]
pub struct Utf8Stream {
    carry: Vec<u8>,
}

impl Utf8Stream {
    pub fn new() -> Self {
        Self::default()
    }

    /// No incomplete character is waiting: the next bytes decode alone.
    pub fn holds_nothing(&self) -> bool {
        self.carry.is_empty()
    }

    /// Decode `input` (the next bytes of the stream) and append the text to `out`.
    pub fn decode(&mut self, input: &[u8], out: &mut String) {
        if self.carry.is_empty() {
            self.decode_slice(input, out);
        } else {
            // Rare (a character straddled two reads): join the tail and the
            // new bytes once, then decode normally.
            let mut joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(input);
            self.decode_slice(&joined, out);
        }
    }

    /// End of stream: an incomplete character left over is invalid.
    pub fn finish(&mut self, out: &mut String) {
        if !self.carry.is_empty() {
            self.carry.clear();
            out.push(char::REPLACEMENT_CHARACTER);
        }
    }

    fn decode_slice(&mut self, mut rest: &[u8], out: &mut String) {
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    return;
                }
                Err(err) => {
                    let (valid, after) = rest.split_at(err.valid_up_to());
                    // SAFETY-free: `valid_up_to` bytes are valid UTF-8 by contract.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match err.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                        None => {
                            // An incomplete character at the end: wait for more.
                            self.carry.extend_from_slice(after);
                            return;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(bytes: &[u8], piece_len: usize) -> String {
        let mut decoder = Utf8Stream::new();
        let mut out = String::new();
        for piece in bytes.chunks(piece_len) {
            decoder.decode(piece, &mut out);
        }
        decoder.finish(&mut out);
        out
    }

    #[test]
    fn every_split_point_matches_whole_stream_lossy_decoding() {
        let mut sample = "héllo wörld – ∑ 😀 日本語 ".repeat(3).into_bytes();
        sample.extend_from_slice(b"\xff bad \xe2\x82 cut \xf0\x9f\x98");
        let expected = String::from_utf8_lossy(&sample).into_owned();
        for piece_len in 1..=sample.len() {
            assert_eq!(
                decode_in_pieces(&sample, piece_len),
                expected,
                "piece {piece_len}"
            );
        }
    }

    #[test]
    fn split_four_byte_character_survives() {
        let bytes = "😀".as_bytes();
        let mut decoder = Utf8Stream::new();
        let mut out = String::new();
        decoder.decode(&bytes[..1], &mut out);
        decoder.decode(&bytes[1..3], &mut out);
        assert_eq!(out, "");
        decoder.decode(&bytes[3..], &mut out);
        assert_eq!(out, "😀");
    }

    #[test]
    fn truncated_character_at_end_is_one_replacement() {
        assert_eq!(decode_in_pieces(b"ab\xe2\x82", 3), "ab\u{fffd}");
    }
}
