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
//! silence answered within 15 s, and 30 s without progress while there are
//! bytes to move all end the connection. Inbound frames over 1 MiB are a
//! protocol error.
//!
//! Progress is bytes moving, not frames finishing, so a slow link is not a
//! dead one: bytes the kernel takes from us (counted by `Counted`) or bytes
//! the peer's TCP acknowledges (what we wrote less the socket's unacknowledged
//! queue, `TIOCOUTQ`). Moving bytes also count as hearing from the server
//! for the ping, since a pong waits behind everything queued before it. Each
//! frame's time on the link, from its first byte handed to the kernel (or the
//! previous frame's end) until the peer's TCP has acknowledged its last, goes
//! to the supervisor as `LinkEvent::Sent`: the session sizes its output
//! messages from it (`pacing.rs`).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
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
const RETRY_INTERVAL: Duration = Duration::from_secs(2);
/// Silence after which we ping the server.
const PING_AFTER: Duration = Duration::from_secs(15);
/// Silence after a ping after which the server is considered dead.
const PONG_TIMEOUT: Duration = Duration::from_secs(15);
/// No byte moved for this long, with bytes to move, means a stuck peer.
const WRITE_STALL: Duration = Duration::from_secs(30);
/// How often a frame the kernel took is checked for the peer's TCP
/// acknowledgement, to time it (only while such a frame is outstanding).
const SENT_CHECK: Duration = Duration::from_millis(250);
/// Frames smaller than this are not reported: control frames and a quiet
/// job's lines say nothing about the link's speed.
const REPORTED_FRAME_MIN: usize = 1024;
/// How much of our traffic may wait in the kernel, unacknowledged, before we
/// hand it the next frame: what the link moves in this time. The server
/// (Python `websockets`) closes a connection whose pong is 20 s late, and a
/// pong waits behind everything queued before it: left alone, Linux queues
/// 450 KB and more on a socket (a minute at 8 KiB/s).
const QUEUE_AHEAD: Duration = Duration::from_secs(2);
/// ... never less than this (a frame's overhead, and some room to measure),
const MIN_QUEUE_AHEAD: u64 = 16 * 1024;
/// ... this much before the link has been timed at all (8 s at 8 KiB/s),
const INITIAL_QUEUE_AHEAD: u64 = 64 * 1024;
/// ... and never more than this: beyond it the kernel's own limit rules.
const MAX_QUEUE_AHEAD: u64 = 64 << 20;
/// How often the queue is checked while it holds the next frame back.
const QUEUE_CHECK: Duration = Duration::from_millis(50);
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
    let (wake_read, wake_write) = crate::pipe::cloexec(libc::O_NONBLOCK)?;
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

