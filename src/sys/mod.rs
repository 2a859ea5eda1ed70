//! Thin, policy-free wrappers over the Linux system calls eploop uses.
//!
//! Every `unsafe` libc call of the crate (outside the C ABI layer) lives here, one `// SAFETY:`
//! line each. Each wrapper returns `Result<T, Errno>` where the error is the positive errno
//! value, so the engine above can decide policy in safe Rust and the FFI layer can hand `-errno`
//! to C unchanged. Descriptors a wrapper creates come back as `OwnedFd`; descriptors it is
//! handed are raw, since the engine also holds descriptors it does not own (EP_BORROW).

#[macro_use]
mod syscall;
mod addr;
mod epoll;
mod errno;
mod fd;
mod io;
mod process;
mod resolve;
mod signals;
mod sigpipe;
mod socket;
mod udp;

pub use addr::{unlink_stale_unix_socket, Addr, RawAddr};
pub use epoll::{
    epoll_add, epoll_create, epoll_delete, epoll_modify, epoll_wait, ev, eventfd_signal, EventBuf,
    Waker,
};
pub use errno::*;
pub use fd::{
    close, fd_kind, open_devnull, set_cloexec, set_status_flags, status_flags, Fd, FdKind,
};
pub use io::{read, recv, send, send_vectored, write_vectored, MAX_IOV};
pub use process::{on_fork_in_child, set_errno, thread_token};
pub use resolve::*;
pub use signals::*;
pub use socket::{
    accept, connect, is_tcp, listen, local_port, set_keepalive, set_linger_zero, set_nodelay,
    set_user_timeout, shutdown_write, take_socket_error, ListenOptions,
};
pub use udp::{
    interface_index, multicast_membership, recv_from, send_to, set_udp_option, udp_bind,
    udp_connect, UdpOption, MAX_DATAGRAM,
};

mod file;
pub use file::{dup_cloexec, file_info, sendfile, ENODATA};
