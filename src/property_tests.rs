//! Property tests: properties that must hold for every input, checked on
//! seeded random inputs, for what takes hostile input (the inbound frame
//! decoder, the configuration parser, the minion-config YAML reader) and for
//! the outbox and its journal driven by a simulated server that cuts
//! connections at random.
//!
//! The seeds are fixed here (the kept corpus is the seed plus the generator),
//! so a failure reproduces exactly; `SP_PROPERTY_CASES` scales the run
//! (CI runs the default, a few seconds).

use std::collections::HashMap;

use crate::config::Config;
use crate::messages::{Inbound, Stream};
use crate::report::outbox::{NackOutcome, Outbox};
use crate::wire::protocol;

/// xorshift64*: small, deterministic, good enough to explore inputs.
use crate::wire::xorshift::XorShift as Rng;

/// Drawing inputs from the generator.
trait Draw {
    /// A number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize;
    /// One of `items`, which must not be empty.
    fn pick<T: Copy>(&mut self, items: &[T]) -> T;
}

impl Draw for Rng {
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

fn iterations(default: usize) -> usize {
    std::env::var("SP_PROPERTY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const FRAME_SEEDS: &[&str] = &[
    r#"{"type":"ack","ack_type":"output","seq":0}"#,
    r#"{"type":"ack","ack_type":"start"}"#,
    r#"{"type":"ack","ack_type":"complete","seq":4}"#,
    r#"{"type":"nack","nack_type":"out_of_order","expected_seq":3,"received_seq":5}"#,
    r#"{"type":"sync_response","last_seq":-1}"#,
    r#"{"type":"kill","job_name":"j","job_instance":"i","machine":"m"}"#,
    r#"{"type":"error","code":"JOB_NOT_FOUND","message":"gone"}"#,
];

const FRAGMENTS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "null",
    "true",
    "-1",
    "1e999",
    "18446744073709551616",
    "-9223372036854775809",
    "0.5",
    "\"type\"",
    "\"seq\"",
    "\"ack\"",
    "\\u0000",
    "\\ud800",
    "😀",
    "\u{0}",
    " ",
    "\"ack_type\"",
    "{}",
    "[]",
];

fn mutate(rng: &mut Rng, seed: &str) -> String {
    let mut text: Vec<char> = seed.chars().collect();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(text.len() + 1);
        match rng.below(4) {
            0 if !text.is_empty() => {
                text.remove(at.min(text.len() - 1));
            }
            1 => text.truncate(at),
            2 => {
                let insert: Vec<char> = rng.pick(FRAGMENTS).chars().collect();
                text.splice(at..at, insert);
            }
            _ => text.insert(
                at,
                char::from_u32(rng.next_u64() as u32 % 0x800).unwrap_or('x'),
            ),
        }
    }
    text.into_iter().collect()
}

#[test]
fn inbound_frames_never_panic() {
    let mut rng = Rng(0x5eed_f4a3_0000_0001);
    for _ in 0..iterations(200_000) {
        let seed = rng.pick(FRAME_SEEDS);
        let input = if rng.below(8) == 0 {
            (0..rng.below(40)).map(|_| rng.pick(FRAGMENTS)).collect()
        } else {
            mutate(&mut rng, seed)
        };
        // Must return, Ok or Err, for every input. Decoded sequence numbers are
        // always plain integers.
        if let Ok(Inbound::Ack { seq: Some(seq), .. }) = protocol::decode(&input) {
            assert!(input.contains(&seq.to_string()), "{input:?}");
        }
    }
}

#[test]
fn configuration_never_panics_and_paths_stay_inside() {
    let mut rng = Rng(0x5eed_c0f1_0000_0002);
    let values = [
        "",
        "0",
        "1",
        "-1",
        "true",
        "no",
        "ws://127.0.0.1:1",
        "wss://x:1",
        "ws://[::1]:80",
        "ws://h:99999",
        "../x",
        "/abs/dir",
        "rel",
        "a/b",
        "..",
        ".",
        "debug",
        "off",
        "%00",
        "😀",
        "99999999999999999999",
        " 5 ",
        "ws://",
    ];
    // Every variable the configuration reads (its one table), so a new one
    // is drawn at random without being added here.
    let vars: Vec<&str> = crate::config::VARIABLES.iter().map(|v| v.name).collect();
    for _ in 0..iterations(50_000) {
        let mut env: HashMap<&str, String> = HashMap::new();
        env.insert("SP_WEBSOCKET_URL", "ws://127.0.0.1:9".into());
        env.insert("SP_JOB_NAME", "j".into());
        env.insert("SP_JOB_INSTANCE", "i".into());
        env.insert("SP_COMMAND", "true".into());
        for _ in 0..rng.below(5) {
            let var = vars[rng.below(vars.len())];
            let mut value: String = (0..1 + rng.below(3)).map(|_| rng.pick(&values)).collect();
            if rng.below(4) == 0 {
                value = mutate(&mut rng, &value);
            }
            env.insert(var, value);
        }
        if let Ok(cfg) = Config::from_lookup(|k| env.get(k).cloned()) {
            let log = cfg.log_path();
            assert_eq!(log.parent(), Some(cfg.log_dir.as_path()), "{env:?}");
            let name = cfg.job_file_name();
            assert!(
                !name.contains('/') && !name.starts_with('.') && !name.is_empty(),
                "{env:?}"
            );
            if !env.contains_key("SP_LOCKFILE") || env["SP_LOCKFILE"].is_empty() {
                assert_eq!(
                    cfg.lockfile.parent(),
                    Some(std::path::Path::new("/tmp")),
                    "{env:?}"
                );
            }
        }
    }
}

