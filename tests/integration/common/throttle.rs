//! TCP proxies on 127.0.0.1:0 that move at most `rate` bytes a second in
//! each direction: a slow link (VSAT, 3G, a throttled VPN) in front of the
//! real endpoint. Each direction forwards at most 512 bytes at a time on a
//! schedule (a chunk of n bytes leaves n / rate s after the one before), so
//! the link never bursts above its rate.
//!
//! Two kinds of buffering: `start` reads only as fast as it forwards, so the
//! kernel's socket buffers in front of it fill as they would before a slow
//! modem (a shallow link: the sender's `TIOCOUTQ` sees the link's speed);
//! `deep` takes everything the sender offers at once into an unbounded
//! queue and trickles it on (a router's, a shaper's or a VPN's queue: the
//! sender's socket empties at once and sees nothing of the link's speed).
//! A deep proxy delivers what it queued even after the sender has closed,
//! as a real queue does, and records how much it ever held. It can also
//! hold back what the server says (`hold_downstream`): ACKs that come late
//! while our messages still reach the server.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// Until when the server's frames wait, on connections up to which count.
type Hold = Arc<Mutex<Option<(u64, Instant)>>>;

pub struct ThrottlingProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Bytes forwarded from the client (the wrapper) to the server.
    upstream_bytes: Arc<AtomicU64>,
    /// Deep proxies: the most bytes from the client ever queued at once.
    upstream_queue_peak: Arc<AtomicU64>,
    /// Connections accepted.
    connections: Arc<AtomicU64>,
    /// Deep proxies: what the server sends on the connections accepted so
    /// far (up to this count) waits until then (`hold_downstream`).
    hold: Hold,
}

impl ThrottlingProxy {
    /// A shallow link: the proxy reads only as fast as it forwards.
    pub fn start(upstream: u16, rate: u64) -> ThrottlingProxy {
        Self::spawn(upstream, rate, false)
    }

    /// A deep link: everything offered is queued at once, then trickled on.
    pub fn deep(upstream: u16, rate: u64) -> ThrottlingProxy {
        Self::spawn(upstream, rate, true)
    }

    fn spawn(upstream: u16, rate: u64, deep: bool) -> ThrottlingProxy {
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
        let upstream_queue_peak = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let hold: Hold = Arc::new(Mutex::new(None));
        {
            let (stop, upstream_bytes) = (stop.clone(), upstream_bytes.clone());
            let (peak, connections) = (upstream_queue_peak.clone(), connections.clone());
            let hold = hold.clone();
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let client = match listener.accept() {
                        Ok((client, _)) => client,
                        Err(_) => {
                            thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                    };
                    let index = connections.fetch_add(1, Ordering::SeqCst) + 1;
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        continue;
                    };
                    let _ = client.set_nonblocking(false);
                    if deep {
                        let (up, down) = (stop.clone(), stop.clone());
                        let (counted, peak) = (upstream_bytes.clone(), peak.clone());
                        let (client2, server2) = (client.try_clone(), server.try_clone());
                        let (Ok(client2), Ok(server2)) = (client2, server2) else {
                            continue;
                        };
                        thread::spawn(move || {
                            queue(client, server, rate, &up, &counted, &peak, None)
                        });
                        let (uncounted, unpeaked) = (AtomicU64::new(0), AtomicU64::new(0));
                        let held = Some((hold.clone(), index));
                        thread::spawn(move || {
                            queue(server2, client2, rate, &down, &uncounted, &unpeaked, held)
                        });
                        continue;
                    }
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
            upstream_queue_peak,
            connections,
            hold,
        }
    }

    /// A deep proxy: from now on, what the server sends on the connections
    /// open now waits until `time` has passed (later connections are not held).
    pub fn hold_downstream(&self, time: Duration) {
        let open = self.connections();
        *self.hold.lock().expect("hold") = Some((open, Instant::now() + time));
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    pub fn upstream_bytes(&self) -> u64 {
        self.upstream_bytes.load(Ordering::SeqCst)
    }

    /// The most bytes from the client a deep proxy ever held queued.
    pub fn upstream_queue_peak(&self) -> u64 {
        self.upstream_queue_peak.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
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

/// A deep link's direction: a reader thread takes everything `from` offers
/// into an unbounded queue at once; this thread forwards it to `to` at
/// `rate`. An end or error of `from` is forwarded after what was queued
/// before it (as a FIN follows the data); an error writing to `to` ends both.
fn queue(
    from: TcpStream,
    mut to: TcpStream,
    rate: u64,
    stop: &AtomicBool,
    moved: &AtomicU64,
    peak: &AtomicU64,
    hold: Option<(Hold, u64)>,
) {
    let queued = Arc::new(AtomicU64::new(0));
    let (chunks, arriving) = mpsc::channel::<Vec<u8>>();
    {
        let queued = queued.clone();
        let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
        let Ok(mut reader) = from.try_clone() else {
            return;
        };
        thread::spawn(move || {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let n = match reader.read(&mut buffer) {
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
                queued.fetch_add(n as u64, Ordering::SeqCst);
                if chunks.send(buffer[..n].to_vec()).is_err() {
                    break;
                }
            }
            // Dropping `chunks` tells the forwarder the stream ended.
        });
    }
    let mut next = Instant::now();
    'forward: while !stop.load(Ordering::SeqCst) {
        let chunk = match arriving.recv_timeout(Duration::from_millis(200)) {
            Ok(chunk) => chunk,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The sender ended and everything it sent went on: pass the end on.
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
        };
        peak.fetch_max(queued.load(Ordering::SeqCst), Ordering::SeqCst);
        // Held: the chunk waits (the link's schedule, not a test's wait).
        while let Some((hold, index)) = &hold {
            let until = match *hold.lock().expect("hold") {
                Some((held, until)) if *index <= held => until,
                _ => break,
            };
            let now = Instant::now();
            if now >= until || stop.load(Ordering::SeqCst) {
                break;
            }
            thread::sleep((until - now).min(Duration::from_millis(50)));
        }
        for piece in chunk.chunks(512) {
            if stop.load(Ordering::SeqCst) {
                break 'forward;
            }
            // The link's schedule (a rate, not a wait for a condition).
            let now = Instant::now();
            if next > now {
                thread::sleep(next - now);
            } else {
                next = now;
            }
            next += Duration::from_secs_f64(piece.len() as f64 / rate as f64);
            if to.write_all(piece).is_err() {
                break 'forward;
            }
            queued.fetch_sub(piece.len() as u64, Ordering::SeqCst);
            moved.fetch_add(piece.len() as u64, Ordering::SeqCst);
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
