//! One value handed from a helper thread to a thread that waits for it with
//! a bound, or just the helper's end: the DNS lookups' answer
//! (`minion::host_names`), the panic hook's "logged" (`daemon`), the link thread's
//! return (`link`). `std::sync::mpsc` did this before, but std compiles all
//! three of its channel flavours for each value type, some 3 KB of binary
//! each; this is a mutex and `Thread::unpark`.

use std::sync::{Arc, Mutex};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

struct Shared<T> {
    value: Option<T>,
    /// The sender is dropped (after sending, or without): nothing more comes.
    sender_gone: bool,
    /// The thread in `recv_timeout`, to wake.
    waiter: Option<Thread>,
}

/// The helper thread's end: `send` once, or drop it to say "done".
pub struct Sender<T>(Arc<Mutex<Shared<T>>>);

/// The waiting end.
pub struct Receiver<T>(Arc<Mutex<Shared<T>>>);

pub fn oneshot<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Mutex::new(Shared {
        value: None,
        sender_gone: false,
        waiter: None,
    }));
    (Sender(Arc::clone(&shared)), Receiver(shared))
}

impl<T> Sender<T> {
    pub fn send(self, value: T) {
        if let Ok(mut shared) = self.0.lock() {
            shared.value = Some(value);
        }
        // (Drop wakes the waiter.)
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waiter = self.0.lock().ok().and_then(|mut shared| {
            shared.sender_gone = true;
            shared.waiter.take()
        });
        if let Some(waiter) = waiter {
            waiter.unpark();
        }
    }
}

impl<T> Receiver<T> {
    /// The value, once sent; `None` when the sender is dropped without
    /// sending, or when `bound` passes first.
    pub fn recv_timeout(&self, bound: Duration) -> Option<T> {
        let deadline = Instant::now() + bound;
        loop {
            {
                // (Poisoned: a thread panicked holding it, which aborts.)
                let Ok(mut shared) = self.0.lock() else {
                    return None;
                };
                if let Some(value) = shared.value.take() {
                    return Some(value);
                }
                if shared.sender_gone {
                    return None;
                }
                // Registered before the lock is released: a sender that
                // comes after this look finds us, and its unpark is kept
                // for the park below even if it comes before it.
                shared.waiter = Some(thread::current());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            thread::park_timeout(deadline - now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(30);

    #[test]
    fn the_value_sent_from_another_thread_arrives() {
        let (sender, receiver) = oneshot();
        let helper = thread::spawn(move || sender.send(42));
        assert_eq!(receiver.recv_timeout(LONG), Some(42));
        helper.join().unwrap();
    }

    #[test]
    fn a_sender_dropped_without_sending_ends_the_wait_at_once() {
        let (sender, receiver) = oneshot::<u8>();
        let helper = thread::spawn(move || drop(sender));
        let started = Instant::now();
        assert_eq!(receiver.recv_timeout(LONG), None);
        assert!(started.elapsed() < LONG);
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
