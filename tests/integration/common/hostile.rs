//! A server with the real endpoint's per-socket sequencing that greets every
//! connection with garbage, answers `sync_request` with an absurd number
//! first, sprinkles garbage between its ACKs, and on the first two
//! connections sends a message over the 1 MiB cap (one 2 MiB frame, then a
//! 2.5 MiB message in 64 KiB fragments) after which it goes silent but keeps
//! the socket open: only the wrapper can end those connections.
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::thread;

use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{Data, OpCode};

#[derive(Default, Debug)]
pub struct Seen {
    pub appended: String,
    pub retcode: Option<i64>,
    pub connections: u32,
    /// Connections that got an oversized message.
    pub oversized: Vec<u32>,
    /// ... and that the wrapper then closed (we never do).
    pub closed_by_wrapper: Vec<u32>,
    /// Frames the wrapper sent, by type.
    pub received: BTreeMap<String, u32>,
}

/// Sent on every connection before the `connect` ACK.
fn greeting(instance: &str) -> Vec<Message> {
    let mut texts: Vec<String> = [
        "not json {",
        "",
        "[1,2]",
        "42",
        "\"x\"",
        "null",
        "{}",
        r#"{"type":7}"#,
        r#"{"type":null}"#,
        r#"{"type":"ack","ack_type":"output","seq":"0"}"#,
        r#"{"type":"ack","ack_type":"output","seq":1.5}"#,
        r#"{"type":"ack","ack_type":"output"}"#,
        r#"{"type":"ack","ack_type":"output","seq":99999999999999999999999}"#,
        r#"{"type":"ack","ack_type":"output","seq":999999}"#,
        r#"{"type":"ack","ack_type":"output","seq":-3}"#,
        r#"{"type":"ack","ack_type":"complete","seq":0}"#,
        r#"{"type":"nack","expected_seq":"x"}"#,
        r#"{"type":"nack"}"#,
        r#"{"type":"nack","nack_type":"out_of_order","expected_seq":-5,"received_seq":0}"#,
        r#"{"type":"nack","nack_type":"out_of_order","expected_seq":4611686018427387904,"received_seq":0}"#,
        r#"{"type":"sync_response","last_seq":"7"}"#,
        r#"{"type":"sync_response","last_seq":123456789}"#,
        r#"{"type":"kill","job_instance":{"x":1}}"#,
        r#"{"type":"surprise","data":[1,2,3]}"#,
        r#"{"type":"ACK","ack_type":"output","seq":0}"#,
        r#"{"type":"error","code":"JOB_NOT_FOUND","message":"not in answer to complete"}"#,
        r#"{"type":"error","code":"SOMETHING","message":"noise"}"#,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    texts.extend(kills_for_others(instance));
    let mut frames: Vec<Message> = texts.into_iter().map(Message::text).collect();
    frames.push(Message::binary(vec![0u8, 159, 146, 150]));
    frames
}

fn kills_for_others(instance: &str) -> Vec<String> {
    vec![
        json!({"type": "kill", "job_name": "other", "job_instance": "someone_else", "machine": super::MACHINE}).to_string(),
        json!({"type": "kill", "job_name": "hostile", "job_instance": instance, "machine": "another-machine"}).to_string(),
    ]
}

/// Sent between ACKs: nothing here may retire, renumber, kill or end.
fn interjection(instance: &str, expected: u64) -> Vec<Message> {
    let mut texts = vec![
        r#"{"type":"ack","ack_type":"output","seq":999999}"#.to_string(),
        r#"{"type":"ack","ack_type":"output","seq":-3}"#.to_string(),
        r#"{"type":"ack","ack_type":"output","seq":9223372036854775807}"#.to_string(),
        r#"{"type":"nack","nack_type":"out_of_order","expected_seq":-5,"received_seq":0}"#
            .to_string(),
        r#"{"type":"nack","nack_type":"out_of_order","expected_seq":4611686018427387904,"received_seq":0}"#
            .to_string(),
        json!({"type": "nack", "nack_type": "out_of_order", "expected_seq": expected + 1000, "received_seq": expected}).to_string(),
        r#"{"type":"sync_response","last_seq":999999}"#.to_string(),
        r#"{"type":"sync_response","last_seq":-1}"#.to_string(),
        r#"{"type":"ack","ack_type":"output","seq":"1"}"#.to_string(),
        r#"{"type":"surprise"}"#.to_string(),
        "]".to_string(),
    ];
    texts.extend(kills_for_others(instance));
    let mut frames: Vec<Message> = texts.into_iter().map(Message::text).collect();
    frames.push(Message::binary(b"binary noise".to_vec()));
    frames
}

/// First answer to `sync_request`, per connection: each claims more than
/// was ever sent, or is negative.
const ABSURD_SYNC: [i64; 4] = [123_456_789, -5, 1 << 62, i64::MAX];

fn oversized(connection: u32) -> Vec<Message> {
    if connection == 1 {
        let pad = "x".repeat(2 << 20);
        return vec![Message::text(format!(
            "{{\"type\":\"surprise\",\"pad\":\"{pad}\"}}"
        ))];
    }
    // 40 fragments of 64 KiB: each under the cap, the message over it.
    let mut frames = vec![Message::Frame(Frame::message(
        b"{\"type\":\"surprise\",\"pad\":\"".to_vec(),
        OpCode::Data(Data::Text),
        false,
    ))];
    for _ in 0..40 {
        frames.push(Message::Frame(Frame::message(
            vec![b'y'; 64 << 10],
            OpCode::Data(Data::Continue),
            false,
        )));
    }
    frames.push(Message::Frame(Frame::message(
        b"\"}".to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )));
    frames
}

/// What the server does beyond the garbage it always sends.
#[derive(Clone, Copy)]
pub enum Plan {
    /// On connections 1 and 2, after two ACKs: a message over 1 MiB,
    /// then silence on a socket kept open.
    Oversized,
    /// On every connection, before the `connect` ACK: this many frames
    /// of ~1 MB each whose strings the wrapper may be tempted to log.
    LogFlood(usize),
}

/// Frames under the size cap whose every string is long: an error, a kill
/// for another instance, an unknown type.
fn flood(count: usize) -> Vec<Message> {
    let long = "z".repeat(1_000_000 / 3);
    (0..count)
        .map(|i| {
            Message::text(match i % 3 {
                0 => json!({"type": "error", "code": long, "message": long}).to_string(),
                1 => {
                    json!({"type": "kill", "job_name": long, "job_instance": long, "machine": long})
                        .to_string()
                }
                _ => json!({"type": long}).to_string(),
            })
        })
        .collect()
}

pub fn start(instance: &'static str, plan: Plan) -> (u16, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = seen.clone();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let seen = shared.clone();
            thread::spawn(move || serve(stream, instance, plan, &seen));
        }
    });
    (port, seen)
}

