//! UDP endpoints: binding, a default destination, sending datagrams, multicast membership and
//! the datagram socket options. An endpoint has no peer that can leave: the network's answers
//! (ICMP errors) go to on_error, and its one on_close comes from the local side or a fatal error.

use std::ffi::{c_char, c_int, c_void};

use super::boundary::Engine;
use super::connection::byte_arg;
use super::errors::{code, id_or_code, status, EP_ENULL};
use super::handler::{ep_datagram_callbacks, Callbacks, FfiHandler};
use super::registration::{host_str, options, text, EP_EDGE, EP_QUEUE, EP_REUSEPORT, EP_UNREF};
use super::{ep_id, ep_loop};
use crate::engine::Error;
use crate::sys::{self, RawAddr, UdpOption};

/// ep_udp_set_option(): SO_BROADCAST (value 1 or 0): allow sending to broadcast addresses
/// (without it such a send returns -EACCES).
pub const EP_UDP_BROADCAST: c_int = 1;
/// ep_udp_set_option(): whether this host's own members of a multicast group receive what the
/// endpoint sends to it (1, the kernel's default) or not (0).
pub const EP_UDP_MULTICAST_LOOP: c_int = 2;
/// ep_udp_set_option(): the TTL (IPv6: hop limit) of multicast datagrams, 0 to 255 (default 1:
/// the local network only).
pub const EP_UDP_MULTICAST_TTL: c_int = 3;
/// ep_udp_set_option(): the longest datagram delivered whole, 1 to 65507 (the default: any UDP
/// datagram). A longer one is delivered cut to this length with EP_DGRAM_TRUNCATED.
pub const EP_UDP_MAX_DATAGRAM: c_int = 4;

/// ep_udp_set_option(): the interface multicast datagrams leave by, as an interface index
/// (if_nametoindex(); 1 is usually the loopback interface), 0 for the routing table's choice.
pub const EP_UDP_MULTICAST_IF: c_int = 5;

/// The largest datagram ep_sendto() accepts (the UDP payload limit over IPv4).
pub const EP_DATAGRAM_MAX: usize = 65_507;
const _: () = assert!(EP_DATAGRAM_MAX == sys::MAX_DATAGRAM);

/// Creates a UDP socket (non-blocking, close-on-exec) bound to `host`:`port` and registers it as
/// an endpoint. `host` is a numeric IPv4 or IPv6 address or "localhost"; "" means every address
/// (IPv6 and IPv4); "0.0.0.0" every IPv4 address (what broadcast and IPv4 multicast receivers
/// bind). `port` 0 picks a free port (ep_local_port()). `flags`: EP_EDGE, EP_QUEUE (events for
/// ep_poll(); `cbs` may then be NULL), EP_UNREF, EP_REUSEPORT (SO_REUSEADDR and SO_REUSEPORT:
/// several endpoints share the port, e.g. multicast listeners). `cbs` is copied.
///
/// The endpoint works with ep_sendto(), ep_udp_connect(), ep_udp_join()/ep_udp_leave(),
/// ep_udp_set_option(), ep_pause_reading()/ep_resume_reading(), ep_set_watermarks(), ep_close()
/// (reading stops, what is queued is sent, then on_close(EP_CLOSE_LOCAL); a queue that makes no
/// progress for the linger time of ep_set_linger() is dropped: on_close(EP_CLOSE_TIMEOUT,
/// ETIMEDOUT)), ep_abort() (queue dropped, on_close(EP_CLOSE_ABORT)), ep_fd(), ep_local_port(),
/// ep_set_user(), ep_get_user(); ep_drain() closes endpoints like connections, at the end of its
/// grace period. Stream calls (ep_send(), ep_shutdown()...) return EP_EKIND.
///
/// Returns the endpoint's id, or EP_ENULL (NULL host, or NULL cbs without EP_QUEUE), -EINVAL (an
/// unparsable host, a flag other than those above), -EADDRINUSE, -EACCES (a privileged port),
/// -EADDRNOTAVAIL (an address not on this host), -EMFILE/-ENFILE, -ENOMEM, EP_EBUSY (during
/// ep_loop_free()), or a loop error (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC).
///
/// # Safety
/// `lp` as for ep_loop_free(); `host` NULL or NUL-terminated; `cbs` NULL or pointing at a valid
/// ep_datagram_callbacks.
#[no_mangle]
pub unsafe extern "C" fn ep_udp_bind(
    lp: *mut ep_loop,
    host: *const c_char,
    port: u16,
    flags: u32,
    cbs: *const ep_datagram_callbacks,
    user: *mut c_void,
) -> i64 {
    // SAFETY: `host` is NULL or NUL-terminated (contract).
    let host = unsafe { text(host) };
    with_loop!(lp, |boxed| {
        if flags & !(EP_EDGE | EP_QUEUE | EP_UNREF | EP_REUSEPORT) != 0 {
            return -i64::from(libc::EINVAL);
        }
        let queued = flags & EP_QUEUE != 0;
        // SAFETY: a non-NULL `cbs` points at a valid ep_datagram_callbacks (contract); copied.
        // (EP_QUEUE: events are recorded, `cbs` is not used and may be NULL)
        let cbs = match unsafe { cbs.as_ref() } {
            _ if queued => Callbacks::Queued,
            Some(cbs) => Callbacks::datagram(*cbs),
            None => return i64::from(EP_ENULL),
        };
        let handler = FfiHandler::new(cbs, user);
        let bound = host.and_then(|host| {
            let opts = options(flags)?;
            boxed.engine.udp_bind(host_str(host)?, port, opts, handler)
        });
        id_or_code(bound)
    })
}

