//! A TCP proxy on 127.0.0.1:0 that moves at most `rate` bytes a second in
//! each direction: a slow link (VSAT, 3G, a throttled VPN) in front of the
//! real endpoint. Each direction is one thread that reads at most 512 bytes
//! at a time and forwards them on a schedule (a chunk of n bytes leaves n /
//! rate s after the one before), so the link never bursts above its rate; the kernel's
//! socket buffers in front of it fill as they would before a slow modem.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

pub struct ThrottlingProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Bytes forwarded from the client (the wrapper) to the server.
    upstream_bytes: Arc<AtomicU64>,
}

impl ThrottlingProxy {
    pub fn start(upstream: u16, rate: u64) -> ThrottlingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let port = listener.local_addr().expect("addr").port();
        // The link's own buffer: about 2 s of its traffic, as a modem or a
        // shaper holds, not the 128 KiB+ Linux gives a socket by default (16 s
        // at 8 KiB/s: longer than the server waits for a pong, 20 s with
        // what queues before it). Set on the listener, so accepted sockets
        // start with it (the window scale is fixed at the handshake).
        let buffer = libc::c_int::try_from(rate * 2).unwrap_or(libc::c_int::MAX);
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&listener),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&buffer as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let upstream_bytes = Arc::new(AtomicU64::new(0));
        {
            let (stop, upstream_bytes) = (stop.clone(), upstream_bytes.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let client = match listener.accept() {
                        Ok((client, _)) => client,
                        Err(_) => {
                            thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                    };
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        continue;
                    };
                    let _ = client.set_nonblocking(false);
                    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone())
                    else {
                        continue;
                    };
                    let (a, b) = (stop.clone(), stop.clone());
                    let counted = upstream_bytes.clone();
                    let uncounted = Arc::new(AtomicU64::new(0));
                    thread::spawn(move || pace(client, server, rate, &a, &counted));
                    thread::spawn(move || pace(server2, client2, rate, &b, &uncounted));
                }
            });
        }
        ThrottlingProxy {
            port,
            stop,
            upstream_bytes,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    pub fn upstream_bytes(&self) -> u64 {
        self.upstream_bytes.load(Ordering::SeqCst)
    }
}

impl Drop for ThrottlingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Copy `from` to `to` at `rate` bytes a second until either side ends.
fn pace(mut from: TcpStream, mut to: TcpStream, rate: u64, stop: &AtomicBool, moved: &AtomicU64) {
    // A read timeout so a stop is noticed on an idle connection.
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    let mut chunk = [0u8; 512];
    // When the next chunk may leave: each chunk of n bytes pushes it n / rate
    // further, from its own departure, so an idle spell banks no credit.
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let n = match from.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => break,
        };
        // The link's schedule (a rate, not a wait for a condition).
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        } else {
            next = now;
        }
        next += Duration::from_secs_f64(n as f64 / rate as f64);
        if to.write_all(&chunk[..n]).is_err() {
            break;
        }
        moved.fetch_add(n as u64, Ordering::SeqCst);
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
