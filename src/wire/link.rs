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
//! Every duration is the run's `Timings` (timings.rs). Reconnects:
//! `retry_interval` (2 s) apart with ±25% jitter (thousands of minions must
//! not reconnect in lockstep after a server restart). A connection the
//! supervisor drops is closed gracefully: a close frame behind what was
//! sent, and the server's frames (its ACKs) are still read until it closes
//! the socket, at most `close_drain` (session.rs, `reconnect`, says why).
//! Dead peers: a connect timeout, a handshake timeout, TCP keepalive, and a
//! WebSocket ping after `ping_after` (15 s) of silence answered within
//! `pong_timeout` (15 s) end the connection here; a socket whose writes
//! stopped moving is the session's stall watchdog's (no ACK comes either).
//! Inbound frames over 1 MiB are a protocol error.
//!
//! `ask_once` is `sp_wrapper --check`'s one exchange on the same connection
//! code (`open`), on the caller's thread: no link thread, no reconnects.
//!
//! Progress is bytes moving, not frames finishing, so a slow link is not a
//! dead one: bytes the kernel takes from us (counted by `Counted`) or bytes
//! the peer's TCP acknowledges (what we wrote less the socket's unacknowledged
//! queue, `TIOCOUTQ`). Moving bytes also count as hearing from the server
//! for the ping, since a pong waits behind everything queued before it. How
//! much is sent at all is the session's (`pacing.rs`: from the server's
//! ACKs, which see the whole way, not the local socket alone).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError, channel};
use std::time::{Duration, Instant, UNIX_EPOCH};

use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use crate::config::WsUrl;
use crate::messages::{Event, LinkCommand, LinkEvent};
use crate::os::threads::SpawnDetached;
use crate::timings::Timings;
use crate::wire::frames::FramePool;
use crate::wire::protocol;
use crate::wire::xorshift::XorShift;

/// Largest inbound frame: the server sends small control frames only.
pub const MAX_INBOUND_FRAME: usize = 1 << 20;

/// The supervisor's end: queue a command and wake the link thread.
pub struct LinkHandle {
    commands: Sender<LinkCommand>,
    wake: OwnedFd,
    /// Ends its wait when the link thread has returned (its sender is dropped).
    finished: crate::os::oneshot::Receiver<()>,
    /// How long `shutdown` waits (`Timings::link_close_bound`).
    close_bound: Duration,
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
    /// at most `Timings::link_close_bound`. Without the wait the process
    /// would exit first and the server would see an abrupt disconnect.
    pub fn shutdown(&self) {
        self.send(LinkCommand::Shutdown);
        let _ = self.finished.recv_timeout(self.close_bound);
    }
}

