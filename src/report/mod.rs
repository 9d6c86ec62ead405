//! The job's output on its way to the server, as plain state with no
//! threads (the session drives it): the ACK-tracked outbox and its
//! write-ahead spool on disk, the per-run output cap and the tail it keeps,
//! and the pacing from ACKs.

pub mod outbox;
pub mod output_cap;
pub mod pacing;
pub mod spool;
pub mod tail;
