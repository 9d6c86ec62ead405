//! The operating system, wrapped once: the job's process and its group
//! (`child`), pipes, the overlap lock, files that must be regular, NSS,
//! the clock, our threads and one-shot hand-offs between them. No protocol
//! and no policy here: the callers decide, these modules do.

pub mod child;
pub mod clock;
pub mod lockfile;
pub mod nss;
pub mod oneshot;
pub mod pipe;
pub mod regular_file;
pub mod threads;