/// A server as the real endpoint behaves: per-socket expected seq, appends
/// in order, ACKs duplicates, NACKs gaps, forgets everything on a new socket.
struct SimServer {
    expected: u64,
    appended: String,
}

/// Drive an outbox through random output, cuts and lost ACKs against the
/// simulated server. Without lost ACKs the server must end with exactly the
/// job's output; with them, only whole batches whose ACK was lost may repeat.
#[test]
fn outbox_against_a_cutting_per_socket_server() {
    let mut rng = Rng(0x5eed_0b0c_0000_0003);
    for round in 0..iterations(300).max(1) {
        let lose_acks = round % 2 == 1;
        let mut outbox = Outbox::with_batch_limit(1 << 20, Vec::new(), 1 + rng.below(64));
        let mut server = SimServer {
            expected: 0,
            appended: String::new(),
        };
        let mut written = String::new();
        let mut in_flight: Vec<(u64, String)> = Vec::new();
        let mut connected = true;
        let mut lost_ack_text: Vec<String> = Vec::new();
        for step in 0..400 {
            match rng.below(11) {
                0..=3 => {
                    let text = format!("{step}:{}\n", "é".repeat(rng.below(20)));
                    written.push_str(&text);
                    outbox.push(
                        if rng.below(2) == 0 {
                            Stream::Stdout
                        } else {
                            Stream::Stderr
                        },
                        &text,
                    );
                    if rng.below(3) == 0 {
                        outbox.seal();
                    }
                }
                4..=5 if connected => {
                    while let Some((seq, batch)) = outbox.next_to_send(1 + rng.below(8), usize::MAX)
                    {
                        in_flight.push((seq, batch.text.clone()));
                    }
                }
                6..=7 if connected && !in_flight.is_empty() => {
                    // The server processes the oldest frame and answers.
                    let (seq, text) = in_flight.remove(0);
                    let reply = if seq == server.expected {
                        server.expected += 1;
                        server.appended.push_str(&text);
                        Some(seq)
                    } else if seq < server.expected {
                        Some(seq)
                    } else {
                        assert_ne!(
                            outbox.on_nack(server.expected as i64),
                            NackOutcome::Ignored,
                            "a real gap"
                        );
                        None
                    };
                    if let Some(seq) = reply {
                        if lose_acks && rng.below(3) == 0 {
                            // The connection dies right after the append.
                            lost_ack_text.push(text);
                            connected = false;
                            in_flight.clear();
                            outbox.on_disconnect();
                        } else {
                            outbox.on_ack(seq as i64);
                        }
                    }
                }
                8 if connected => {
                    connected = false;
                    in_flight.clear();
                    outbox.on_disconnect();
                }
                _ if !connected => {
                    connected = true;
                    server.expected = 0;
                    outbox.on_sync(-1);
                }
                _ => {}
            }
        }
        // Deliver the rest over a fresh, reliable connection.
        server.expected = 0;
        outbox.on_disconnect();
        outbox.on_sync(-1);
        outbox.seal();
        while let Some((seq, batch)) = outbox.next_to_send(8, usize::MAX) {
            assert_eq!(seq, server.expected);
            server.expected += 1;
            server.appended.push_str(&batch.text);
            let seq = seq as i64;
            outbox.on_ack(seq);
        }
        assert!(outbox.is_empty(), "round {round}");
        if !lose_acks {
            assert_eq!(server.appended, written, "round {round}: exact delivery");
        } else {
            // Every batch whose ACK died with its connection was sent again:
            // the server has exactly the output plus those batches once more.
            let repeated: usize = lost_ack_text.iter().map(String::len).sum();
            let recorded = server.appended.clone();
            assert_eq!(
                recorded.len(),
                written.len() + repeated,
                "round {round}: only lost-ACK batches repeat"
            );
        }
    }
}

