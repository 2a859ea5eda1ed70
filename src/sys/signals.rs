//! Signals delivered to a loop: the calling thread's signal mask and a signalfd.

use std::os::raw::c_int;

use super::errno::{last_errno as errno, Errno, SysResult, EAGAIN};
use super::fd::Fd;

/// Whether `signo` can be watched through a signalfd: a signal number of this system, not one the
/// kernel refuses to block (SIGKILL, SIGSTOP), not a fault that only its own thread can take
/// (SIGSEGV, SIGBUS, SIGILL, SIGFPE), and not one glibc reserves for itself (32, 33).
pub fn signal_watchable(signo: c_int) -> bool {
    let classic = (1..32).contains(&signo)
        && ![
            libc::SIGKILL,
            libc::SIGSTOP,
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
        ]
        .contains(&signo);
    classic || (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&signo)
}

fn set_of(signos: &[c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for &signo in signos {
        // SAFETY: as above; an invalid number only makes sigaddset fail, which changes nothing.
        unsafe { libc::sigaddset(&mut set, signo) };
    }
    set
}

fn change_mask(how: c_int, signo: c_int) -> SysResult<libc::sigset_t> {
    let set = set_of(&[signo]);
    // SAFETY: sigset_t is plain data; pthread_sigmask fills it.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both sets are valid; pthread_sigmask changes the calling thread's mask only and
    // returns the error number itself.
    match unsafe { libc::pthread_sigmask(how, &set, &mut old) } {
        0 => Ok(old),
        err => Err(err),
    }
}

/// Blocks `signo` in the calling thread; returns whether it was blocked already.
pub fn block_signal(signo: c_int) -> SysResult<bool> {
    let old = change_mask(libc::SIG_BLOCK, signo)?;
    // SAFETY: `old` was filled by pthread_sigmask.
    Ok(unsafe { libc::sigismember(&old, signo) } == 1)
}

/// Unblocks `signo` in the calling thread.
pub fn unblock_signal(signo: c_int) -> SysResult<()> {
    change_mask(libc::SIG_UNBLOCK, signo).map(|_| ())
}

/// Takes away every instance of `signo` pending for the calling thread or the process, so that
/// unblocking it does not hand a signal that arrived while it was watched to the old disposition.
pub fn discard_pending(signo: c_int) {
    let set = set_of(&[signo]);
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    loop {
        // SAFETY: valid set and timeout; a NULL siginfo is allowed. With a zero timeout this
        // never blocks: it returns a pending signal or fails with EAGAIN.
        let taken = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) };
        if taken == -1 && errno() != libc::EINTR {
            return;
        }
    }
}

/// Creates (`fd` None) or updates a non-blocking, close-on-exec signalfd watching `signos`.
pub fn signalfd_watch(fd: Option<Fd>, signos: &[c_int]) -> SysResult<Fd> {
    let set = set_of(signos);
    let flags = libc::SFD_NONBLOCK | libc::SFD_CLOEXEC;
    // SAFETY: `set` is an initialised sigset_t that outlives the call; -1 asks for a new fd.
    syscall!(unsafe { libc::signalfd(fd.unwrap_or(-1), &set, flags) })
}

/// Reads what a signalfd holds: the signal numbers, one per delivery, in order.
pub fn signalfd_read(fd: Fd) -> Result<Vec<c_int>, Errno> {
    const INFO: usize = std::mem::size_of::<libc::signalfd_siginfo>();
    let mut infos = [0u8; 16 * INFO];
    let mut signos = Vec::new();
    loop {
        let (ptr, len) = (infos.as_mut_ptr().cast(), infos.len());
        // SAFETY: `ptr` and `len` describe `infos`, writable for the duration of the call.
        match syscall!(unsafe { libc::read(fd, ptr, len) }) {
            Ok(n) => {
                for info in infos[..n as usize].chunks_exact(INFO) {
                    // ssi_signo is the first field of signalfd_siginfo: a native-endian u32.
                    let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
                    signos.push(signo as c_int);
                }
                if (n as usize) < infos.len() {
                    return Ok(signos);
                }
            }
            Err(EAGAIN) => return Ok(signos),
            Err(libc::EINTR) => continue,
            Err(e) if signos.is_empty() => return Err(e),
            Err(_) => return Ok(signos),
        }
    }
}
