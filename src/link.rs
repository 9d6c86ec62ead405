//! The link thread: owns the WebSocket to the server (tungstenite over a
//! `TcpStream` we open ourselves) and nothing else.
//!
//! It receives `LinkCommand`s from the supervisor (frames to send, "drop this
//! connection", shutdown) and sends `Event::Link(..)` back (connected,
//! disconnected, each decoded frame). It does not know what the frames mean:
//! sequence numbers, ACKs and retries are the supervisor's.
//!
//! One thread both reads and writes, so the socket is non-blocking after the
//! handshake and the thread sleeps in `poll()` on two descriptors: the socket
//! and a wake pipe the supervisor writes a byte to with each command. No
//! timer wakes it while all is quiet except the WebSocket ping deadline.
//!
//! Each connection has a generation number; commands for an older generation
//! are dropped, so a frame meant for a dead socket is never sent on a new one.
//!
//! Reconnects: 2 s apart with ±25% jitter (thousands of minions must not
//! reconnect in lockstep after a server restart). Dead peers: a connect
//! timeout, a handshake timeout, TCP keepalive, a WebSocket ping after 15 s of
//! silence answered within 15 s, and a write that makes no progress for 30 s
//! all end the connection. Inbound frames over 1 MiB are a protocol error.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError, channel};
use std::time::{Duration, Instant, UNIX_EPOCH};

use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use crate::config::WsUrl;
use crate::frames::FramePool;
use crate::messages::{Event, LinkCommand, LinkEvent};
use crate::protocol;
use crate::xorshift::XorShift;

/// Per-address TCP connect bound: an unroutable server must not hold us.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the WebSocket handshake (a server that accepts and says nothing).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Between connection attempts (PROTOCOL.md: 2 s), before jitter.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(2);
/// Silence after which we ping the server.
const PING_AFTER: Duration = Duration::from_secs(15);
/// Silence after a ping after which the server is considered dead.
const PONG_TIMEOUT: Duration = Duration::from_secs(15);
/// A frame that cannot be flushed for this long means a stuck peer.
const WRITE_STALL: Duration = Duration::from_secs(30);
/// How long a shutdown waits for the server's close reply.
const CLOSE_WAIT: Duration = Duration::from_millis(500);
/// Largest inbound frame: the server sends small control frames only.
pub const MAX_INBOUND_FRAME: usize = 1 << 20;

/// The supervisor's end: queue a command and wake the link thread.
pub struct LinkHandle {
    commands: Sender<LinkCommand>,
    wake: OwnedFd,
    /// Disconnected when the link thread has returned (its sender is dropped).
    finished: Receiver<()>,
}

