//! How fast output goes out, from how fast the server ACKs it. Plain state
//! with no clock, owned by the session (supervisor thread): the session
//! reports each output message it sends and the bytes each ACK retires;
//! this measures the delivery rate (bytes the server ACKed over the time
//! they took) and decides two bounds:
//!
//! - **bytes in flight** (`budget`): sent but not yet ACKed, at most what
//!   the link delivers in `FLIGHT_TIME`; and nothing more is sent while the
//!   oldest message in flight has waited that long (`may_send`).
//! - **message size** (`limit`): at most what the link delivers in
//!   `TARGET_FRAME` (`Outbox::set_send_limit`; batches are still sealed
//!   large, and cut to this when sent).
//!
//! Why ACKs and not the local socket: the bytes wait wherever the link is
//! narrow, in a router's, a shaper's or a VPN's queue as much as in our
//! socket, and the server's keepalive ping's pong and its ACKs wait behind
//! all of them (PROTOCOL.md, "Keepalive": the pong 20 s late and the server
//! closes the connection). Only an ACK shows that bytes got through. With
//! at most `FLIGHT_TIME` of output anywhere on the way, a pong waits seconds,
//! and so does each ACK (docs/delivery.md, "Slow links").
//!
//! Why messages follow the rate too: a message is all or nothing (the
//! server appends it once it has all of it, a reconnect sends it again
//! whole), and at 8 KiB/s one 500 KiB message takes a minute.
//!
//! The rate: for each message, the ACKed total and the time when it was sent
//! are kept; when it is ACKed, the bytes ACKed since over the time since is
//! one sample (as TCP's BBR measures delivery: never shorter than the
//! message's own round trip, so a burst of ACKs cannot fake a fast link).
//! A sample from a message sent while the job gave little to send (less
//! than half the budget in flight) says more about the job than the link:
//! it may raise the rate, never lower it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::report::outbox::MAX_BATCH_BYTES;

/// The bounds before anything is known of the link: 4 s at 8 KiB/s, well
/// inside the 30 s ACK check; one round trip on a fast link reaches 500 KiB.
pub const INITIAL_BATCH_BYTES: usize = 32 * 1024;
/// Never smaller: frame overhead (about 200 bytes of JSON) stays a small part.
pub const MIN_BATCH_BYTES: usize = 4 * 1024;
/// A message is what the link delivers in this time.
pub const TARGET_FRAME: Duration = Duration::from_secs(2);
/// At most this much of the link's time is in flight (the most a pong or
/// an ACK waits behind our output).
pub const FLIGHT_TIME: Duration = Duration::from_secs(4);
/// ... and never more than this many bytes (each in-flight message briefly
/// exists twice, as a batch and as a frame: this bounds the memory beyond
/// SP_BUFFER_MAX_MB).
pub const MAX_IN_FLIGHT_BYTES: usize = 4 << 20;

/// One output message in flight.
struct InFlight {
    /// The ACKed total once this message is ACKed.
    end: u64,
    /// The ACKed total, and the time it last grew, when this was sent.
    acked_then: u64,
    clock_then: Instant,
    sent_at: Instant,
    /// Sent with at least half the budget in flight: the link, not the
    /// job, set the pace.
    link_bound: bool,
}

pub struct Pacer {
    /// Bytes ACKed, in total.
    acked: u64,
    /// When `acked` last grew, or sending began with nothing in flight.
    delivered_at: Option<Instant>,
    in_flight: VecDeque<InFlight>,
    /// Bytes sent and not ACKed (the sum over `in_flight`).
    in_flight_bytes: u64,
    /// Delivery rate, bytes a second; None until measured.
    rate: Option<u64>,
    limit: usize,
}

impl Default for Pacer {
    fn default() -> Self {
        Self::new()
    }
}

impl Pacer {
    pub fn new() -> Self {
        Pacer {
            acked: 0,
            delivered_at: None,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            rate: None,
            limit: INITIAL_BATCH_BYTES,
        }
    }

    /// The current bound on one message's text, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The measured delivery rate in bytes a second, if any.
    pub fn rate(&self) -> Option<u64> {
        self.rate
    }

    /// The most bytes of output in flight (one message always may be).
    pub fn budget(&self) -> usize {
        self.rate.map_or(INITIAL_BATCH_BYTES, |rate| {
            clamp(per(rate, FLIGHT_TIME), MIN_BATCH_BYTES, MAX_IN_FLIGHT_BYTES)
        })
    }

    /// Whether another message may go now: not while the oldest in flight
    /// has waited `FLIGHT_TIME` (the link is slower than measured).
    pub fn may_send(&self, now: Instant) -> bool {
        self.in_flight
            .front()
            .is_none_or(|oldest| now < oldest.sent_at + FLIGHT_TIME)
    }

    /// An output message of `bytes` was sent.
    pub fn on_sent(&mut self, bytes: usize, now: Instant) {
        if self.in_flight.is_empty() {
            // An idle spell is no delivery time.
            self.delivered_at = Some(now);
        }
        self.in_flight_bytes += bytes as u64;
        self.in_flight.push_back(InFlight {
            end: self.acked + self.in_flight_bytes,
            acked_then: self.acked,
            clock_then: self.delivered_at.unwrap_or(now),
            sent_at: now,
            link_bound: self.in_flight_bytes.saturating_mul(2) >= self.budget() as u64,
        });
    }