/// Gives endpoint `id` a default destination, `host`:`port` (numeric; an IPv4 address works on
/// an endpoint bound to ""): ep_sendto() with a NULL address then sends there, only datagrams
/// from there are received, and an ICMP "port unreachable" answer reaches on_error as
/// ECONNREFUSED. Never blocks. Returns 0, EP_ENULL (NULL host), -EINVAL (an unparsable host),
/// -EAFNOSUPPORT (an IPv6 address on an IPv4 endpoint), -ENETUNREACH, EP_ESTALE, EP_EKIND (not
/// a UDP endpoint), EP_ECLOSING (after your own ep_close()/ep_abort()), or a loop error
/// (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC).
///
/// # Safety
/// `lp` as for ep_loop_free(); `host` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ep_udp_connect(
    lp: *mut ep_loop,
    id: ep_id,
    host: *const c_char,
    port: u16,
) -> c_int {
    // SAFETY: `host` is NULL or NUL-terminated (contract).
    let host = unsafe { text(host) };
    with_loop!(lp, |boxed| status(
        host.and_then(|h| boxed.engine.udp_connect(id, host_str(h)?, port))
    ))
}

/// Sends one datagram of `len` bytes (0 allowed) from `buf` on endpoint `id` to `addr` (a struct
/// sockaddr_in or sockaddr_in6 of `addrlen` bytes, e.g. the `from` of on_datagram), or, with
/// `addr` NULL, to the endpoint's default destination (ep_udp_connect()). The bytes are copied.
/// Never blocks: a datagram the kernel cannot take now is queued whole and sent in order when
/// the socket is writable.
///
/// Returns 0 when the queue is at or below its high-water mark, or 1 — "stop producing" — when it
/// is above it (wait for on_writable); also 1 once the endpoint's close was decided by the loop
/// (a fatal error; the datagram is dropped and on_close follows). What the network answers (host
/// unreachable, ICMP port unreachable on a connected endpoint) goes to on_error, never to this
/// return value. Negative returns are the caller's mistakes, with nothing sent or queued:
/// EP_ESTALE, EP_ENULL (NULL buf with len > 0), EP_EKIND (not a UDP endpoint), EP_ECLOSING (after
/// your own ep_close()/ep_abort()), -EMSGSIZE (longer than EP_DATAGRAM_MAX, or than the route
/// allows), -EINVAL (a malformed address), -EAFNOSUPPORT (not an IPv4/IPv6 address, or an IPv6
/// one on an IPv4 endpoint), -EDESTADDRREQ (NULL addr on an endpoint without a default
/// destination), -EACCES (a broadcast address without EP_UDP_BROADCAST), -ENOBUFS (the queue would
/// exceed 1 GiB), or a loop error (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC). May be called from
/// callbacks.
///
/// # Safety
/// `lp` as for ep_loop_free(); `buf` readable for `len` bytes (or NULL with `len` 0); `addr` NULL
/// or readable for `addrlen` bytes.
#[no_mangle]
pub unsafe extern "C" fn ep_sendto(
    lp: *mut ep_loop,
    id: ep_id,
    buf: *const c_void,
    len: usize,
    addr: *const libc::sockaddr,
    addrlen: libc::socklen_t,
) -> c_int {
    with_loop!(lp, |boxed| {
        if len > EP_DATAGRAM_MAX {
            return -libc::EMSGSIZE;
        }
        // SAFETY: `buf` is readable for `len` bytes (contract).
        let Some(data) = (unsafe { byte_arg(buf, len) }) else {
            return EP_ENULL;
        };
        let to = if addr.is_null() {
            None
        } else {
            // SAFETY: `addr` is readable for `addrlen` bytes (contract); RawAddr checks the
            // length against the family and copies at most a sockaddr_storage.
            let bytes = unsafe {
                std::slice::from_raw_parts(addr.cast::<u8>(), (addrlen as usize).min(256))
            };
            match RawAddr::from_bytes(bytes) {
                Ok(raw) => Some(raw),
                Err(errno) => return -errno,
            }
        };
        boxed
            .engine
            .send_to(id, data, to.as_ref())
            .map_or_else(code, c_int::from)
    })
}

