//! The messages that cross threads, and nothing else: data types only. Every
//! thread imports this module; it imports nothing of ours, so no worker needs
//! to know the supervisor (docs/architecture.md, "Threads and channels").
//!
//! - `Event`: everything the supervisor hears, on its one bounded channel,
//!   from the readers, the waiter, the signal thread and the link thread.
//! - `LinkCommand`: what the supervisor tells the link thread.
//! - `Stream`, `Inbound`, `AckKind`: the payloads they carry (`protocol.rs`
//!   encodes and decodes them).

use std::time::SystemTime;

/// Which of the job's pipes a piece of output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    pub fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// What an `ack` acknowledges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AckKind {
    Connect,
    Start,
    Output,
    Complete,
    Other,
}

/// A frame from the server, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    Ack {
        kind: AckKind,
        seq: Option<i64>,
    },
    Nack {
        expected_seq: i64,
    },
    SyncResponse {
        last_seq: i64,
    },
    Kill {
        job_instance: Option<String>,
        machine: Option<String>,
    },
    Error {
        code: String,
        message: String,
    },
    /// A well-formed frame of a type we do not act on.
    Other(String),
}

/// Everything the supervisor hears, from every other thread.
pub enum Event {
    Output {
        stream: Stream,
        text: String,
    },
    StreamClosed(Stream),
    /// The job's main process exited; `at` is the wall-clock time the waiter
    /// reaped it, which becomes `complete.timestamp` (the server's endtime).
    ChildExited {
        status: i32,
        at: SystemTime,
    },
    /// An orphan of the job, reaped by us as its subreaper.
    Reaped,
    Link(LinkEvent),
    Signal(i32),
}

/// What the supervisor tells the link thread.
pub enum LinkCommand {
    Send {
        generation: u64,
        frame: String,
    },
    /// Close this connection and reconnect (the supervisor saw it stall):
    /// a close frame behind what was sent, then the server's ACKs are still
    /// read until it closes the socket (bounded), so that no new socket is
    /// opened while the server still reads the old one (session.rs, `reconnect`).
    Drop {
        generation: u64,
        reason: String,
    },
    Shutdown,
}

/// What the link thread reports, inside `Event::Link`.
pub enum LinkEvent {
    /// The machine id, resolved on this thread before the first connection
    /// (it may take a DNS lookup, which must not delay the job: the readers
    /// and the supervisor run meanwhile). Always the first link event.
    Identified {
        machine: String,
    },
    Connected {
        generation: u64,
    },
    Disconnected {
        generation: u64,
        reason: String,
    },
    ConnectFailed {
        reason: String,
    },
    Frame {
        generation: u64,
        frame: Inbound,
    },
    /// A frame we could not use (logged, otherwise ignored).
    BadFrame {
        generation: u64,
        reason: String,
    },
}
