//! Socket addresses: eploop's [`Addr`] and its conversion to and from the kernel's layout.

use std::mem::{align_of, size_of};
use std::net::SocketAddr;
use std::os::raw::c_int;

use super::errno::{Errno, SysResult, EINVAL};

/// A socket address of any family eploop speaks: IPv4, IPv6, or a Unix path.
pub enum Addr {
    Ip(SocketAddr),
    /// A filesystem path, or an abstract name when it starts with '@'.
    Unix(Vec<u8>),
}

/// A socket address in the kernel's layout, large enough for any family: what a datagram's
/// sender is reported as and sent to, without conversion on the way.
#[derive(Clone)]
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    pub(super) fn of(addr: &Addr) -> SysResult<RawAddr> {
        match addr {
            Addr::Ip(SocketAddr::V4(a)) => Ok(RawAddr::holding(libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            })),
            Addr::Ip(SocketAddr::V6(a)) => Ok(RawAddr::holding(libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            })),
            Addr::Unix(path) => RawAddr::unix(path),
        }
    }

    fn unix(path: &[u8]) -> SysResult<RawAddr> {
        if let Some(errno) = unix_path_error(path) {
            return Err(errno);
        }
        // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
        let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (dst, src) in sun.sun_path.iter_mut().zip(path) {
            *dst = *src as libc::c_char;
        }
        // An abstract name uses a leading NUL instead of '@' and no terminating NUL.
        let abstract_name = path[0] == b'@';
        if abstract_name {
            sun.sun_path[0] = 0;
        }
        let terminator = usize::from(!abstract_name);
        let mut raw = RawAddr::holding(sun);
        raw.len = (size_of::<libc::sa_family_t>() + path.len() + terminator) as libc::socklen_t;
        Ok(raw)
    }

    /// An IPv4 or IPv6 address given in the kernel's layout (a `struct sockaddr` of `bytes.len()`
    /// bytes): EINVAL unless its family is AF_INET/AF_INET6 and its length that family's;
    /// EAFNOSUPPORT for another family.
    pub fn from_bytes(bytes: &[u8]) -> SysResult<RawAddr> {
        let mut raw = RawAddr::empty();
        if bytes.len() < size_of::<libc::sa_family_t>() || bytes.len() > raw.len as usize {
            return Err(EINVAL);
        }
        let family = c_int::from(libc::sa_family_t::from_ne_bytes([bytes[0], bytes[1]]));
        let want = match family {
            libc::AF_INET => size_of::<libc::sockaddr_in>(),
            libc::AF_INET6 => size_of::<libc::sockaddr_in6>(),
            _ => return Err(libc::EAFNOSUPPORT),
        };
        if bytes.len() != want {
            return Err(EINVAL);
        }
        let dst = (&mut raw.storage as *mut libc::sockaddr_storage).cast::<u8>();
        // SAFETY: `bytes` fits in the storage (checked above); the regions do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
        raw.len = bytes.len() as libc::socklen_t;
        Ok(raw)
    }

    /// The address's bytes in the kernel's layout (`len()` of them).
    pub fn as_bytes(&self) -> &[u8] {
        let ptr = (&self.storage as *const libc::sockaddr_storage).cast::<u8>();
        // SAFETY: the storage is `len` <= size_of(sockaddr_storage) initialised bytes, borrowed
        // for as long as `self` is.
        unsafe { std::slice::from_raw_parts(ptr, self.len as usize) }
    }

    /// A zeroed buffer for the kernel to write an address of any family into.
    pub fn empty() -> RawAddr {
        RawAddr {
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            storage: unsafe { std::mem::zeroed() },
            len: size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        }
    }

    /// Stores one concrete sockaddr_* struct, with its size as the length.
    fn holding<T>(sockaddr: T) -> RawAddr {
        const {
            assert!(size_of::<T>() <= size_of::<libc::sockaddr_storage>());
            assert!(align_of::<T>() <= align_of::<libc::sockaddr_storage>());
        }
        let mut raw = RawAddr::empty();
        // SAFETY: the storage is large enough and aligned for a T (checked at compile time).
        unsafe {
            std::ptr::write(
                (&mut raw.storage as *mut libc::sockaddr_storage).cast(),
                sockaddr,
            )
        };
        raw.len = size_of::<T>() as libc::socklen_t;
        raw
    }

    /// The address family, which is also the socket domain to create.
    pub fn family(&self) -> c_int {
        c_int::from(self.storage.ss_family)
    }

    pub fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }

    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> libc::socklen_t {
        self.len
    }

    /// Pointers for the kernel to fill in (getsockname, accept): the buffer and its length.
    pub(super) fn as_mut_parts(&mut self) -> (*mut libc::sockaddr, *mut libc::socklen_t) {
        (
            (&mut self.storage as *mut libc::sockaddr_storage).cast(),
            &mut self.len,
        )
    }

    /// The port of an IPv4 or IPv6 address.
    pub(super) fn port(&self) -> SysResult<u16> {
        let ptr = (&self.storage as *const libc::sockaddr_storage).cast::<u8>();
        match self.family() {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in, which fits in it.
                let sin: libc::sockaddr_in = unsafe { std::ptr::read(ptr.cast()) };
                Ok(u16::from_be(sin.sin_port))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6, which fits in it.
                let sin6: libc::sockaddr_in6 = unsafe { std::ptr::read(ptr.cast()) };
                Ok(u16::from_be(sin6.sin6_port))
            }
            _ => Err(libc::EAFNOSUPPORT),
        }
    }
}

