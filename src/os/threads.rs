//! Starting our threads through one non-generic function: std's
//! `Builder::spawn` is compiled anew, with its thread set-up, for each
//! closure type, and we start six kinds of thread.

use std::io;
use std::thread::Builder;

/// `Builder::spawn` for a thread that returns nothing and is never joined.
pub trait SpawnDetached {
    fn spawn_detached(self, body: impl FnOnce() + Send + 'static) -> io::Result<()>;
}

impl SpawnDetached for Builder {
    fn spawn_detached(self, body: impl FnOnce() + Send + 'static) -> io::Result<()> {
        spawn_boxed(self, Box::new(body))
    }
}

#[inline(never)]
fn spawn_boxed(builder: Builder, body: Box<dyn FnOnce() + Send>) -> io::Result<()> {
    builder.spawn(body).map(drop)
}