fn serve(stream: std::net::TcpStream, instance: &str, plan: Plan, seen: &Mutex<Seen>) {
    let Ok(mut ws) = tungstenite::accept(stream) else {
        return;
    };
    let connection = {
        let mut s = seen.lock().expect("seen");
        s.connections += 1;
        s.connections
    };
    let mut expected = 0u64;
    let mut last_acked = -1i64;
    let mut acked_here = 0u32;
    let mut silent = false;
    let ended = |silent: bool| {
        if silent {
            seen.lock()
                .expect("seen")
                .closed_by_wrapper
                .push(connection);
        }
    };
    loop {
        let message = match ws.read() {
            Ok(message) => message,
            Err(_) => return ended(silent),
        };
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        let kind = frame["type"].as_str().unwrap_or("?").to_string();
        *seen
            .lock()
            .expect("seen")
            .received
            .entry(kind.clone())
            .or_default() += 1;
        if silent {
            continue;
        }
        let mut replies: Vec<Message> = Vec::new();
        match kind.as_str() {
            "connect" => {
                replies.extend(greeting(instance));
                if let Plan::LogFlood(count) = plan {
                    replies.extend(flood(count));
                }
                replies.push(Message::text(
                    json!({"type": "ack", "ack_type": "connect"}).to_string(),
                ));
            }
            "start" if frame["job_instance"] == instance => {
                replies.push(Message::text(
                    json!({"type": "ack", "ack_type": "start"}).to_string(),
                ));
            }
            "sync_request" => {
                let absurd = ABSURD_SYNC[(connection as usize - 1) % ABSURD_SYNC.len()];
                for last_seq in [absurd, last_acked] {
                    replies.push(Message::text(
                        json!({"type": "sync_response", "last_seq": last_seq}).to_string(),
                    ));
                }
            }
            "output" => {
                let Some(seq) = frame["seq"].as_u64() else {
                    continue;
                };
                if seq == expected {
                    seen.lock()
                        .expect("seen")
                        .appended
                        .push_str(frame["data"].as_str().unwrap_or_default());
                    expected += 1;
                    last_acked = seq as i64;
                    acked_here += 1;
                }
                // Appended now, or a duplicate: ACK it; a gap: NACK it.
                if seq < expected {
                    replies.push(Message::text(
                        json!({"type": "ack", "ack_type": "output", "seq": seq}).to_string(),
                    ));
                } else {
                    replies.push(Message::text(
                        json!({"type": "nack", "nack_type": "out_of_order", "expected_seq": expected, "received_seq": seq})
                            .to_string(),
                    ));
                }
                if acked_here % 2 == 0 && seq + 1 == expected {
                    replies.extend(interjection(instance, expected));
                }
                let oversize = matches!(plan, Plan::Oversized) && connection <= 2;
                if oversize && acked_here == 2 && seq + 1 == expected {
                    replies.extend(oversized(connection));
                    seen.lock().expect("seen").oversized.push(connection);
                    silent = true;
                }
            }
            "complete" => {
                seen.lock().expect("seen").retcode = frame["retcode"].as_i64();
                replies.push(Message::text(
                    json!({"type": "ack", "ack_type": "complete", "seq": frame["seq"]}).to_string(),
                ));
            }
            _ => {}
        }
        for reply in replies {
            if ws.send(reply).is_err() {
                return ended(silent);
            }
        }
    }
}