/// Why `path` cannot name a Unix socket, if it cannot: sun_path keeps one byte for the
/// terminating NUL (an abstract name spends it on the leading NUL instead).
fn unix_path_error(path: &[u8]) -> Option<Errno> {
    const SUN_PATH_LEN: usize = size_of::<libc::sockaddr_un>() - size_of::<libc::sa_family_t>();
    if path.is_empty() || path.contains(&0) {
        Some(EINVAL)
    } else if path.len() >= SUN_PATH_LEN {
        Some(libc::ENAMETOOLONG)
    } else {
        None
    }
}

/// Removes the socket file at `path` (left by a listener that did not clean up) so a new
/// listener can bind there. Anything else at the path, an abstract name, or a path no Unix
/// socket could have is left alone.
pub fn unlink_stale_unix_socket(path: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileTypeExt;
    if path.first() == Some(&b'@') || unix_path_error(path).is_some() {
        return;
    }
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn ip_addresses_keep_family_length_and_port() {
        let v4 = RawAddr::of(&Addr::Ip((Ipv4Addr::LOCALHOST, 8080).into())).unwrap();
        assert_eq!(v4.family(), libc::AF_INET);
        assert_eq!(v4.len() as usize, size_of::<libc::sockaddr_in>());
        assert_eq!(v4.port(), Ok(8080));
        let v6 = RawAddr::of(&Addr::Ip((Ipv6Addr::LOCALHOST, 443).into())).unwrap();
        assert_eq!(v6.family(), libc::AF_INET6);
        assert_eq!(v6.len() as usize, size_of::<libc::sockaddr_in6>());
        assert_eq!(v6.port(), Ok(443));
    }

    #[test]
    fn unix_lengths_count_the_nul_of_a_path_but_not_of_an_abstract_name() {
        let family = size_of::<libc::sa_family_t>();
        let path = RawAddr::of(&Addr::Unix(b"/tmp/a.sock".to_vec())).unwrap();
        assert_eq!(path.family(), libc::AF_UNIX);
        assert_eq!(path.len() as usize, family + 11 + 1);
        assert_eq!(path.port(), Err(libc::EAFNOSUPPORT));
        let name = RawAddr::of(&Addr::Unix(b"@name".to_vec())).unwrap();
        assert_eq!(name.len() as usize, family + 5);
    }

    #[test]
    fn kernel_layout_bytes_round_trip_and_are_checked() {
        let v6 = RawAddr::of(&Addr::Ip((Ipv6Addr::LOCALHOST, 53).into())).unwrap();
        let back = RawAddr::from_bytes(v6.as_bytes()).unwrap();
        assert_eq!((back.family(), back.port()), (libc::AF_INET6, Ok(53)));
        assert_eq!(
            RawAddr::from_bytes(&v6.as_bytes()[..20]).err(),
            Some(EINVAL)
        );
        let unix = RawAddr::of(&Addr::Unix(b"/tmp/x".to_vec())).unwrap();
        assert_eq!(
            RawAddr::from_bytes(unix.as_bytes()).err(),
            Some(libc::EAFNOSUPPORT)
        );
        assert_eq!(RawAddr::from_bytes(&[]).err(), Some(EINVAL));
    }

    #[test]
    fn unix_paths_that_cannot_fit_are_refused() {
        let err = |p: &[u8]| RawAddr::of(&Addr::Unix(p.to_vec())).err();
        assert_eq!(err(b""), Some(EINVAL));
        assert_eq!(err(b"a\0b"), Some(EINVAL));
        assert_eq!(err(&[b'a'; 107]), None);
        assert_eq!(err(&[b'a'; 108]), Some(libc::ENAMETOOLONG));
    }
}