/// Start the link thread. `resolve_machine` runs on it before the first
/// connection; its answer goes to the supervisor as `LinkEvent::Identified`.
pub fn spawn_link(
    url: WsUrl,
    timings: Timings,
    events: SyncSender<Event>,
    frames: FramePool,
    resolve_machine: impl FnOnce() -> String + Send + 'static,
) -> io::Result<LinkHandle> {
    let (commands_tx, commands_rx) = channel();
    let (finished_tx, finished_rx) = crate::os::oneshot::oneshot::<()>();
    let (wake_read, wake_write) = crate::os::pipe::cloexec(libc::O_NONBLOCK)?;
    let seed = crate::os::clock::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
        ^ (u64::from(std::process::id()) << 32);
    let link = Link {
        url,
        timings,
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
        .spawn_detached(move || {
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
        close_bound: timings.link_close_bound,
    })
}

struct Link {
    url: WsUrl,
    timings: Timings,
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

/// Open a WebSocket to `url`: resolve, TCP connect (bounded per address by
/// `connect_timeout`, and by `bound` too), handshake (bounded by `bound`). The socket is left
/// blocking, with `bound` as its read and write timeouts; the link thread
/// then makes it non-blocking.
fn open(
    url: &WsUrl,
    connect_timeout: Duration,
    bound: Duration,
) -> Result<WebSocket<Counted>, String> {
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", url.host))?
        .collect();
    let mut last_error = format!("{} resolved to no address", url.host);
    let mut stream = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, bound.min(connect_timeout)) {
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
        .and_then(|_| stream.set_read_timeout(Some(bound)))
        .and_then(|_| stream.set_write_timeout(Some(bound)));
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

/// `sp_wrapper --check`'s one exchange, on the calling thread: open a
/// connection (connect and handshake bounded by `Timings::check_bound`),
/// send `frame`, and return the server's first text frame, each read bounded
/// by it too (a few other frames, pings say, are let by); then close with
/// the WebSocket closing handshake (its reply waited for at most
/// `close_wait` for its first frame), as a finished run does.
pub fn ask_once(url: &WsUrl, frame: String, timings: &Timings) -> Result<String, String> {
    let mut ws = open(url, timings.connect_timeout, timings.check_bound)?;
    let mut answer = match ws.send(Message::text(frame)) {
        Ok(()) => Err("no answer in time".to_string()),
        Err(e) => Err(format!("send failed: {e}")),
    };
    for _ in 0..8 {
        match ws.read() {
            Ok(Message::Text(text)) => answer = Ok(text.as_str().to_string()),
            Ok(_) => continue,
            // The read timeout: `answer` says so.
            Err(e) if would_block(&e) => {}
            Err(e) => answer = Err(format!("receive failed: {e}")),
        }
        break;
    }
    let _ = ws.close(None);
    let _ = ws.flush();
    // One read for the server's close reply (the connection then ends), at
    // most `close_wait`.
    let _ = ws
        .get_ref()
        .stream
        .set_read_timeout(Some(timings.close_wait));
    let _ = ws.read();
    answer
}

impl Link {
    fn emit(&self, event: LinkEvent) -> bool {
        self.events.send(Event::Link(event)).is_ok()
    }

    /// 2 s ± 25%.
    fn retry_delay(&mut self) -> Duration {
        let interval = self.timings.retry_interval.as_millis() as u64;
        let spread = interval / 2; // the ±25% band is 50% wide
        let low = interval - spread / 2;
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
        let timings = &self.timings;
        let ws = open(
            &self.url,
            timings.connect_timeout,
            timings.handshake_timeout,
        )?;
        ws.get_ref()
            .stream
            .set_nonblocking(true)
            .map_err(|e| format!("set_nonblocking: {e}"))?;
        Ok(ws)
    }

    /// At shutdown: send what is still queued, then a close frame, and wait
    /// up to `close_wait` for the server's close reply so the connection
    /// ends with the WebSocket closing handshake, not a reset.
    fn close_cleanly(&self, ws: &mut WebSocket<Counted>, pending: VecDeque<String>) {
        for frame in pending {
            if ws.write(self.frames.message(frame)).is_err() {
                break;
            }
        }
        let _ = ws.close(None);
        let deadline = Instant::now() + self.timings.close_wait;
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
        let mut last_heard = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        // Byte progress (a sign of life for the ping): the counts last
        // seen, and when they last grew.
        let (mut written_seen, mut acknowledged_seen) = (0u64, 0u64);
        let mut last_moved = Instant::now();
        let (ping_after, pong_timeout) = (self.timings.ping_after, self.timings.pong_timeout);
        // The supervisor dropped this connection: why, and until when the
        // server's frames are still read (`close_drain`).
        let mut closing: Option<(String, Instant)> = None;
        let socket_fd = ws.get_ref().stream.as_raw_fd();

        loop {
            // Commands first: they may add frames or end the connection.
            self.drain_wake();
            loop {
                match self.commands.try_recv() {
                    Ok(LinkCommand::Send {
                        generation: g,
                        frame,
                    }) if g == generation && closing.is_none() => pending.push_back(frame),
                    Ok(LinkCommand::Send { .. }) => {}
                    Ok(LinkCommand::Drop {
                        generation: g,
                        reason,
                    }) if g == generation && closing.is_none() => {
                        // What was not handed to the kernel is never sent:
                        // the session sends it again on the next connection.
                        pending.clear();
                        let _ = ws.close(None);
                        flushing = true;
                        closing = Some((reason, Instant::now() + self.timings.close_drain));
                    }
                    Ok(LinkCommand::Drop { .. }) => {}
                    Ok(LinkCommand::Shutdown) | Err(TryRecvError::Disconnected) => {
                        self.close_cleanly(&mut ws, pending);
                        return Ended::Shutdown;
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
            let ended = |closing: &Option<(String, Instant)>, why: String| {
                Ended::Reconnect(closing.as_ref().map_or(why, |(reason, _)| reason.clone()))
            };

            // Writes: hand tungstenite one frame at a time, so its buffer
            // holds at most one frame and partial writes stay cheap.
            loop {
                if flushing {
                    match ws.flush() {
                        Ok(()) => flushing = false,
                        Err(e) if would_block(&e) => break,
                        Err(e) => return ended(&closing, format!("send failed: {e}")),
                    }
                }
                let Some(frame) = pending.pop_front() else {
                    break;
                };
                match ws.write(self.frames.message(frame)) {
                    Ok(()) => flushing = true,
                    Err(e) if would_block(&e) => flushing = true,
                    Err(e) => return ended(&closing, format!("send failed: {e}")),
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
                        return ended(&closing, "server closed the connection".into());
                    }
                    Err(e) => return ended(&closing, format!("receive failed: {e}")),
                }
            }
            if flushing {
                // A pong or close may have been queued by the reads above.
                match ws.flush() {
                    Ok(()) => {
                        flushing = false;
                        if !pending.is_empty() {
                            continue;
                        }
                    }
                    Err(e) if would_block(&e) => {}
                    Err(e) => return ended(&closing, format!("send failed: {e}")),
                }
            }

            // Byte progress.
            let now = Instant::now();
            let written = ws.get_ref().written;
            let acknowledged = ws.get_ref().acknowledged().max(acknowledged_seen);
            if written > written_seen || acknowledged > acknowledged_seen {
                last_moved = now;
                (written_seen, acknowledged_seen) = (written, acknowledged);
            }

            // Liveness deadlines.
            if let Some((reason, until)) = &closing {
                if now >= *until {
                    return Ended::Reconnect(reason.clone());
                }
            }
            // Bytes the peer takes are a sign of life too: on a slow link a
            // pong waits behind everything queued before it.
            let alive = last_heard.max(last_moved);
            match ping_sent {
                Some(at) if now - at.max(last_moved) >= pong_timeout => {
                    return ended(
                        &closing,
                        format!(
                            "server silent for {} s after a ping",
                            pong_timeout.as_secs()
                        ),
                    );
                }
                None if closing.is_none() && now - alive >= ping_after => {
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
            let mut deadline = match (ping_sent, &closing) {
                (Some(at), _) => at.max(last_moved) + pong_timeout,
                // No ping while closing: the drain's own bound.
                (None, Some((_, until))) => *until,
                (None, None) => alive + ping_after,
            };
            if let Some((_, until)) = &closing {
                deadline = deadline.min(*until);
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
