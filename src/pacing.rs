//! How large an `output` message may be, following how fast the link moves
//! frames. Plain state with no clock, owned by the session (supervisor
//! thread): the link thread times each frame it sends (`LinkEvent::Sent`,
//! from the first byte handed to the kernel until the peer's TCP has
//! acknowledged the last), and this decides the outbox's send limit: the
//! most text one message carries as it goes out (`Outbox::set_send_limit`;
//! batches are still sealed large, and cut to this when sent).
//!
//! Why: a message is all or nothing. The server appends it only once it has
//! all of it, a reconnect sends it again whole, and every liveness check
//! counts whole messages (an ACK within 30 s, delivery progress within 60 s
//! of the job's end; docs/delivery.md). At 8 KiB/s (VSAT, 3G, a throttled
//! VPN) one 500 KiB message takes a minute: it would never count as progress
//! in time. On a fast link, few large messages keep the server's per-message
//! cost low. So messages go out at most `INITIAL_BATCH_BYTES` (a link of unknown
//! speed), shrink to what the link moves in `TARGET_FRAME` when one takes
//! longer than `SLOW_FRAME`, and double (up to `outbox::MAX_BATCH_BYTES`)
//! each time two nearly full ones in a row take under `FAST_FRAME`.
//!
//! Only the link's own speed counts: the time the server takes to ACK is not
//! measured here, because a slow server (its cost per message grows with the
//! output so far, PROTOCOL.md) would only be slowed further by more, smaller
//! messages.

use std::time::Duration;

use crate::outbox::MAX_BATCH_BYTES;

/// The bound before anything is known of the link: 8 s at 8 KiB/s, well
/// inside the 30 s ACK check; a few round trips on a fast link reach 500 KiB.
pub const INITIAL_BATCH_BYTES: usize = 64 * 1024;
/// Never smaller: at 1 KiB/s still 4 s a message, and frame overhead (about
/// 200 bytes of JSON) stays a small part.
pub const MIN_BATCH_BYTES: usize = 4 * 1024;
/// A frame that took longer than this makes the bound shrink.
pub const SLOW_FRAME: Duration = Duration::from_secs(4);
/// A nearly full frame faster than this makes the bound grow.
pub const FAST_FRAME: Duration = Duration::from_secs(1);
/// What a shrunk bound aims at: the link moves one message in this time.
pub const TARGET_FRAME: Duration = Duration::from_secs(2);

pub struct Pacer {
    limit: usize,
    /// Nearly full frames in a row that were fast.
    fast_in_a_row: u32,
}

/// Fast frames in a row before the bound grows. One is not enough: the
/// peer's TCP acknowledges in bursts as its receive window opens (a slow
/// frame's last bytes, then the next frame at once, within 50 ms), so on a
/// slow link a frame can look fast right after a slow one.
const FAST_IN_A_ROW: u32 = 2;

impl Pacer {
    pub fn new() -> Self {
        Pacer {
            limit: INITIAL_BATCH_BYTES,
            fast_in_a_row: 0,
        }
    }

    /// The current bound on one message's text, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A frame of `bytes` took `took` on the link. Returns the new bound
    /// when it changed.
    pub fn on_frame_sent(&mut self, bytes: usize, took: Duration) -> Option<usize> {
        let nearly_full = bytes.saturating_mul(2) >= self.limit;
        if took >= FAST_FRAME {
            self.fast_in_a_row = 0;
        } else if nearly_full {
            self.fast_in_a_row += 1;
        }
        let wanted = if took > SLOW_FRAME {
            // What the link moves in TARGET_FRAME, never more than now: frames
            // sealed under the old bound are still arriving and say the same.
            let millis = took.as_millis().max(1);
            let fits = (bytes as u128 * TARGET_FRAME.as_millis() / millis) as usize;
            fits.min(self.limit)
        } else if self.fast_in_a_row >= FAST_IN_A_ROW {
            self.fast_in_a_row = 0;
            self.limit.saturating_mul(2)
        } else {
            self.limit
        };
        let wanted = wanted.clamp(MIN_BATCH_BYTES, MAX_BATCH_BYTES);
        (wanted != self.limit).then(|| {
            self.limit = wanted;
            wanted
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_fast_link_reaches_the_full_message_size_in_a_few_frames() {
        let mut pacer = Pacer::new();
        let mut steps = 0;
        while pacer.limit() < MAX_BATCH_BYTES {
            let full = pacer.limit();
            assert_eq!(pacer.on_frame_sent(full, Duration::from_millis(3)), None);
            let grown = pacer.on_frame_sent(full, Duration::from_millis(3));
            assert!(grown.is_some(), "{full}");
            steps += 1;
        }
        assert_eq!(steps, 3, "64 -> 128 -> 256 -> 500 KiB, two frames each");
        assert_eq!(pacer.on_frame_sent(MAX_BATCH_BYTES, Duration::ZERO), None);
        assert_eq!(pacer.on_frame_sent(MAX_BATCH_BYTES, Duration::ZERO), None);
    }

    #[test]
    fn a_slow_link_gets_messages_it_moves_in_two_seconds_and_no_smaller() {
        let mut pacer = Pacer::new();
        // 64 KiB at 8 KiB/s: 8 s.
        assert_eq!(pacer.on_frame_sent(64 * 1024, secs(8)), Some(16 * 1024));
        // More frames sealed under the old bound, as slow: the same answer,
        // no halving spiral down to the floor.
        assert_eq!(pacer.on_frame_sent(64 * 1024, secs(8)), None);
        assert_eq!(pacer.limit(), 16 * 1024);
        // 16 KiB in 2 s: right where it should be.
        assert_eq!(pacer.on_frame_sent(16 * 1024, secs(2)), None);
        // A crawl: never below the floor.
        assert_eq!(
            pacer.on_frame_sent(16 * 1024, secs(60)),
            Some(MIN_BATCH_BYTES)
        );
        assert_eq!(pacer.on_frame_sent(4 * 1024, secs(60)), None);
    }

    #[test]
    fn it_grows_back_when_the_link_is_fast_again_but_not_on_small_frames_or_bursts() {
        let ms = Duration::from_millis;
        let mut pacer = Pacer::new();
        pacer.on_frame_sent(64 * 1024, secs(16));
        assert_eq!(pacer.limit(), 8 * 1024);
        // A quiet job's small messages say nothing about the link's speed.
        assert_eq!(pacer.on_frame_sent(8 * 1024, ms(100)), None);
        assert_eq!(pacer.on_frame_sent(100, ms(1)), None);
        assert_eq!(pacer.on_frame_sent(8 * 1024, ms(100)), Some(16 * 1024));
        // Between fast and slow: keep.
        assert_eq!(pacer.on_frame_sent(16 * 1024, secs(3)), None);
        // Slow frames, each followed by one acknowledged at once (the peer's
        // TCP window opening): not a fast link.
        for _ in 0..3 {
            assert_eq!(pacer.on_frame_sent(16 * 1024, secs(2)), None);
            assert_eq!(pacer.on_frame_sent(16 * 1024, ms(50)), None);
        }
        assert_eq!(pacer.limit(), 16 * 1024);
    }
}