impl LinkHandle {
    pub fn send(&self, command: LinkCommand) {
        if self.commands.send(command).is_ok() {
            // Non-blocking: a full pipe already means a wake-up is pending.
            unsafe { libc::write(self.wake.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        }
    }

    /// Tell the link thread to close the connection (a close frame, and the
    /// server's answer when it comes quickly) and wait until it has returned,
    /// at most `bound`. Without the wait the process would exit first and
    /// the server would see an abrupt disconnect.
    pub fn shutdown(&self, bound: Duration) {
        self.send(LinkCommand::Shutdown);
        let _ = self.finished.recv_timeout(bound);
    }
}

fn wake_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // pipe2 with O_CLOEXEC: Linux 2.6.27+. O_NONBLOCK on both ends.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Start the link thread. `resolve_machine` runs on it before the first
/// connection; its answer goes to the supervisor as `LinkEvent::Identified`.
pub fn spawn_link(
    url: WsUrl,
    events: SyncSender<Event>,
    frames: FramePool,
    resolve_machine: impl FnOnce() -> String + Send + 'static,
) -> io::Result<LinkHandle> {
    let (commands_tx, commands_rx) = channel();
    let (finished_tx, finished_rx) = channel::<()>();
    let (wake_read, wake_write) = wake_pipe()?;
    let seed = crate::clock::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
        ^ (u64::from(std::process::id()) << 32);
    let link = Link {
        url,
        events,
        commands: commands_rx,
        wake: wake_read,
        generation: 0,
        rng: XorShift::new(seed),
        frames,
    };
    std::thread::Builder::new()
        .name("link".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            // Dropped when this thread returns, however it returns.
            let _finished = finished_tx;
            let machine = resolve_machine();
            if link.emit(LinkEvent::Identified { machine }) {
                link.run();
            }
        })?;
    Ok(LinkHandle {
        commands: commands_tx,
        wake: wake_write,
        finished: finished_rx,
    })
}

struct Link {
    url: WsUrl,
    events: SyncSender<Event>,
    commands: Receiver<LinkCommand>,
    wake: OwnedFd,
    generation: u64,
    rng: XorShift,
    frames: FramePool,
}

/// Why `serve` returned.
enum Ended {
    Reconnect(String),
    Shutdown,
}

pub fn would_block(error: &tungstenite::Error) -> bool {
    matches!(error, tungstenite::Error::Io(e) if e.kind() == io::ErrorKind::WouldBlock)
}

fn set_keepalive(fd: RawFd) {
    // Detects a peer that vanished without a FIN, even when we send nothing:
    // probes after 30 s idle, every 10 s, 3 tries.
    let options = [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 30),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 10),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3),
    ];
    for (level, name, value) in options {
        let value: libc::c_int = value;
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// Open a WebSocket to `url`: resolve, TCP connect (bounded per address),
/// handshake (bounded). The socket is left blocking, with the handshake
/// timeout as its read and write timeouts; the link thread makes it
/// non-blocking, the guardian (`guardian.rs`) sets its own timeouts.
pub fn open(url: &WsUrl) -> Result<WebSocket<TcpStream>, String> {
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", url.host))?
        .collect();
    let mut last_error = format!("{} resolved to no address", url.host);
    let mut stream = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = format!("connect to {addr}: {e}"),
        }
    }
    let stream = stream.ok_or(last_error)?;
    let setup = stream
        .set_nodelay(true)
        .and_then(|_| stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)))
        .and_then(|_| stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT)));
    setup.map_err(|e| format!("socket setup: {e}"))?;
    set_keepalive(stream.as_raw_fd());
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_INBOUND_FRAME))
        .max_frame_size(Some(MAX_INBOUND_FRAME))
        .read_buffer_size(16 * 1024);
    let (ws, _response) =
        tungstenite::client::client_with_config(url.raw.as_str(), stream, Some(config))
            .map_err(|e| format!("WebSocket handshake with {}: {e}", url.raw))?;
    Ok(ws)
}

impl Link {
    fn emit(&self, event: LinkEvent) -> bool {
        self.events.send(Event::Link(event)).is_ok()
    }

    /// 2 s ± 25%.
    fn retry_delay(&mut self) -> Duration {
        let spread = RETRY_INTERVAL.as_millis() as u64 / 2; // the ±25% band is 50% wide
        let low = RETRY_INTERVAL.as_millis() as u64 - spread / 2;
        Duration::from_millis(low + self.rng.next_u64() % (spread + 1))
    }

    fn run(mut self) {
        let mut next_attempt = Instant::now();
        loop {
            // Disconnected: wait for the next attempt, still draining commands.
            loop {
                if self.drain_commands_while_down() {
                    return;
                }
                let now = Instant::now();
                if now >= next_attempt {
                    break;
                }
                self.wait(&[], next_attempt - now);
            }
            match self.connect() {
                Ok(ws) => {
                    self.generation += 1;
                    if !self.emit(LinkEvent::Connected {
                        generation: self.generation,
                    }) {
                        return;
                    }
                    let generation = self.generation;
                    match self.serve(ws) {
                        Ended::Shutdown => return,
                        Ended::Reconnect(reason) => {
                            if !self.emit(LinkEvent::Disconnected { generation, reason }) {
                                return;
                            }
                        }
                    }
                }
                Err(reason) => {
                    if !self.emit(LinkEvent::ConnectFailed { reason }) {
                        return;
                    }
                }
            }
            next_attempt = Instant::now() + self.retry_delay();
        }
    }

