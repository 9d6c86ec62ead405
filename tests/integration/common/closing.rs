//! A WebSocket server on 127.0.0.1:0 that completes each handshake and
//! closes the connection at once: a server that takes connections and never
//! keeps one, for the agent's reconnect loop to run thousands of times
//! (issue 24 item 4). It counts the connections it accepted.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

pub struct ClosingServer {
    port: u16,
    stop: Arc<AtomicBool>,
    handshakes: Arc<AtomicU64>,
}

impl ClosingServer {
    pub fn start() -> ClosingServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("closing server bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let handshakes = Arc::new(AtomicU64::new(0));
        {
            let (stop, handshakes) = (stop.clone(), handshakes.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Ok((stream, _)) = listener.accept() else {
                        thread::sleep(Duration::from_millis(1));
                        continue;
                    };
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    if let Ok(mut ws) = tungstenite::accept(stream) {
                        handshakes.fetch_add(1, Ordering::SeqCst);
                        let _ = ws.close(None);
                        let _ = ws.flush();
                    }
                    // Dropped: the socket closes.
                }
            });
        }
        ClosingServer {
            port,
            stop,
            handshakes,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// WebSocket handshakes completed so far.
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for ClosingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