    /// An ACK retired `bytes` of output. Returns the new message bound when
    /// it changed.
    pub fn on_acked(&mut self, bytes: usize, now: Instant) -> Option<usize> {
        self.acked += bytes as u64;
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(bytes as u64);
        self.delivered_at = Some(now);
        let mut newest = None;
        while self.in_flight.front().is_some_and(|m| m.end <= self.acked) {
            newest = self.in_flight.pop_front();
        }
        let message = newest?;
        let took = now
            .saturating_duration_since(message.clock_then)
            .as_micros() as u64;
        let delivered = self.acked - message.acked_then;
        // Integer arithmetic in u64: float code would add ~30 KiB to the
        // binary, u128 division some more.
        let sample = delivered.saturating_mul(1_000_000) / took.max(1);
        if !message.link_bound && self.rate.is_some_and(|rate| sample < rate) {
            return None;
        }
        self.rate = Some(sample);
        // Within a quarter of the bound, keep it: the rate wobbles, and the
        // log says each change.
        let wanted = clamp(per(sample, TARGET_FRAME), MIN_BATCH_BYTES, MAX_BATCH_BYTES);
        let (low, high) = (self.limit - self.limit / 4, self.limit + self.limit / 4);
        let change = wanted < low || wanted > high || wanted == MAX_BATCH_BYTES;
        (change && wanted != self.limit).then(|| {
            self.limit = wanted;
            wanted
        })
    }

    /// Nothing is in flight any more (the connection ended, or the server
    /// asked for a resend): what is sent again is reported again.
    pub fn forget_in_flight(&mut self) {
        self.in_flight.clear();
        self.in_flight_bytes = 0;
    }
}

/// What `rate` bytes a second move in `time`.
fn per(rate: u64, time: Duration) -> u64 {
    rate.saturating_mul(time.as_millis() as u64) / 1000
}

fn clamp(bytes: u64, low: usize, high: usize) -> usize {
    usize::try_from(bytes)
        .unwrap_or(usize::MAX)
        .clamp(low, high)
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(m: u64) -> Duration {
        Duration::from_millis(m)
    }

    #[test]
    fn a_fast_link_reaches_the_full_message_size_and_budget_in_one_round_trip() {
        let mut pacer = Pacer::new();
        let t = Instant::now();
        assert_eq!(pacer.budget(), INITIAL_BATCH_BYTES);
        pacer.on_sent(INITIAL_BATCH_BYTES, t);
        assert!(pacer.may_send(t));
        assert_eq!(
            pacer.on_acked(INITIAL_BATCH_BYTES, t + ms(2)),
            Some(MAX_BATCH_BYTES)
        );
        assert_eq!(pacer.budget(), MAX_IN_FLIGHT_BYTES);
    }

    #[test]
    fn a_slow_deep_link_gets_two_seconds_a_message_and_four_in_flight() {
        // 8 KiB/s, and the bytes wait in a queue further on: the local
        // socket empties at once, only the ACKs show the speed.
        let mut pacer = Pacer::new();
        let t = Instant::now();
        pacer.on_sent(64 * 1024, t);
        assert_eq!(pacer.on_acked(64 * 1024, t + ms(8000)), Some(16 * 1024));
        assert_eq!(pacer.budget(), 32 * 1024);
        // Two messages of 16 KiB in flight, ACKed 2 s apart: the same.
        let t = t + ms(8000);
        pacer.on_sent(16 * 1024, t);
        pacer.on_sent(16 * 1024, t);
        assert_eq!(pacer.on_acked(16 * 1024, t + ms(2000)), None);
        pacer.on_sent(16 * 1024, t + ms(2000));
        assert_eq!(pacer.on_acked(16 * 1024, t + ms(4000)), None);
        assert_eq!(pacer.rate(), Some(8192));
        // A crawl: never below the floor.
        let t = t + ms(4000);
        assert_eq!(
            pacer.on_acked(16 * 1024, t + ms(60_000)),
            Some(MIN_BATCH_BYTES)
        );
        assert_eq!(pacer.budget(), MIN_BATCH_BYTES);
    }

    #[test]
    fn nothing_more_goes_while_the_oldest_message_has_waited_the_flight_time() {
        let mut pacer = Pacer::new();
        let t = Instant::now();
        pacer.on_sent(1000, t);
        assert!(pacer.may_send(t + FLIGHT_TIME - ms(1)));
        assert!(!pacer.may_send(t + FLIGHT_TIME));
        pacer.on_acked(1000, t + FLIGHT_TIME + ms(1));
        assert!(pacer.may_send(t + FLIGHT_TIME + ms(1)));
    }

    #[test]
    fn a_burst_of_acks_and_a_quiet_job_do_not_fake_the_rate() {
        let mut pacer = Pacer::new();
        let t = Instant::now();
        pacer.on_sent(64 * 1024, t);
        pacer.on_acked(64 * 1024, t + ms(8000));
        let t = t + ms(8000);
        // Two messages whose ACKs arrive together after 4 s: 8 KiB/s still,
        // not 16 KiB in a millisecond.
        pacer.on_sent(16 * 1024, t);
        pacer.on_sent(16 * 1024, t);
        pacer.on_acked(16 * 1024, t + ms(4000));
        pacer.on_acked(16 * 1024, t + ms(4001));
        assert!(pacer.rate().is_some_and(|r| r < 9000), "{:?}", pacer.rate());
        // A quiet job's line, ACKed after a round trip: a slow sample from a
        // message the job, not the link, kept small leaves the rate alone.
        let t = t + ms(5000);
        pacer.on_sent(100, t);
        assert_eq!(pacer.on_acked(100, t + ms(100)), None);
        assert!(pacer.rate().is_some_and(|r| r > 8000), "{:?}", pacer.rate());
        // A reconnect forgets what was in flight; the rate stays.
        pacer.on_sent(4096, t);
        pacer.forget_in_flight();
        assert!(pacer.may_send(t + ms(60_000)));
        assert_eq!(pacer.on_acked(0, t + ms(60_000)), None);
    }
}