    /// Commands while no connection exists: frames are for dead generations.
    /// Returns true on shutdown.
    fn drain_commands_while_down(&mut self) -> bool {
        self.drain_wake();
        loop {
            match self.commands.try_recv() {
                Ok(LinkCommand::Shutdown) | Err(TryRecvError::Disconnected) => return true,
                Ok(_) => {}
                Err(TryRecvError::Empty) => return false,
            }
        }
    }

    fn drain_wake(&self) {
        let mut sink = [0u8; 256];
        while unsafe { libc::read(self.wake.as_raw_fd(), sink.as_mut_ptr().cast(), sink.len()) } > 0
        {
        }
    }

    /// Sleep in poll() on the wake pipe and `extra` descriptors.
    fn wait(&self, extra: &[libc::pollfd], timeout: Duration) -> Vec<libc::pollfd> {
        let mut fds = Vec::with_capacity(1 + extra.len());
        fds.push(libc::pollfd {
            fd: self.wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        fds.extend_from_slice(extra);
        // Round up so a deadline 0.4 ms away does not spin at timeout 0.
        let millis = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
        if rc < 0 {
            // EINTR (or worse): report nothing ready; the caller re-checks.
            for fd in &mut fds {
                fd.revents = 0;
            }
        }
        fds
    }

    fn connect(&mut self) -> Result<WebSocket<TcpStream>, String> {
        let ws = open(&self.url)?;
        ws.get_ref()
            .set_nonblocking(true)
            .map_err(|e| format!("set_nonblocking: {e}"))?;
        Ok(ws)
    }

    /// At shutdown: send what is still queued, then a close frame, and wait
    /// up to `CLOSE_WAIT` for the server's close reply so the connection
    /// ends with the WebSocket closing handshake, not a reset.
    fn close_cleanly(&self, ws: &mut WebSocket<TcpStream>, pending: VecDeque<String>) {
        for frame in pending {
            if ws.write(self.frames.message(frame)).is_err() {
                break;
            }
        }
        let _ = ws.close(None);
        let deadline = Instant::now() + CLOSE_WAIT;
        let socket_fd = ws.get_ref().as_raw_fd();
        loop {
            let flushed = match ws.flush() {
                Ok(()) => true,
                Err(e) if would_block(&e) => false,
                Err(_) => return,
            };
            // Read until the server's close reply ends the connection.
            loop {
                match ws.read() {
                    Ok(_) => {}
                    Err(e) if would_block(&e) => break,
                    Err(_) => return, // ConnectionClosed: the handshake is done
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            let mut socket = libc::pollfd {
                fd: socket_fd,
                events: if flushed {
                    libc::POLLIN
                } else {
                    libc::POLLIN | libc::POLLOUT
                },
                revents: 0,
            };
            let millis = (deadline - now).as_millis().clamp(1, 1000) as i32;
            unsafe { libc::poll(&mut socket, 1, millis) };
        }
    }

    /// Drive one connection until it ends.
    fn serve(&mut self, mut ws: WebSocket<TcpStream>) -> Ended {
        let generation = self.generation;
        let mut pending: VecDeque<String> = VecDeque::new();
        let mut flushing_since: Option<Instant> = None;
        let mut last_heard = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        let socket_fd = ws.get_ref().as_raw_fd();

        loop {
            // Commands first: they may add frames or end the connection.
            self.drain_wake();
            loop {
                match self.commands.try_recv() {
                    Ok(LinkCommand::Send {
                        generation: g,
                        frame,
                    }) if g == generation => pending.push_back(frame),
                    Ok(LinkCommand::Send { .. }) => {}
                    Ok(LinkCommand::Drop {
                        generation: g,
                        reason,
                    }) if g == generation => {
                        let _ = ws.close(None);
                        let _ = ws.flush();
                        return Ended::Reconnect(reason);
                    }
                    Ok(LinkCommand::Drop { .. }) => {}
                    Ok(LinkCommand::Shutdown) | Err(TryRecvError::Disconnected) => {
                        self.close_cleanly(&mut ws, pending);
                        return Ended::Shutdown;
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }

            // Writes: hand tungstenite one frame at a time, so its buffer
            // holds at most one frame and partial writes stay cheap.
            loop {
                if flushing_since.is_some() {
                    match ws.flush() {
                        Ok(()) => flushing_since = None,
                        Err(e) if would_block(&e) => break,
                        Err(e) => return Ended::Reconnect(format!("send failed: {e}")),
                    }
                }
                let Some(frame) = pending.pop_front() else {
                    break;
                };
                match ws.write(self.frames.message(frame)) {
                    Ok(()) => flushing_since = Some(Instant::now()),
                    Err(e) if would_block(&e) => flushing_since = Some(Instant::now()),
                    Err(e) => return Ended::Reconnect(format!("send failed: {e}")),
                }
            }

            // Reads: everything available, until it would block.
            loop {
                match ws.read() {
                    Ok(message) => {
                        last_heard = Instant::now();
                        ping_sent = None;
                        match message {
                            Message::Text(text) => {
                                let event = match protocol::decode(text.as_str()) {
                                    Ok(frame) => LinkEvent::Frame { generation, frame },
                                    Err(e) => LinkEvent::BadFrame {
                                        generation,
                                        reason: e.0,
                                    },
                                };
                                if !self.emit(event) {
                                    return Ended::Shutdown;
                                }
                            }
                            Message::Binary(data) => {
                                let reason =
                                    format!("binary frame of {} bytes ignored", data.len());
                                if !self.emit(LinkEvent::BadFrame { generation, reason }) {
                                    return Ended::Shutdown;
                                }
                            }
                            // tungstenite queued a pong; make sure it goes out.
                            Message::Ping(_) => {
                                flushing_since = flushing_since.or(Some(Instant::now()))
                            }
                            Message::Pong(_) | Message::Frame(_) => {}
                            // tungstenite answers the close; the next read ends it.
                            Message::Close(_) => {
                                flushing_since = flushing_since.or(Some(Instant::now()))
                            }
                        }
                    }
                    Err(e) if would_block(&e) => break,
                    Err(tungstenite::Error::ConnectionClosed) => {
                        return Ended::Reconnect("server closed the connection".into());
                    }
                    Err(e) => return Ended::Reconnect(format!("receive failed: {e}")),
                }
            }
            if flushing_since.is_some() {
                // A pong or close may have been queued by the reads above.
                match ws.flush() {
                    Ok(()) if pending.is_empty() => flushing_since = None,
                    Ok(()) => continue,
                    Err(e) if would_block(&e) => {}
                    Err(e) => return Ended::Reconnect(format!("send failed: {e}")),
                }
            }

            // Liveness deadlines.
            let now = Instant::now();
            if let Some(since) = flushing_since {
                if now - since >= WRITE_STALL {
                    return Ended::Reconnect(format!(
                        "no write progress for {} s",
                        WRITE_STALL.as_secs()
                    ));
                }
            }
            match ping_sent {
                Some(at) if now - at >= PONG_TIMEOUT => {
                    return Ended::Reconnect(format!(
                        "server silent for {} s after a ping",
                        PONG_TIMEOUT.as_secs()
                    ));
                }
                None if now - last_heard >= PING_AFTER => {
                    if let Err(e) = ws.write(Message::Ping(Vec::new().into())) {
                        if !would_block(&e) {
                            return Ended::Reconnect(format!("ping failed: {e}"));
                        }
                    }
                    ping_sent = Some(now);
                    flushing_since = flushing_since.or(Some(now));
                    continue;
                }
                _ => {}
            }
            let mut deadline = match ping_sent {
                Some(at) => at + PONG_TIMEOUT,
                None => last_heard + PING_AFTER,
            };
            if let Some(since) = flushing_since {
                deadline = deadline.min(since + WRITE_STALL);
            }
            let mut events = libc::POLLIN;
            if flushing_since.is_some() {
                events |= libc::POLLOUT;
            }
            let socket = libc::pollfd {
                fd: socket_fd,
                events,
                revents: 0,
            };
            self.wait(&[socket], deadline.saturating_duration_since(now));
        }
    }
}
