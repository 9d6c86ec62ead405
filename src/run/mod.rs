//! One run inside the daemon (and the guardian's report of a dead daemon's
//! run): the supervisor thread's loop and the session it runs with the
//! server, the job's lifecycle, the reader threads, and what the supervisor
//! does to the world (`effects`, `live`).

pub mod effects;
pub mod job;
pub mod live;
pub mod readers;
pub mod session;
pub mod supervisor;
pub mod utf8;