fn would_block(error: &tungstenite::Error) -> bool {
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

/// How much may wait in the kernel, unacknowledged (QUEUE_AHEAD and below).
struct QueueAhead {
    bytes: u64,
    /// Quick frames in a row.
    quick: u32,
}

impl QueueAhead {
    fn new() -> Self {
        QueueAhead {
            bytes: INITIAL_QUEUE_AHEAD,
            quick: 0,
        }
    }

    /// After a frame of `size` took `took`. A frame that took a while shows
    /// the link's speed: QUEUE_AHEAD of it. Quick ones show only that
    /// buffers had room (an empty one acknowledges at once, and the peer's
    /// TCP acknowledges in bursts as its window opens, so a quick frame may
    /// follow a slow one on a slow link): two in a row double it, as TCP's
    /// slow start does, so a fast link is unhindered after a few frames and
    /// a slow one never gets a minute of traffic queued at once.
    fn after_frame(&mut self, size: usize, took: Duration) {
        if size < REPORTED_FRAME_MIN {
            return;
        }
        if took >= Duration::from_secs(1) {
            self.quick = 0;
            // Integer arithmetic: float code would add ~30 KiB to the binary.
            let moved = size as u128 * QUEUE_AHEAD.as_millis() / took.as_millis().max(1);
            self.bytes = u64::try_from(moved)
                .unwrap_or(u64::MAX)
                .clamp(MIN_QUEUE_AHEAD, MAX_QUEUE_AHEAD);
        } else if size as u64 * 2 >= self.bytes {
            self.quick += 1;
            if self.quick >= 2 {
                self.quick = 0;
                self.bytes = self.bytes.saturating_mul(2).min(MAX_QUEUE_AHEAD);
            }
        }
    }
}

/// The socket under the link's WebSocket, counting the bytes the kernel
/// took from us.
#[derive(Debug)]
struct Counted {
    stream: TcpStream,
    written: u64,
}

impl std::ops::Deref for Counted {
    type Target = TcpStream;

    fn deref(&self) -> &TcpStream {
        &self.stream
    }
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.stream.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl Counted {
    /// Bytes the peer's TCP has acknowledged: what we wrote less what is
    /// still in the socket's send queue. Without `TIOCOUTQ` (it cannot fail
    /// on a Linux TCP socket, but still), what we wrote.
    fn acknowledged(&self) -> u64 {
        let mut queued: libc::c_int = 0;
        let rc = unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        if rc == 0 {
            self.written.saturating_sub(queued.max(0) as u64)
        } else {
            self.written
        }
    }
}

/// Open a WebSocket to `url`: resolve, TCP connect (bounded per address),
/// handshake (bounded). The socket is left blocking, with the handshake
/// timeout as its read and write timeouts; the link thread then makes it
/// non-blocking.
fn open(url: &WsUrl) -> Result<WebSocket<Counted>, String> {
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
    let (ws, _response) = tungstenite::client::client_with_config(
        url.raw.as_str(),
        Counted { stream, written: 0 },
        Some(config),
    )
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

    fn connect(&mut self) -> Result<WebSocket<Counted>, String> {
        let ws = open(&self.url)?;
        ws.get_ref()
            .stream
            .set_nonblocking(true)
            .map_err(|e| format!("set_nonblocking: {e}"))?;
        Ok(ws)
    }

    /// At shutdown: send what is still queued, then a close frame, and wait
    /// up to `CLOSE_WAIT` for the server's close reply so the connection
    /// ends with the WebSocket closing handshake, not a reset.
    fn close_cleanly(&self, ws: &mut WebSocket<Counted>, pending: VecDeque<String>) {
        for frame in pending {
            if ws.write(self.frames.message(frame)).is_err() {
                break;
            }
        }
        let _ = ws.close(None);
        let deadline = Instant::now() + CLOSE_WAIT;
        let socket_fd = ws.get_ref().stream.as_raw_fd();
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
    fn serve(&mut self, mut ws: WebSocket<Counted>) -> Ended {
        let generation = self.generation;
        let mut pending: VecDeque<String> = VecDeque::new();
        // tungstenite holds bytes of ours not yet taken by the kernel.
        let mut flushing = false;
        // The frame tungstenite holds: when it was handed over, its size.
        let mut writing: Option<(Instant, usize)> = None;
        // Frames the kernel took, not yet acknowledged by the peer's TCP:
        // (our byte count at their end, when handed over, size).
        let mut unacknowledged: VecDeque<(u64, Instant, usize)> = VecDeque::new();
        let mut last_frame_done = Instant::now();
        // When we last looked at the acknowledged count, and what it was.
        let mut last_check = (Instant::now(), 0u64);
        let mut last_heard = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        // Byte progress: the counts last seen, when they last grew, and since
        // when we have had bytes to move (None: nothing to move).
        let (mut written_seen, mut acknowledged_seen) = (0u64, 0u64);
        let mut last_moved = Instant::now();
        let mut busy_since: Option<Instant> = None;
        // How much may wait unacknowledged in the kernel (QueueAhead),
        // and whether that is what holds the next frame back now.
        let mut queue_ahead = QueueAhead::new();
        let mut held_back = false;
        let socket_fd = ws.get_ref().stream.as_raw_fd();

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
                if flushing {
                    match ws.flush() {
                        Ok(()) => {
                            flushing = false;
                            if let Some((handed, size)) = writing.take() {
                                unacknowledged.push_back((ws.get_ref().written, handed, size));
                            }
                        }
                        Err(e) if would_block(&e) => break,
                        Err(e) => return Ended::Reconnect(format!("send failed: {e}")),
                    }
                }
                held_back = false;
                if pending.is_empty() {
                    break;
                }
                let counted = ws.get_ref();
                if counted.written - counted.acknowledged() > queue_ahead.bytes {
                    held_back = true;
                    break;
                }
                let Some(frame) = pending.pop_front() else {
                    break;
                };
                writing = Some((Instant::now(), frame.len()));
                match ws.write(self.frames.message(frame)) {
                    Ok(()) => flushing = true,
                    Err(e) if would_block(&e) => flushing = true,
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
                            // tungstenite queued a pong (or answers a close,
                            // and the next read ends it): make sure it goes out.
                            Message::Ping(_) | Message::Close(_) => flushing = true,
                            Message::Pong(_) | Message::Frame(_) => {}
                        }
                    }
                    Err(e) if would_block(&e) => break,
                    Err(tungstenite::Error::ConnectionClosed) => {
                        return Ended::Reconnect("server closed the connection".into());
                    }
                    Err(e) => return Ended::Reconnect(format!("receive failed: {e}")),
                }
            }
            if flushing {
                // A pong or close may have been queued by the reads above.
                match ws.flush() {
                    Ok(()) => {
                        flushing = false;
                        if let Some((handed, size)) = writing.take() {
                            unacknowledged.push_back((ws.get_ref().written, handed, size));
                        }
                        if !pending.is_empty() {
                            continue;
                        }
                    }
                    Err(e) if would_block(&e) => {}
                    Err(e) => return Ended::Reconnect(format!("send failed: {e}")),
                }
            }

            // Byte progress, and the frames the peer now has.
            let now = Instant::now();
            let written = ws.get_ref().written;
            let acknowledged = ws.get_ref().acknowledged().max(acknowledged_seen);
            if written > written_seen || acknowledged > acknowledged_seen {
                last_moved = now;
                (written_seen, acknowledged_seen) = (written, acknowledged);
            }
            // Frames that reached the peer since the last check. A check does
            // not see when within it a frame's last byte was acknowledged:
            // take the moment the acknowledged count passed the frame's end,
            // at the rate it grew since the last check.
            while let Some(&(end, handed, size)) = unacknowledged.front() {
                if end > acknowledged {
                    break;
                }
                unacknowledged.pop_front();
                let (checked_at, acknowledged_then) = last_check;
                let done = if acknowledged > acknowledged_then && end > acknowledged_then {
                    let span = now.saturating_duration_since(checked_at).as_nanos();
                    let into = span * u128::from(end - acknowledged_then)
                        / u128::from(acknowledged - acknowledged_then);
                    checked_at + Duration::from_nanos(u64::try_from(into).unwrap_or(u64::MAX))
                } else {
                    now
                };
                let took = done.saturating_duration_since(handed.max(last_frame_done));
                last_frame_done = done;
                log::debug!(
                    "frame of {size} bytes on the link for {} ms ({} bytes queued behind it)",
                    // u64: u128's Display would cost the binary 1.2 KB.
                    took.as_millis() as u64,
                    written - acknowledged
                );
                queue_ahead.after_frame(size, took);
                if size >= REPORTED_FRAME_MIN && !self.emit(LinkEvent::Sent { bytes: size, took }) {
                    return Ended::Shutdown;
                }
            }
            last_check = (now, acknowledged);
            let busy = flushing || !pending.is_empty() || acknowledged < written;
            busy_since = match (busy, busy_since) {
                (false, _) => None,
                (true, None) => Some(now),
                (true, since) => since,
            };

            // Liveness deadlines.
            let stall_at = busy_since.map(|since| since.max(last_moved) + WRITE_STALL);
            if stall_at.is_some_and(|at| now >= at) {
                return Ended::Reconnect(format!(
                    "no write progress for {} s",
                    WRITE_STALL.as_secs()
                ));
            }
            // Bytes the peer takes are a sign of life too: on a slow link a
            // pong waits behind everything queued before it.
            let alive = last_heard.max(last_moved);
            match ping_sent {
                Some(at) if now - at.max(last_moved) >= PONG_TIMEOUT => {
                    return Ended::Reconnect(format!(
                        "server silent for {} s after a ping",
                        PONG_TIMEOUT.as_secs()
                    ));
                }
                None if now - alive >= PING_AFTER => {
                    if let Err(e) = ws.write(Message::Ping(Vec::new().into())) {
                        if !would_block(&e) {
                            return Ended::Reconnect(format!("ping failed: {e}"));
                        }
                    }
                    ping_sent = Some(now);
                    flushing = true;
                    continue;
                }
                _ => {}
            }
            let mut deadline = match ping_sent {
                Some(at) => at.max(last_moved) + PONG_TIMEOUT,
                None => alive + PING_AFTER,
            };
            if let Some(at) = stall_at {
                deadline = deadline.min(at);
            }
            if held_back {
                deadline = deadline.min(now + QUEUE_CHECK);
            } else if !unacknowledged.is_empty() {
                deadline = deadline.min(now + SENT_CHECK);
            }
            let mut events = libc::POLLIN;
            if flushing {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_ahead_follows_timed_frames_and_grows_by_doubling() {
        let ms = Duration::from_millis;
        let mut queue = QueueAhead::new();
        // Instant acknowledgements (empty buffers) are no speed: two in a
        // row double it, and only for frames of some size.
        queue.after_frame(64 << 10, ms(0));
        assert_eq!(queue.bytes, 64 << 10);
        queue.after_frame(64 << 10, ms(0));
        assert_eq!(queue.bytes, 128 << 10);
        queue.after_frame(8 << 10, ms(0));
        queue.after_frame(500, ms(0));
        assert_eq!(queue.bytes, 128 << 10);
        // 64 KiB in 8 s: 8 KiB/s, so 16 KiB (2 s of it).
        queue.after_frame(64 << 10, ms(8000));
        assert_eq!(queue.bytes, 16 << 10);
        // A burst after a slow frame is not a fast link.
        for _ in 0..3 {
            queue.after_frame(20 << 10, ms(3000));
            queue.after_frame(20 << 10, ms(50));
        }
        assert!(queue.bytes < 32 << 10, "{}", queue.bytes);
        // Slower still: never below the floor; never above the ceiling.
        queue.after_frame(4 << 10, ms(60_000));
        assert_eq!(queue.bytes, MIN_QUEUE_AHEAD);
        queue.bytes = MAX_QUEUE_AHEAD;
        queue.after_frame(64 << 20, ms(1));
        queue.after_frame(64 << 20, ms(1));
        assert_eq!(queue.bytes, MAX_QUEUE_AHEAD);
    }
}
