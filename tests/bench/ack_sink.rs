//! A fast WebSocket sink for `./build.sh bench`: speaks the server's side of
//! the wrapper protocol (per-socket sequence numbers, ACK everything in
//! order), does no work per byte beyond parsing, and reports the throughput.
//!
//! Prints `PORT <n>` first; then, for each `complete`, one JSON line:
//! `{"bytes":..,"messages":..,"first_output_s":..,"last_ack_s":..,"retcode":..}`
//! (times in seconds since the sink started). Not shipped; a benchmark tool.

use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Instant;

use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::protocol::WebSocketConfig;

/// Output statistics shared by all connections of one job.
#[derive(Default)]
struct Totals {
    bytes: AtomicU64,
    messages: AtomicU64,
    /// Microseconds since start, 0 = none yet.
    first_output_us: AtomicU64,
    last_ack_us: AtomicU64,
}

fn main() {
    let listener = match TcpListener::bind("127.0.0.1:0") {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("ack_sink: bind 127.0.0.1:0: {e}");
            std::process::exit(1);
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    println!("PORT {port}");
    let _ = std::io::stdout().flush();
    let started = Instant::now();
    let totals = Arc::new(Totals::default());
    for stream in listener.incoming().flatten() {
        let totals = totals.clone();
        thread::spawn(move || serve(stream, started, &totals));
    }
}

fn serve(stream: std::net::TcpStream, started: Instant, totals: &Totals) {
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let Ok(mut ws) = tungstenite::accept_with_config(stream, Some(config)) else {
        return;
    };
    let now_us = || started.elapsed().as_micros() as u64;
    let mut last_acked: i64 = -1;
    let mut expected: u64 = 0;
    while let Ok(message) = ws.read() {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        let reply = match frame["type"].as_str() {
            Some("connect") => json!({"type": "ack", "ack_type": "connect"}),
            Some("start") => json!({"type": "ack", "ack_type": "start"}),
            Some("sync_request") => json!({"type": "sync_response", "last_seq": last_acked}),
            Some("output") => {
                let seq = frame["seq"].as_u64().unwrap_or(u64::MAX);
                if seq == expected {
                    let data = frame["data"].as_str().unwrap_or("");
                    let _ = totals.first_output_us.compare_exchange(
                        0,
                        now_us().max(1),
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                    totals.bytes.fetch_add(data.len() as u64, Ordering::SeqCst);
                    totals.messages.fetch_add(1, Ordering::SeqCst);
                    expected += 1;
                    last_acked = seq as i64;
                }
                if seq <= expected {
                    json!({"type": "ack", "ack_type": "output", "seq": seq})
                } else {
                    json!({"type": "nack", "nack_type": "out_of_order", "expected_seq": expected, "received_seq": seq})
                }
            }
            Some("complete") => {
                let report = json!({
                    "bytes": totals.bytes.load(Ordering::SeqCst),
                    "messages": totals.messages.load(Ordering::SeqCst),
                    "first_output_s": totals.first_output_us.load(Ordering::SeqCst) as f64 / 1e6,
                    "last_ack_s": totals.last_ack_us.load(Ordering::SeqCst) as f64 / 1e6,
                    "retcode": frame["retcode"],
                });
                println!("{report}");
                let _ = std::io::stdout().flush();
                for counter in [
                    &totals.bytes,
                    &totals.messages,
                    &totals.first_output_us,
                    &totals.last_ack_us,
                ] {
                    counter.store(0, Ordering::SeqCst);
                }
                json!({"type": "ack", "ack_type": "complete", "seq": frame["seq"]})
            }
            _ => continue,
        };
        if ws.send(Message::text(reply.to_string())).is_err() {
            return;
        }
        if frame["type"] == "output" {
            totals.last_ack_us.store(now_us(), Ordering::SeqCst);
        }
    }
}
