//! A scripted WebSocket server on 127.0.0.1:0 for behaviour the real endpoint
//! cannot be made to show: a server that accepts everything but never ACKs
//! output, one that stops ACKing after some output, and an honest per-socket
//! server that records how each connection ended (with the wrapper's close
//! frame, or abruptly).
//!
//! One thread per connection; it speaks the endpoint's per-socket sequencing
//! (PROTOCOL.md, "Output") where it ACKs at all, and, as Saltpeter does, a
//! `start` resets the output recorded so far. A `Hook` sees every frame as
//! it is received and again once answered (the crash sweep kills the agent
//! there), and may have a received frame lost, as if the connection had died
//! with it.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use serde_json::{Value, json};
use tungstenite::Message;

/// How the server answers.
#[derive(Clone, Copy, Debug)]
pub enum Plan {
    /// ACKs connect, start and complete, appends output in order and ACKs it.
    Honest,
    /// ACKs connect and start and answers sync_request, but never ACKs (or
    /// NACKs) output and never answers complete: contact without progress.
    NeverAckOutput,
    /// As `Honest`, but it never answers the wrapper's close frame (it
    /// stops reading and holds the socket): the agent lingers in its
    /// bounded closing handshake after its result was recorded.
    HonestNoCloseReply,
    /// As `Honest`, except that once it has appended this many bytes it
    /// drops every later output frame (neither appended nor ACKed) on every
    /// connection opened before `resume_new_connections`: the agent holds
    /// the rest unACKed, even if its stall watchdog reconnects.
    StopAckingAfter(usize),
}

/// One connection as the server saw it.
#[derive(Clone, Debug, Default)]
pub struct Connection {
    pub frames: Vec<String>,
    /// The wrapper sent a close frame before the socket ended.
    pub closed_cleanly: bool,
    /// The socket has ended (either way).
    pub ended: bool,
}

#[derive(Debug, Default)]
pub struct Seen {
    pub connections: Vec<Connection>,
    pub appended: String,
    pub retcodes: Vec<i32>,
    /// `start` frames processed, and how many of them came after output
    /// had been appended (each of those wiped it, as Saltpeter does).
    pub starts: usize,
    pub starts_that_wiped_output: usize,
    /// The `machine` of every frame, in order of arrival.
    pub machines: Vec<String>,
    /// `ack`s sent for output.
    pub output_acks: usize,
    /// Connections opened from now on are honest (`StopAckingAfter`).
    pub resumed: bool,
}

/// Where a frame is when the hook sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Read from the socket, not yet processed.
    Received,
    /// Processed and its answer (if any) sent.
    Answered,
}

/// Called for every frame but heartbeats (which come with time, not with
/// the run's steps): the frame, its number among such frames over all
/// connections (from 0), and the phase. `true` at `Received`: the frame is
/// lost (not processed, the connection closed).
pub type Hook = Arc<dyn Fn(&Value, usize, Phase) -> bool + Send + Sync>;

pub struct ScriptedServer {
    port: u16,
    seen: Arc<Mutex<Seen>>,
}

impl ScriptedServer {
    pub fn start(plan: Plan) -> ScriptedServer {
        Self::start_with_hook(plan, Arc::new(|_: &Value, _, _| false))
    }

    pub fn start_with_hook(plan: Plan, hook: Hook) -> ScriptedServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the scripted server");
        let port = listener
            .local_addr()
            .expect("scripted server address")
            .port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        let counted = Arc::new(AtomicUsize::new(0));
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = shared.clone();
                let hook = hook.clone();
                let counted = counted.clone();
                thread::spawn(move || serve(stream, plan, &seen, &hook, &counted));
            }
        });
        ScriptedServer { port, seen }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// `StopAckingAfter`: connections opened from now on append and ACK
    /// every output frame; those already open go on dropping them.
    pub fn resume_new_connections(&self) {
        self.seen.lock().expect("scripted server state").resumed = true;
    }

    /// Look at what was seen so far.
    pub fn seen<T>(&self, look: impl FnOnce(&Seen) -> T) -> T {
        look(&self.seen.lock().expect("scripted server state"))
    }
}

