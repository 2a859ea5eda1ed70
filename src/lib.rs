//! eploop: Linux epoll as a callback event loop with a C ABI.
//!
//! Every way a peer can go away (an empty read, EPOLLRDHUP, EPOLLHUP, EPOLLERR, a reset) becomes
//! exactly one `on_close`, after every received byte was delivered.
//!
//! Layers: `sys` wraps the system calls (all the unsafe syscalls live there), [`engine`] is the
//! loop in safe Rust behind the [`engine::Handler`] trait, and [`ffi`] is the C ABI that cbindgen
//! turns into `include/eploop.h`. The `ep_*` functions are re-exported here so Rust tests can call
//! the C ABI directly.

pub mod engine;
pub mod ffi;
mod sys;

pub use ffi::*;
