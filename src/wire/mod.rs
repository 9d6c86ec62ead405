//! The wire to the server: the link thread that owns the WebSocket
//! (`link`), the frames' format (`protocol`), the buffers frames are built
//! in (`frames`) and the reconnect jitter's generator (`xorshift`).

pub mod frames;
pub mod link;
pub mod protocol;
pub mod xorshift;