fn serve(stream: TcpStream, plan: Plan, seen: &Mutex<Seen>, hook: &Hook, counted: &AtomicUsize) {
    let Ok(mut ws) = tungstenite::accept(stream) else {
        return;
    };
    let (index, opened_after_resume) = {
        let mut seen = seen.lock().expect("scripted server state");
        seen.connections.push(Connection::default());
        (seen.connections.len() - 1, seen.resumed)
    };
    let record = |update: &mut dyn FnMut(&mut Seen, usize)| {
        update(&mut seen.lock().expect("scripted server state"), index);
    };
    let mut expected = 0u64;
    let mut last_acked = -1i64;
    loop {
        let text = match ws.read() {
            Ok(Message::Text(text)) => text.to_string(),
            Ok(Message::Close(_)) => {
                record(&mut |s, i| s.connections[i].closed_cleanly = true);
                if let Plan::HonestNoCloseReply = plan {
                    // Hold the socket without a reply until the peer drops it.
                    let mut byte = [0u8; 1];
                    let _ = std::io::Read::read(ws.get_mut(), &mut byte);
                    record(&mut |s, i| s.connections[i].ended = true);
                    return;
                }
                // tungstenite queued the close reply; the next read ends.
                continue;
            }
            Ok(_) => continue,
            Err(_) => {
                record(&mut |s, i| s.connections[i].ended = true);
                return;
            }
        };
        let Ok(frame) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let kind = frame["type"].as_str().unwrap_or("?").to_string();
        let step = (kind != "heartbeat").then(|| counted.fetch_add(1, Ordering::SeqCst));
        if step.is_some_and(|step| hook(&frame, step, Phase::Received)) {
            record(&mut |s, i| s.connections[i].ended = true);
            return; // lost with the connection
        }
        let machine = frame["machine"].as_str().unwrap_or("?").to_string();
        record(&mut |s, i| {
            s.connections[i].frames.push(kind.clone());
            s.machines.push(machine.clone());
        });
        let reply = match (kind.as_str(), plan) {
            ("connect", _) => Some(json!({"type": "ack", "ack_type": "connect"})),
            ("start", _) => {
                record(&mut |s, _| {
                    s.starts += 1;
                    if !s.appended.is_empty() {
                        s.starts_that_wiped_output += 1;
                        s.appended.clear();
                    }
                });
                Some(json!({"type": "ack", "ack_type": "start"}))
            }
            ("sync_request", _) => Some(json!({"type": "sync_response", "last_seq": last_acked})),
            ("output", Plan::StopAckingAfter(bytes))
                if !opened_after_resume
                    && seen.lock().expect("scripted server state").appended.len() >= bytes =>
            {
                None
            }
            ("output", Plan::Honest | Plan::HonestNoCloseReply | Plan::StopAckingAfter(_)) => {
                let seq = frame["seq"].as_u64().unwrap_or(u64::MAX);
                if seq == expected {
                    let data = frame["data"].as_str().unwrap_or_default().to_string();
                    record(&mut |s, _| s.appended.push_str(&data));
                    expected += 1;
                    last_acked = seq as i64;
                }
                Some(if seq < expected {
                    record(&mut |s, _| s.output_acks += 1);
                    json!({"type": "ack", "ack_type": "output", "seq": seq})
                } else {
                    json!({"type": "nack", "nack_type": "out_of_order", "expected_seq": expected, "received_seq": seq})
                })
            }
            ("complete", Plan::Honest | Plan::HonestNoCloseReply | Plan::StopAckingAfter(_)) => {
                let retcode = frame["retcode"]
                    .as_i64()
                    .and_then(|v| i32::try_from(v).ok())
                    .unwrap_or(-1);
                record(&mut |s, _| s.retcodes.push(retcode));
                Some(json!({"type": "ack", "ack_type": "complete", "seq": frame["seq"]}))
            }
            _ => None,
        };
        if let Some(reply) = reply {
            if ws.send(Message::text(reply.to_string())).is_err() {
                record(&mut |s, i| s.connections[i].ended = true);
                return;
            }
        }
        if let Some(step) = step {
            hook(&frame, step, Phase::Answered);
        }
    }
}
