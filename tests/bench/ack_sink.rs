//! The benchmark's ACK-everything sink (being written; see tests/bench/bench.py).
fn main() {
    eprintln!("ack_sink: not implemented yet");
    std::process::exit(2);
}
