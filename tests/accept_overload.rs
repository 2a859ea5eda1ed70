//! Accept under fd exhaustion (EMFILE) must not spin the loop, and accepting must recover once
//! fds are free again. This test lowers the process's RLIMIT_NOFILE, so it is alone in its
//! binary (tests in one binary share the fd table).

mod common;

use common::*;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::Duration;

/// Fills the fd table below a lowered soft limit; undoes both on drop (also on failure).
struct FdExhaustion {
    old: libc::rlimit,
    fillers: Vec<RawFd>,
    _devnull: std::fs::File,
}

impl FdExhaustion {
    fn new() -> Self {
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
        let highest = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap();
        let low = libc::rlimit {
            rlim_cur: highest + 16,
            rlim_max: old.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let mut fillers = Vec::new();
        loop {
            // SAFETY: dup of an fd we own.
            let fd = unsafe { libc::fcntl(devnull.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
            if fd < 0 {
                let e = std::io::Error::last_os_error();
                assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                break;
            }
            fillers.push(fd);
        }
        FdExhaustion {
            old,
            fillers,
            _devnull: devnull,
        }
    }
}

impl Drop for FdExhaustion {
    fn drop(&mut self) {
        for fd in self.fillers.drain(..) {
            close_fd(fd);
        }
        // SAFETY: setrlimit reads one rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &self.old) };
    }
}

fn tcp_socket() -> RawFd {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    fd
}

fn connect_fd(fd: RawFd, port: u16) {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: valid sockaddr_in and its size.
    let r = unsafe {
        libc::connect(
            fd,
            &addr as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "connect: {}", std::io::Error::last_os_error());
}

#[test]
fn emfile_on_accept_does_not_spin() {
    for (mode, flags) in MODES {
        let h = Harness::new();
        let (listener, port) = h.listen("127.0.0.1", flags);
        // Client sockets made while fds are still available; connect() needs no new fd.
        let socks: Vec<RawFd> = (0..3).map(|_| tcp_socket()).collect();
        {
            let _full = FdExhaustion::new();
            for s in &socks {
                connect_fd(*s, port);
            }
            h.assert_idle(&format!("{mode}: accept failing with EMFILE"));
        }
        // Fds are available again: a new client must be accepted within a few seconds.
        let late = connect(port);
        let late_port = late.local_addr().unwrap().port();
        h.run_until_for(
            &format!("{mode}: accept after EMFILE cleared"),
            Duration::from_secs(5),
            |r| r.conn_for_port(late_port).is_some(),
        );
        // The shed (or delayed) clients are not left hanging: each was accepted or closed.
        for s in socks {
            // SAFETY: we own s.
            let mut stream = unsafe { TcpStream::from_raw_fd(s) };
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let accepted = h.rec.conn_for_port(stream.local_addr().unwrap().port());
            if let Some(id) = accepted {
                assert!(send(h.lp, id, b"ok") >= 0);
            }
            let mut buf = [0u8; 2];
            h.run_for(Duration::from_millis(20));
            let r = std::io::Read::read(&mut stream, &mut buf);
            match (accepted, r) {
                (Some(_), Ok(2)) => assert_eq!(&buf, b"ok"),
                (None, Ok(0)) => {}
                (None, Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                (a, r) => panic!("{mode}: shed client neither served nor closed: {a:?} {r:?}"),
            }
        }
        assert!(
            !h.rec.is_closed(listener),
            "{mode}: EMFILE closed the listener"
        );
        drop(late);
        h.finish();
    }
}
