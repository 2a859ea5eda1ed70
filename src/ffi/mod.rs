//! The C ABI, one file per C object: the loop (`lifecycle.rs`), registrations (`registration.rs`),
//! connections (`connection.rs`), UDP endpoints (`datagram.rs`), timers (`timer.rs`), signals (`signal.rs`), counters
//! (`stats.rs`), error codes (`errors.rs`), callbacks (`handler.rs`), the trace hook (`trace.rs`)
//! and the batch interface for bindings (`batch.rs`).
//! Every export that takes a loop goes through one boundary (`boundary.rs`): NULL, fork and thread
//! checks, the panic fallback, the poison flag. The doc comments here are the header's manual.

#![allow(non_camel_case_types)]

#[macro_use]
mod boundary;
mod batch;
mod connection;
mod datagram;
mod errors;
mod handler;
mod lifecycle;
mod registration;
mod signal;
mod stats;
mod step_data;
mod timer;
mod trace;

pub use batch::*;
pub use connection::*;
pub use datagram::*;
pub use errors::*;
pub use handler::{
    ep_callbacks, ep_close_reason, ep_close_reason_name, ep_datagram_callbacks, ep_post_cb,
    ep_signal_cb, ep_timer_cb, EP_DGRAM_TRUNCATED,
};
pub use lifecycle::*;
pub use registration::*;
pub use signal::*;
pub use stats::*;
pub use timer::*;
pub use trace::*;

/// An event loop. Opaque. Create with ep_loop_new(), destroy with ep_loop_free(). A loop is used
/// by one thread at a time (the one running it): calls from another thread while it is in use
/// return EP_ETHREAD, except ep_stop() and ep_post(), which any thread may call (ep_stop() also a
/// signal handler). After fork(), the child may only ep_loop_free() an inherited loop.
pub struct ep_loop {
    _private: [u8; 0],
}

/// A registration: a listener, a connection, a timer, or any other adopted fd. 0 is never a valid
/// id; an id is never reused and is unique among the loops of the process, so an old id, or an id
/// of another loop, can only ever yield EP_ESTALE.
pub type ep_id = u64;
