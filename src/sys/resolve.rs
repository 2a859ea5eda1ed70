//! Name resolution (getaddrinfo), for the loop's resolver threads.

use std::ffi::{CStr, CString};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::raw::c_int;

use super::errno::{last_errno as errno, Errno};

/// A failed lookup's EAI_* code (glibc's are negative) becomes the error `EAI_ERRNO_BASE - code`:
/// positive like an errno and far from every errno, so one `err` field carries either.
pub const EAI_ERRNO_BASE: Errno = 4100;
/// The lowest EAI_* code glibc defines (EAI_OVERFLOW is -12; the GNU extensions go to -105).
const EAI_LOWEST: c_int = -105;
/// glibc's EAI_ADDRFAMILY (a GNU extension the libc crate does not name).
const EAI_ADDRFAMILY: c_int = -9;

/// The EAI_* code behind an error made from one, if it is one.
pub fn eai_of(err: Errno) -> Option<c_int> {
    let code = EAI_ERRNO_BASE - err;
    (EAI_LOWEST..0).contains(&code).then_some(code)
}

/// gai_strerror's static text for an EAI_* code.
pub fn eai_description(code: c_int) -> &'static CStr {
    // SAFETY: glibc's gai_strerror takes any int and returns a pointer to a static,
    // NUL-terminated string ("Unknown error" for unknown codes), never NULL.
    unsafe { CStr::from_ptr(libc::gai_strerror(code)) }
}

/// The TCP addresses of `host`, in the order getaddrinfo gives them (RFC 6724: the preferred
/// first). Blocks for as long as the system's resolver takes. An error is an errno, or a
/// failure's EAI_* code mapped through [`EAI_ERRNO_BASE`] (EAI_SYSTEM gives its errno).
pub fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, Errno> {
    let name = CString::new(host).map_err(|_| EAI_ERRNO_BASE - libc::EAI_NONAME)?;
    // SAFETY: addrinfo is plain data; all-zero is a valid (empty) value for hints.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = libc::AF_UNSPEC;
    hints.ai_socktype = libc::SOCK_STREAM;
    let mut list: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: `name` is NUL-terminated, `hints` initialised, `list` a valid out pointer; a
    // NULL service is allowed.
    let code = unsafe { libc::getaddrinfo(name.as_ptr(), std::ptr::null(), &hints, &mut list) };
    if code == libc::EAI_SYSTEM {
        return Err(errno());
    }
    if code == libc::EAI_NODATA || code == EAI_ADDRFAMILY {
        // The name exists but has no address of the kind asked for: no address to connect to.
        return Err(EAI_ERRNO_BASE - libc::EAI_NONAME);
    }
    if code != 0 {
        return Err(EAI_ERRNO_BASE - code);
    }
    let mut addrs = Vec::new();
    let mut node = list;
    while !node.is_null() {
        // SAFETY: `node` is an element of the list getaddrinfo returned, not freed yet.
        let info = unsafe { &*node };
        if let Some(addr) = socket_addr(info, port) {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        node = info.ai_next;
    }
    // SAFETY: `list` came from a successful getaddrinfo and is freed once.
    unsafe { libc::freeaddrinfo(list) };
    if addrs.is_empty() {
        // A name without a TCP address fails like one that does not exist.
        return Err(EAI_ERRNO_BASE - libc::EAI_NONAME);
    }
    Ok(addrs)
}

fn socket_addr(info: &libc::addrinfo, port: u16) -> Option<SocketAddr> {
    if info.ai_addr.is_null() {
        return None;
    }
    match info.ai_family {
        libc::AF_INET => {
            // SAFETY: an AF_INET entry's ai_addr points at a sockaddr_in.
            let sin = unsafe { &*info.ai_addr.cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        libc::AF_INET6 => {
            // SAFETY: an AF_INET6 entry's ai_addr points at a sockaddr_in6.
            let sin6 = unsafe { &*info.ai_addr.cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                port,
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