/// The strings of a membership call.
///
/// # Safety
/// `group` NULL or NUL-terminated; `iface` NULL or NUL-terminated.
unsafe fn membership(
    engine: &Engine,
    id: ep_id,
    group: *const c_char,
    iface: *const c_char,
    join: bool,
) -> Result<(), Error> {
    // SAFETY: forwarded contract.
    let group = host_str(unsafe { text(group) }?)?;
    let iface = if iface.is_null() {
        ""
    } else {
        // SAFETY: forwarded contract.
        host_str(unsafe { text(iface) }?)?
    };
    engine.udp_membership(id, group, iface, join)
}

/// Makes endpoint `id` a member of the multicast group `group` (numeric, e.g. "239.1.2.3" or
/// "ff02::1:3"), on the interface `iface`: NULL or "" lets the kernel choose; for IPv4 the
/// interface's address ("192.168.1.10") or its name; for IPv6 its name ("eth0") or index. Bind the
/// endpoint to the group's port on "0.0.0.0" or "" (EP_REUSEPORT lets several programs do so).
/// Returns 0, EP_ENULL (NULL group), -EINVAL (not a multicast address, or unparsable), -ENODEV (no
/// such interface), -EADDRINUSE (already a member), -EADDRNOTAVAIL, -ENOBUFS (the membership
/// limit), EP_ESTALE, EP_EKIND (not a UDP endpoint), EP_ECLOSING (after your own ep_close()/
/// ep_abort()), or a loop error (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC).
///
/// # Safety
/// `lp` as for ep_loop_free(); `group` and `iface` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ep_udp_join(
    lp: *mut ep_loop,
    id: ep_id,
    group: *const c_char,
    iface: *const c_char,
) -> c_int {
    // SAFETY: forwarded contract.
    with_loop!(lp, |boxed| status(unsafe {
        membership(&boxed.engine, id, group, iface, true)
    }))
}

/// Ends the membership ep_udp_join() made (same arguments). Returns as ep_udp_join(), and
/// -EADDRNOTAVAIL when the endpoint is not a member.
///
/// # Safety
/// `lp` as for ep_loop_free(); `group` and `iface` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ep_udp_leave(
    lp: *mut ep_loop,
    id: ep_id,
    group: *const c_char,
    iface: *const c_char,
) -> c_int {
    // SAFETY: forwarded contract.
    with_loop!(lp, |boxed| status(unsafe {
        membership(&boxed.engine, id, group, iface, false)
    }))
}

/// Sets an option of endpoint `id`: EP_UDP_BROADCAST, EP_UDP_MULTICAST_LOOP,
/// EP_UDP_MULTICAST_TTL, EP_UDP_MULTICAST_IF or EP_UDP_MAX_DATAGRAM (see each). Returns 0, -EINVAL
/// (an unknown option or a value out of range), -ENODEV (EP_UDP_MULTICAST_IF: no such
/// interface), EP_ESTALE, EP_EKIND (not a UDP endpoint), EP_ECLOSING (after your own
/// ep_close()/ep_abort()), or a loop error (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC).
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_udp_set_option(
    lp: *mut ep_loop,
    id: ep_id,
    option: c_int,
    value: c_int,
) -> c_int {
    with_loop!(lp, |boxed| {
        let engine = &boxed.engine;
        let result = match option {
            EP_UDP_MAX_DATAGRAM => match usize::try_from(value) {
                Ok(size) => engine.set_max_datagram(id, size),
                Err(_) => Err(Error::Os(libc::EINVAL)),
            },
            EP_UDP_BROADCAST | EP_UDP_MULTICAST_LOOP if !(0..=1).contains(&value) => {
                Err(Error::Os(libc::EINVAL))
            }
            EP_UDP_MULTICAST_TTL if !(0..=255).contains(&value) => Err(Error::Os(libc::EINVAL)),
            EP_UDP_MULTICAST_IF if value < 0 => Err(Error::Os(libc::EINVAL)),
            EP_UDP_MULTICAST_IF => engine.set_udp_option(id, UdpOption::MulticastInterface, value),
            EP_UDP_BROADCAST => engine.set_udp_option(id, UdpOption::Broadcast, value),
            EP_UDP_MULTICAST_LOOP => engine.set_udp_option(id, UdpOption::MulticastLoop, value),
            EP_UDP_MULTICAST_TTL => engine.set_udp_option(id, UdpOption::MulticastTtl, value),
            _ => Err(Error::Os(libc::EINVAL)),
        };
        status(result)
    })
}