/// The journal against the same simulated server, with messages cut to a
/// random send limit, NACKs and reconnects, and a memory bound so small that
/// most batches are read back from disk: at every step, what a guardian
/// would adopt if the daemon died then is exactly what the server lacks.
#[test]
fn the_journal_holds_exactly_what_the_server_lacks_at_every_step() {
    let mut rng = Rng(0x5eed_0b0c_0000_0004);
    let dir = std::env::temp_dir().join(format!("sp_property_journal_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    for round in 0..iterations(40).max(1) {
        let path = dir.join(format!("{round}.spool"));
        let memory = if round % 2 == 0 {
            1 << 20
        } else {
            1 + rng.below(100)
        };
        let mut outbox = Outbox::with_batch_limit(memory, vec![path.clone()], 4 + rng.below(64));
        let mut server = SimServer {
            expected: 0,
            appended: String::new(),
        };
        let mut written = String::new();
        let mut in_flight: Vec<(u64, String)> = Vec::new();
        // Stretches where the server ACKs nothing, then catches up: the
        // journal jumps back to its start and past its end.
        let mut stalled = false;
        for step in 0..400 {
            match rng.below(11) {
                0..=3 => {
                    let text = format!("{step}:{}\n", "é😀".repeat(rng.below(12)));
                    written.push_str(&text);
                    let stream = rng.pick(&[Stream::Stdout, Stream::Stderr]);
                    outbox.push(stream, &text);
                    if rng.below(3) == 0 {
                        outbox.seal();
                    }
                }
                4..=5 => {
                    outbox.set_send_limit(4 + rng.below(400));
                    while let Some((seq, batch)) = outbox.next_to_send(1 + rng.below(8), usize::MAX)
                    {
                        in_flight.push((seq, batch.text.clone()));
                    }
                }
                6..=8 if !stalled => {
                    // The server answers the frames in flight, or some.
                    let answered = match rng.below(2) {
                        0 => in_flight.len(),
                        _ => rng.below(in_flight.len() + 1),
                    };
                    for _ in 0..answered {
                        let (seq, text) = in_flight.remove(0);
                        if seq == server.expected {
                            server.expected += 1;
                            server.appended.push_str(&text);
                            outbox.on_ack(seq as i64);
                        } else if seq > server.expected {
                            outbox.on_nack(server.expected as i64);
                            break;
                        }
                    }
                }
                9 => stalled = rng.below(3) == 0 && !stalled,
                10 if rng.below(3) == 0 => {
                    in_flight.clear();
                    server.expected = 0;
                    outbox.on_disconnect();
                    outbox.on_sync(-1);
                }
                _ => {}
            }
            let (rest, missing) = crate::report::spool::unacked_text(&path);
            assert!(!missing, "round {round} step {step}");
            assert_eq!(
                format!("{}{rest}", server.appended),
                written,
                "round {round} step {step}"
            );
        }
        outbox.on_disconnect();
        outbox.on_sync(-1);
        server.expected = 0;
        outbox.seal();
        while let Some((seq, batch)) = outbox.next_to_send(8, usize::MAX) {
            server.appended.push_str(&batch.text);
            outbox.on_ack(seq as i64);
        }
        assert_eq!(server.appended, written, "round {round}");
        assert_eq!(
            crate::report::spool::unacked_text(&path),
            (String::new(), false)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Minion configurations, mutated with YAML's own punctuation: the reader
/// (scanner, composer, Salt's construction) must answer every one, value or
/// error, without panicking and within its node bound.
const YAML_SEEDS: &[&str] = &[
    "id: web-1\nmaster:\n- a\n- b\n",
    "base: &b {id: x, master: m}\n<<: *b\nid: y\n",
    "id: >-\n  folded\n  text\ngrains:\n  roles: [a, {b: c}]\n",
    "%YAML 1.1\n---\nid: !!str 0755\n...\n",
    "a: &a [1, 2]\nb: [*a, *a, *a]\nc: {? x : y}\n",
    "'id': \"multi\n  line \\u00e9\"\ninclude:\n  - a.conf\n",
    "id: |+\n  keep\n\nx: 1:30\ny: 0x1F\nz: 1.5e+3\n",
];

const YAML_FRAGMENTS: &[&str] = &[
    "\n",
    "  ",
    "- ",
    ": ",
    "? ",
    "&a ",
    "*a",
    "<<: ",
    "!!str ",
    "!x ",
    "|",
    ">-",
    "'",
    "\"",
    "[",
    "]",
    "{",
    "}",
    ",",
    "#",
    "---\n",
    "...\n",
    "%TAG ! tag:x,2000:\n",
    "\t",
    "\\",
    "~",
    "0o7",
    ".inf",
    "=",
    "\u{feff}",
    "\r",
];

#[test]
fn minion_config_yaml_never_panics() {
    let mut rng = Rng::new(0x5a17_1d5e);
    for _ in 0..iterations(20_000) {
        let seed = rng.pick(YAML_SEEDS);
        let mut text: Vec<char> = seed.chars().collect();
        for _ in 0..1 + rng.below(6) {
            let at = rng.below(text.len() + 1);
            match rng.below(3) {
                0 if !text.is_empty() => {
                    text.remove(at.min(text.len() - 1));
                }
                1 => {
                    let insert: Vec<char> = rng.pick(YAML_FRAGMENTS).chars().collect();
                    text.splice(at..at, insert);
                }
                _ => text.insert(
                    at,
                    char::from_u32(rng.next_u64() as u32 % 0x250).unwrap_or('x'),
                ),
            }
        }
        let text: String = text.into_iter().collect();
        if let Ok(value) = crate::minion::salt_yaml::load(&text) {
            if let Some(id) = value.get("id") {
                let _ = id.python_str();
            }
        }
    }
}
