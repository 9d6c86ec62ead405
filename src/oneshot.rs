//! One value handed from a helper thread to the thread that waits for it,
//! with a bound on the wait: the DNS lookups' answer (`machine_id`) and the
//! panic hook's "logged" (`daemon`). `std::sync::mpsc` did this before, but
//! std compiles all three of its channel flavours for each value type, some
//! 3 KB of binary each; this is a mutex slot and `Thread::unpark`.
//! A send after the bound has passed wakes the waiter from whatever park it
//! is in then; std's parks (its channels) all tolerate such a wake-up.

use std::sync::{Arc, Mutex};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// The helper thread's end: `send` once.
pub struct Sender<T> {
    slot: Arc<Mutex<Option<T>>>,
    waiter: Thread,
}

/// The waiting thread's end; only the thread that called `oneshot` may wait
/// (it is the one `send` wakes).
pub struct Receiver<T> {
    slot: Arc<Mutex<Option<T>>>,
}

/// A sender and a receiver; the calling thread is the one that waits.
pub fn oneshot<T>() -> (Sender<T>, Receiver<T>) {
    let slot = Arc::new(Mutex::new(None));
    let sender = Sender {
        slot: Arc::clone(&slot),
        waiter: thread::current(),
    };
    (sender, Receiver { slot })
}

impl<T> Sender<T> {
    pub fn send(self, value: T) {
        if let Ok(mut slot) = self.slot.lock() {
            *slot = Some(value);
        }
        self.waiter.unpark();
    }
}

impl<T> Receiver<T> {
    /// The value, once sent; `None` if `bound` passes first.
    pub fn recv_timeout(self, bound: Duration) -> Option<T> {
        let deadline = Instant::now() + bound;
        loop {
            // (A poisoned slot: the sender panicked, which aborts anyway.)
            if let Some(value) = self.slot.lock().ok().and_then(|mut slot| slot.take()) {
                return Some(value);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            // Wakes at the unpark, even one that came before this park.
            thread::park_timeout(deadline - now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_sent_from_another_thread_arrives() {
        let (sender, receiver) = oneshot();
        let helper = thread::spawn(move || sender.send(42));
        assert_eq!(receiver.recv_timeout(Duration::from_secs(30)), Some(42));
        helper.join().unwrap();
    }

    #[test]
    fn a_value_never_sent_is_waited_for_until_the_bound() {
        let (sender, receiver) = oneshot::<u8>();
        let started = Instant::now();
        assert_eq!(receiver.recv_timeout(Duration::from_millis(50)), None);
        assert!(started.elapsed() >= Duration::from_millis(50));
        drop(sender);
    }
}
