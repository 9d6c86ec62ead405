//! The wire format (PROTOCOL.md): building the frames we send and decoding the
//! frames the server sends. Pure: no I/O, no threads, no clock (the caller
//! passes the time).
//!
//! Outbound frames are written by hand: the identity fields are escaped once,
//! and output data is escaped in a single pass straight into the frame buffer,
//! which is the only per-byte work on the hot output path. Inbound frames are
//! parsed with `serde_json` and validated field by field; anything malformed or
//! unknown is a `DecodeError` or `Inbound::Other`, never a panic.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::messages::{AckKind, Inbound, Stream};

/// Our version, as `start.wrapper_version` carries it (and `--version`):
/// Cargo.toml's, unless the build sets `SP_WRAPPER_VERSION` (only the e2e
/// suite does, for the N+1 of its upgrade test: tests/e2e/test_deploy.py;
/// cargo rebuilds when that variable changes).
pub const VERSION: &str = match option_env!("SP_WRAPPER_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};

/// Builds every frame we send. Holds the identity fields pre-escaped.
pub struct Encoder {
    /// `"job_name":"..","job_instance":"..","machine":".."`
    identity: String,
}

impl Encoder {
    pub fn new(job_name: &str, job_instance: &str, machine: &str) -> Self {
        let mut identity = String::with_capacity(64);
        identity.push_str("\"job_name\":");
        push_json_string(&mut identity, job_name);
        identity.push_str(",\"job_instance\":");
        push_json_string(&mut identity, job_instance);
        identity.push_str(",\"machine\":");
        push_json_string(&mut identity, machine);
        Self { identity }
    }

    fn begin(&self, kind: &str, now: SystemTime, extra_capacity: usize) -> String {
        self.begin_in(String::new(), kind, now, extra_capacity)
    }

    /// Start a frame in `frame` (an empty, possibly recycled buffer).
    fn begin_in(
        &self,
        mut frame: String,
        kind: &str,
        now: SystemTime,
        extra_capacity: usize,
    ) -> String {
        frame.reserve(160 + self.identity.len() + extra_capacity);
        frame.push_str("{\"type\":\"");
        frame.push_str(kind);
        frame.push_str("\",");
        frame.push_str(&self.identity);
        frame.push_str(",\"timestamp\":\"");
        push_timestamp(&mut frame, now);
        frame.push('"');
        frame
    }

    fn end(mut frame: String) -> String {
        frame.push('}');
        frame
    }

    pub fn connect(&self, now: SystemTime) -> String {
        Self::end(self.begin("connect", now, 0))
    }

    pub fn start(&self, now: SystemTime, pid: i32, version: &str) -> String {
        let mut frame = self.begin("start", now, version.len());
        let _ = write!(frame, ",\"pid\":{pid},\"version\":");
        push_json_string(&mut frame, version);
        Self::end(frame)
    }

    pub fn heartbeat(&self, now: SystemTime) -> String {
        Self::end(self.begin("heartbeat", now, 0))
    }

    /// An output frame, built in `buffer` (empty; see `frames::FramePool`),
    /// whose escaped `data` takes at most `max_data` bytes (at least one
    /// character): returns it and how many bytes of `data` it carries.
    pub fn output(
        &self,
        buffer: String,
        now: SystemTime,
        (stream, seq): (Stream, u64),
        data: &str,
        max_data: usize,
    ) -> (String, usize) {
        // Most output needs no escaping; reserve a little for what does.
        let reserve = (data.len() + data.len() / 16).min(max_data) + 16;
        let mut frame = self.begin_in(buffer, "output", now, reserve);
        let _ = write!(
            frame,
            ",\"stream\":\"{}\",\"seq\":{seq},\"data\":",
            stream.name()
        );
        let carried = push_json_prefix(&mut frame, data, max_data);
        (Self::end(frame), carried)
    }

    pub fn complete(&self, now: SystemTime, retcode: i32, seq: u64) -> String {
        let mut frame = self.begin("complete", now, 0);
        let _ = write!(frame, ",\"retcode\":{retcode},\"seq\":{seq}");
        Self::end(frame)
    }

    pub fn killed(&self, now: SystemTime) -> String {
        Self::end(self.begin("killed", now, 0))
    }

    pub fn sync_request(&self, now: SystemTime, last_acked_seq: i64, next_seq: u64) -> String {
        let mut frame = self.begin("sync_request", now, 0);
        let _ = write!(
            frame,
            ",\"last_acked_seq\":{last_acked_seq},\"next_seq\":{next_seq}"
        );
        Self::end(frame)
    }
}

/// Append `text` as a JSON string literal (with quotes), in one pass: runs of
/// bytes that need no escape are found eight bytes at a time and copied whole.
/// This is the only per-byte work on the output path besides copies.
pub fn push_json_string(out: &mut String, text: &str) {
    push_json_prefix(out, text, usize::MAX);
}

/// `push_json_string` of as much of `text` as fits in `max` bytes between
/// the quotes (at least one character, cut on a character boundary):
/// returns how many bytes of `text` it took. Escapes can make a text six
/// times longer (`\u0000`), so a message's frame is bounded by this, not by
/// its text.
///
/// Plain bytes are copied as they are checked, eight at a time: one pass
/// over the text, and no call to copy each line's run (a short `memcpy`
/// per line cost more than the rest of the escaping).
fn push_json_prefix(out: &mut String, text: &str, max: usize) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let bytes = text.as_bytes();
    let start = out.len();
    let limit = start.saturating_add(max);
    // Room for everything written below: each byte of text becomes at most
    // six, nothing passes `limit` but a first escape (six bytes).
    out.reserve(bytes.len().saturating_mul(6).min(max).saturating_add(8));
    let room = out.capacity();
    // SAFETY: the writes below stay within `room` (the bounds above), and
    // only whole characters of `text` (a cut in one is undone before the
    // length is set) and ASCII escapes are written, so the String stays
    // UTF-8.
    let out = unsafe { out.as_mut_vec() };
    let base = out.as_mut_ptr();
    let mut len = start;
    let put = |at: &mut usize, part: &[u8]| {
        debug_assert!(*at + part.len() <= room);
        unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), base.add(*at), part.len()) };
        *at += part.len();
    };
    let mut i = 0;
    while i < bytes.len() {
        while let Some(chunk) = bytes.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if has_escape(u64::from_le_bytes(word)) || len + 8 > limit {
                break;
            }
            put(&mut len, &word);
            i += 8;
        }
        let Some(&byte) = bytes.get(i) else { break };
        if !needs_escape(byte) {
            if len >= limit {
                break;
            }
            put(&mut len, &[byte]);
            i += 1;
            continue;
        }
        if i > 0 && len + 6 > limit {
            // The longest escape might not fit.
            break;
        }
        match byte {
            b'"' => put(&mut len, b"\\\""),
            b'\\' => put(&mut len, b"\\\\"),
            b'\n' => put(&mut len, b"\\n"),
            b'\r' => put(&mut len, b"\\r"),
            b'\t' => put(&mut len, b"\\t"),
            _ => put(
                &mut len,
                &[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(byte >> 4) as usize],
                    HEX[(byte & 0xf) as usize],
                ],
            ),
        }
        i += 1;
    }
    // Cut inside a character: undo its first bytes; but at least one
    // character goes (plain: an escape always goes first).
    while !text.is_char_boundary(i) {
        i -= 1;
        len -= 1;
    }
    if i == 0 && !bytes.is_empty() {
        i = text.chars().next().map_or(0, char::len_utf8);
        put(&mut len, &bytes[..i]);
    }
    put(&mut len, b"\"");
    // SAFETY: `len` bytes are written (above), within the capacity.
    unsafe { out.set_len(len) };
    i
}

fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Whether a word (eight bytes) holds a byte < 0x20, a `"` or a `\`: the
/// classic has-zero-byte test on each.
fn has_escape(v: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    // A byte is < 0x20 exactly when its top three bits are zero (UTF-8
    // bytes >= 0x80 have the top bit set, so they never match).
    let control = has_zero(v & 0xE0E0_E0E0_E0E0_E0E0);
    let quote = has_zero(v ^ (ONES * u64::from(b'"')));
    let backslash = has_zero(v ^ (ONES * u64::from(b'\\')));
    control | quote | backslash != 0
}

/// Append `now` as `2026-11-22T08:40:02.123456+00:00`: the only shape that
/// Python's `datetime.fromisoformat` accepts before 3.11 (a `Z` suffix makes
/// the server drop the whole frame).
pub fn push_timestamp(out: &mut String, now: SystemTime) {
    push_utc(out, now, Precision::Micros);
}

/// Append `now` as `2026-11-22T08:40:02.123456789Z` (RFC 3339, UTC, to the
/// nanosecond): the log file's time stamps.
pub fn push_log_timestamp(out: &mut String, now: SystemTime) {
    push_utc(out, now, Precision::Nanos);
}

/// The two shapes of a UTC time we write.
enum Precision {
    /// Microseconds and `+00:00`: the wire.
    Micros,
    /// Nanoseconds and `Z`: the log.
    Nanos,
}

fn push_utc(out: &mut String, now: SystemTime, precision: Precision) {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
    );
    let _ = match precision {
        Precision::Micros => write!(out, ".{:06}+00:00", since_epoch.subsec_micros()),
        Precision::Nanos => write!(out, ".{:09}Z", since_epoch.subsec_nanos()),
    };
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Why an inbound frame was rejected (logged at debug level, then ignored).
#[derive(Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

fn err<T>(what: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(what.into()))
}

/// A sequence number: a JSON integer. Anything else (a float, a string, a
/// number beyond i64) is rejected rather than guessed at.
fn seq_field(frame: &Value, name: &str) -> Result<Option<i64>, DecodeError> {
    match frame.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) => Ok(Some(v)),
            None => err(format!("{name} is not an integer")),
        },
        Some(_) => err(format!("{name} is not a number")),
    }
}

fn text_field(frame: &Value, name: &str) -> Result<Option<String>, DecodeError> {
    match frame.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => err(format!("{name} is not a string")),
    }
}

/// Decode one text frame from the server.
pub fn decode(text: &str) -> Result<Inbound, DecodeError> {
    let frame: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return err(format!("invalid JSON: {e}")),
    };
    if !frame.is_object() {
        return err("frame is not a JSON object");
    }
    let Some(kind) = text_field(&frame, "type")? else {
        return err("frame has no type");
    };
    Ok(match kind.as_str() {
        "ack" => {
            let ack_kind = match text_field(&frame, "ack_type")?.as_deref() {
                Some("connect") => AckKind::Connect,
                Some("start") => AckKind::Start,
                Some("output") => AckKind::Output,
                Some("complete") => AckKind::Complete,
                _ => AckKind::Other,
            };
            let seq = seq_field(&frame, "seq")?;
            if ack_kind == AckKind::Output && seq.is_none() {
                return err("output ack without seq");
            }
            Inbound::Ack {
                kind: ack_kind,
                seq,
            }
        }
        "nack" => match seq_field(&frame, "expected_seq")? {
            Some(expected_seq) => Inbound::Nack { expected_seq },
            None => return err("nack without expected_seq"),
        },
        "sync_response" => match seq_field(&frame, "last_seq")? {
            Some(last_seq) => Inbound::SyncResponse { last_seq },
            None => return err("sync_response without last_seq"),
        },
        "kill" => Inbound::Kill {
            job_instance: text_field(&frame, "job_instance")?,
            machine: text_field(&frame, "machine")?,
        },
        "error" => Inbound::Error {
            code: text_field(&frame, "code")?.unwrap_or_default(),
            message: text_field(&frame, "message")?.unwrap_or_default(),
        },
        other => Inbound::Other(other.chars().take(64).collect()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, micros: u32) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros.into())
    }

    #[test]
    fn timestamps_have_the_shape_python_parses() {
        let mut s = String::new();
        push_timestamp(&mut s, at(0, 0));
        assert_eq!(s, "1970-01-01T00:00:00.000000+00:00");
        s.clear();
        // 2026-11-22T08:40:02.123456+00:00
        push_timestamp(&mut s, at(1_795_336_802, 123_456));
        assert_eq!(s, "2026-11-22T08:40:02.123456+00:00");
        s.clear();
        push_timestamp(&mut s, at(951_782_400, 1)); // leap day 2000
        assert_eq!(s, "2000-02-29T00:00:00.000001+00:00");
    }

    /// Past the 32-bit `time_t` limit (2038-01-19T03:14:07Z) and past 2^32
    /// seconds (2106): run on the i686 and armv7 builds by ./build.sh test.
    #[test]
    fn timestamps_after_2038_and_2106_format_right() {
        let mut s = String::new();
        push_timestamp(&mut s, at(i32::MAX as u64, 999_999));
        assert_eq!(s, "2038-01-19T03:14:07.999999+00:00");
        s.clear();
        push_timestamp(&mut s, at(i32::MAX as u64 + 1, 0));
        assert_eq!(s, "2038-01-19T03:14:08.000000+00:00");
        s.clear();
        push_timestamp(&mut s, at(2_208_988_800, 42)); // 2040-01-01
        assert_eq!(s, "2040-01-01T00:00:00.000042+00:00");
        s.clear();
        push_timestamp(&mut s, at(u32::MAX as u64 + 1, 0));
        assert_eq!(s, "2106-02-07T06:28:16.000000+00:00");
        s.clear();
        push_log_timestamp(&mut s, at(2_208_988_800, 0) + Duration::from_nanos(7));
        assert_eq!(s, "2040-01-01T00:00:00.000000007Z");
    }

    #[test]
    fn json_strings_round_trip_through_serde() {
        let samples = [
            "",
            "plain",
            "quote \" back \\ slash",
            "ctl \u{0}\u{1}\u{1f}\t\r\n",
            "ünï 😀",
        ];
        for sample in samples {
            let mut out = String::new();
            push_json_string(&mut out, sample);
            let back: String = serde_json::from_str(&out).expect("valid JSON string");
            assert_eq!(back, sample);
        }
    }

    #[test]
    fn escaping_finds_every_special_byte_at_every_position() {
        for special in (0u8..0x20).chain([b'"', b'\\']) {
            for position in 0..20 {
                let mut chars: Vec<char> = "aé€😀bcdefghijklmnopqrstuvwxyz".chars().collect();
                chars.insert(position, char::from(special));
                let text: String = chars.into_iter().collect();
                let mut out = String::new();
                push_json_string(&mut out, &text);
                let back: String = serde_json::from_str(&out).expect("valid JSON");
                assert_eq!(back, text, "byte {special:#x} at {position}");
                assert!(
                    !out[1..out.len() - 1].bytes().any(|b| b < 0x20),
                    "raw control byte left"
                );
            }
        }
    }

    #[test]
    fn frames_carry_every_required_field_including_zero_values() {
        let enc = Encoder::new("job\"1", "inst", "host.example");
        let frames = [
            enc.connect(at(1, 0)),
            enc.start(at(1, 0), 42, "1.0.0"),
            enc.heartbeat(at(1, 0)),
            enc.output(String::new(), at(1, 0), (Stream::Stderr, 0), "a\nb", 64)
                .0,
            enc.complete(at(1, 0), 0, 0),
            enc.sync_request(at(1, 0), -1, 0),
            enc.killed(at(1, 0)),
        ];
        for frame in &frames {
            let v: Value = serde_json::from_str(frame).expect("frame is JSON");
            assert_eq!(v["job_name"], "job\"1");
            assert_eq!(v["job_instance"], "inst");
            assert_eq!(v["machine"], "host.example");
            assert!(
                v["timestamp"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("+00:00"))
            );
        }
        let out: Value = serde_json::from_str(&frames[3]).expect("json");
        assert_eq!(out["seq"], 0);
        assert_eq!(out["stream"], "stderr");
        assert_eq!(out["data"], "a\nb");
        let done: Value = serde_json::from_str(&frames[4]).expect("json");
        assert_eq!(done["retcode"], 0);
        assert_eq!(done["seq"], 0);
    }

    #[test]
    fn decodes_what_the_real_server_sends() {
        assert_eq!(
            decode(r#"{"type":"ack","ack_type":"output","seq":7,"timestamp":"x"}"#),
            Ok(Inbound::Ack {
                kind: AckKind::Output,
                seq: Some(7)
            })
        );
        assert_eq!(
            decode(
                r#"{"type":"nack","nack_type":"out_of_order","expected_seq":0,"received_seq":3}"#
            ),
            Ok(Inbound::Nack { expected_seq: 0 })
        );
        assert_eq!(
            decode(r#"{"type":"sync_response","last_seq":-1}"#),
            Ok(Inbound::SyncResponse { last_seq: -1 })
        );
        assert_eq!(
            decode(r#"{"type":"error","code":"JOB_NOT_FOUND","message":"gone"}"#),
            Ok(Inbound::Error {
                code: "JOB_NOT_FOUND".into(),
                message: "gone".into()
            })
        );
        assert!(matches!(
            decode(r#"{"type":"kill","job_instance":"i","machine":"m"}"#),
            Ok(Inbound::Kill { .. })
        ));
    }

    #[test]
    fn rejects_hostile_frames_without_panicking() {
        for bad in [
            "",
            "not json",
            "[1,2]",
            "42",
            r#"{"no":"type"}"#,
            r#"{"type":7}"#,
            r#"{"type":"ack","ack_type":"output"}"#,
            r#"{"type":"ack","ack_type":"output","seq":"7"}"#,
            r#"{"type":"ack","ack_type":"output","seq":1.5}"#,
            r#"{"type":"ack","ack_type":"output","seq":99999999999999999999999}"#,
            r#"{"type":"nack","expected_seq":null}"#,
            r#"{"type":"sync_response","last_seq":[]}"#,
            r#"{"type":"kill","job_instance":{}}"#,
        ] {
            assert!(decode(bad).is_err(), "accepted {bad:?}");
        }
        assert_eq!(
            decode(r#"{"type":"surprise"}"#),
            Ok(Inbound::Other("surprise".into()))
        );
    }

    /// A frame's data is bounded whatever the text: escapes can make it six
    /// times longer. The cut is on a character boundary, at least one
    /// character goes, and what is carried decodes to exactly that prefix.
    #[test]
    fn output_data_is_cut_to_its_bound_on_a_character_boundary() {
        let enc = Encoder::new("j", "i", "m");
        let cases: [(&str, usize); 6] = [
            ("\0\0\0\0", 13),
            ("abc\"def", 5),
            ("ééé", 3),
            ("\u{1}", 2),
            ("plain text", 100),
            ("x\ny\tz", 4),
        ];
        for (text, max) in cases {
            let (frame, carried) =
                enc.output(String::new(), at(1, 0), (Stream::Stdout, 3), text, max);
            let v: Value = serde_json::from_str(&frame).expect("frame is JSON");
            let data = v["data"].as_str().expect("data");
            assert_eq!(data, &text[..carried], "{text:?} within {max}");
            assert!(carried > 0, "{text:?}: at least one character");
            let escaped = serde_json::to_string(data).expect("escape").len() - 2;
            assert!(
                escaped <= max || data.chars().count() == 1,
                "{text:?}: {escaped} bytes of data for a bound of {max}"
            );
        }
        let (_, all) = enc.output(
            String::new(),
            at(1, 0),
            (Stream::Stdout, 3),
            "short",
            usize::MAX,
        );
        assert_eq!(all, 5);
        // Every bound over a text of every kind of byte: the prefix, then
        // the rest, carried in turn, make up the text exactly.
        let text = "plain words 12345678\"q\\b\n\u{1}é€𐍈\t\u{7f}tail of eight+";
        for max in 1..=80 {
            let (mut rest, mut joined) = (text, String::new());
            while !rest.is_empty() {
                let mut out = String::new();
                let carried = push_json_prefix(&mut out, rest, max);
                let data: String = serde_json::from_str(&out).expect("a JSON string");
                assert_eq!(data, rest[..carried], "bound {max}");
                assert!(
                    out.len() - 2 <= max || data.chars().count() == 1,
                    "bound {max}"
                );
                joined.push_str(&data);
                rest = &rest[carried..];
            }
            assert_eq!(joined, text, "bound {max}");
        }
    }
}
