//! The batch interface for language bindings: one call per loop step applies a batch of commands
//! and returns the step's events as an array, instead of one C↔host crossing per callback and per
//! send. Registrations made with EP_QUEUE record their events here; the engine is the same.

use std::ffi::{c_int, c_void};

use super::boundary::LoopBox;
use super::errors::{code, EP_EBUSY, EP_ENULL};
use super::handler::queued_of;
use super::lifecycle::run_code;
use super::step_data::StepData;
use super::{ep_id, ep_loop};
use crate::engine::{Error, Reader};
use crate::sys::SysResult;

/// An event recorded for an EP_QUEUE registration; ep_poll() hands them out in callback order.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ep_event {
    /// EP_EVENT_ACCEPT, EP_EVENT_DATA, EP_EVENT_WRITABLE, EP_EVENT_CLOSE, EP_EVENT_DATAGRAM or
    /// EP_EVENT_DATAGRAM_ERROR.
    pub kind: u32,
    /// EP_EVENT_CLOSE: the ep_close_reason; EP_EVENT_DATAGRAM: the flags (EP_DGRAM_TRUNCATED);
    /// otherwise 0.
    pub reason: u32,
    /// EP_EVENT_CLOSE and EP_EVENT_DATAGRAM_ERROR: the errno; EP_EVENT_ACCEPT: the
    /// connection's fd (what ep_fd() returns, and it never changes); otherwise 0.
    pub err: c_int,
    /// The bytes queued for output on the connection when the event was recorded (0 for other
    /// registrations; saturates at 4 GiB - 1, above the 1 GiB queue cap). With it a binding that
    /// batches its sends knows, without a call, whether the queue is above the high-water mark.
    pub queued: u32,
    /// The connection (or listener, for its own close).
    pub id: ep_id,
    /// EP_EVENT_ACCEPT: the listener, or 0 for an outbound connection (ep_connect);
    /// EP_EVENT_DATAGRAM: the length of the sender's address (a struct sockaddr), stored in
    /// ep_poll_result.data right after the datagram, at `offset + len`; otherwise 0.
    pub listener: ep_id,
    /// EP_EVENT_DATA, EP_EVENT_DATAGRAM: where the bytes start in ep_poll_result.data.
    pub offset: u64,
    /// EP_EVENT_DATA: how many bytes; 0 is the peer's EOF (EP_HALF_CLOSE only).
    /// EP_EVENT_DATAGRAM: the datagram's length (0 is an empty datagram).
    pub len: u64,
    /// The registration's user pointer at the time of the event.
    pub user: *mut c_void,
}

/// ep_event.kind: on_accept (`listener` says which listener, 0 for ep_connect()).
pub const EP_EVENT_ACCEPT: u32 = 1;
/// ep_event.kind: on_data (the bytes are at `offset`, `len` in ep_poll_result.data).
pub const EP_EVENT_DATA: u32 = 2;
/// ep_event.kind: on_writable.
pub const EP_EVENT_WRITABLE: u32 = 3;
/// ep_event.kind: on_close (`reason`, `err`); the last event of its id.
pub const EP_EVENT_CLOSE: u32 = 4;
/// ep_event.kind: on_datagram (the datagram at `offset`, `len`, then the sender's address of
/// `listener` bytes; `reason` holds the flags).
pub const EP_EVENT_DATAGRAM: u32 = 5;
/// ep_event.kind: on_error of a UDP endpoint (`err`).
pub const EP_EVENT_DATAGRAM_ERROR: u32 = 6;

/// One operation for ep_poll() to apply before it waits.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ep_command {
    /// EP_CMD_SEND, EP_CMD_CLOSE, EP_CMD_ABORT, EP_CMD_SHUTDOWN, EP_CMD_PAUSE or EP_CMD_RESUME.
    pub op: u32,
    /// EP_CMD_SEND: 0, or EP_SEND_PROMISED_WRITABLE. Other commands: must be 0.
    pub flags: u32,
    /// The registration the command acts on.
    pub id: ep_id,
    /// EP_CMD_SEND: where the bytes start in cmdbuf.
    pub offset: u64,
    /// EP_CMD_SEND: how many bytes (cmdbuf[offset .. offset + len]).
    pub len: u64,
}

/// ep_command.op: ep_send() of cmdbuf[offset .. offset + len]; its result is ep_send()'s.
pub const EP_CMD_SEND: u32 = 1;
/// ep_command.flags for EP_CMD_SEND: the binding already told its user to stop producing (it
/// counted the queue above the high-water mark without knowing what the kernel would take), so
/// it promised an on_writable: if this send leaves the queue at or below the high-water mark
/// (result 0), an EP_EVENT_WRITABLE for the id is recorded at once, in this ep_poll()'s events.
pub const EP_SEND_PROMISED_WRITABLE: u32 = 1;
/// ep_command.op: ep_close(); its result is ep_close()'s.
pub const EP_CMD_CLOSE: u32 = 2;
/// ep_command.op: ep_abort(); its result is ep_abort()'s.
pub const EP_CMD_ABORT: u32 = 3;
/// ep_command.op: ep_shutdown(); its result is ep_shutdown()'s.
pub const EP_CMD_SHUTDOWN: u32 = 4;
/// ep_command.op: ep_pause_reading(); its result is ep_pause_reading()'s.
pub const EP_CMD_PAUSE: u32 = 5;
/// ep_command.op: ep_resume_reading(); its result is ep_resume_reading()'s.
pub const EP_CMD_RESUME: u32 = 6;

/// What ep_poll() returns. The arrays belong to the loop and stay valid until the next ep_poll()
/// or ep_loop_free() on that loop. They are reused from step to step and move only when they
/// grow: while `count` and `data_len` stay at most the largest values handed out since a
/// pointer was last read, `events` and `data` are the same as then (a binding may keep views
/// over them and read only the sizes).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ep_poll_result {
    /// `count` events, in the order callbacks would have run.
    pub events: *const ep_event,
    /// The number of events.
    pub count: usize,
    /// The bytes of every EP_EVENT_DATA and EP_EVENT_DATAGRAM of this step, one after the other.
    pub data: *const u8,
    /// The number of bytes at `data`.
    pub data_len: usize,
    /// EP_RUN_MORE, EP_RUN_EMPTY or EP_RUN_STOPPED, as ep_run_once() would return.
    pub state: c_int,
}

impl Default for ep_poll_result {
    /// No events, no data, state EP_RUN_EMPTY: what a caller passes for ep_poll() to fill.
    fn default() -> Self {
        ep_poll_result {
            events: std::ptr::null(),
            count: 0,
            data: std::ptr::null(),
            data_len: 0,
            state: 0,
        }
    }
}

/// The events of EP_QUEUE registrations not handed out yet, and those ep_poll() last handed out
/// (kept valid until the next step).
#[derive(Default)]
pub(super) struct EventQueue {
    events: Vec<ep_event>,
    data: StepData,
    /// The events held were handed out by ep_poll(): the next step starts a new batch.
    handed_out: bool,
}

impl LoopBox {
    /// Before any step: forget the events ep_poll() handed out last time, keep those recorded
    /// since (by ep_run_once() or ep_run()), so that no event — above all no close — is lost.
    pub(super) fn begin_step(&self) {
        let mut queue = self.queue.borrow_mut();
        if queue.handed_out {
            queue.events.clear();
            queue.data.len = 0;
            queue.handed_out = false;
        }
    }
}

impl EventQueue {
    pub(super) fn push(&mut self, kind: u32, id: ep_id, user: *mut c_void) -> &mut ep_event {
        self.events.push(ep_event {
            kind,
            reason: 0,
            err: 0,
            queued: 0,
            id,
            listener: 0,
            offset: 0,
            len: 0,
            user,
        });
        self.events.last_mut().expect("just pushed")
    }

    pub(super) fn push_data(&mut self, id: ep_id, data: &[u8], user: *mut c_void) -> &mut ep_event {
        let offset = self.data.append(&[data]);
        let event = self.push(EP_EVENT_DATA, id, user);
        event.offset = offset;
        event.len = data.len() as u64;
        event
    }

    /// A stream's read straight into the step's data (see Handler::read_in_place): `read` gets up
    /// to `size` bytes of room; what it returns is recorded as an EP_EVENT_DATA, whose `queued` is
    /// `queued()`. None, without reading, when less room than that is left without moving the data.
    pub(super) fn read_data(
        &mut self,
        id: ep_id,
        user: *mut c_void,
        size: usize,
        read: &mut Reader<'_>,
        queued: impl FnOnce() -> u32,
    ) -> Option<(SysResult<usize>, usize)> {
        let offset = self.data.len;
        let room = self.data.room(size)?;
        let lent = room.len();
        let result = read(room);
        if let Ok(n @ 1..) = result {
            self.data.len += n;
            let event = self.push(EP_EVENT_DATA, id, user);
            event.offset = offset as u64;
            event.len = n as u64;
            event.queued = queued();
        }
        Some((result, lent))
    }

    pub(super) fn push_datagram(
        &mut self,
        id: ep_id,
        data: &[u8],
        from: &[u8],
        flags: u32,
        user: *mut c_void,
    ) {
        let offset = self.data.append(&[data, from]);
        let event = self.push(EP_EVENT_DATAGRAM, id, user);
        event.offset = offset;
        event.len = data.len() as u64;
        event.listener = from.len() as u64;
        event.reason = flags;
    }
}

fn apply(boxed: &LoopBox, command: &ep_command, cmdbuf: &[u8]) -> c_int {
    let engine = &boxed.engine;
    let id = command.id;
    if command.flags & !EP_SEND_PROMISED_WRITABLE != 0
        || (command.flags != 0 && command.op != EP_CMD_SEND)
    {
        return -libc::EINVAL;
    }
    let result = match command.op {
        EP_CMD_SEND => {
            let range = usize::try_from(command.offset)
                .ok()
                .zip(usize::try_from(command.len).ok())
                .and_then(|(offset, len)| Some(offset..offset.checked_add(len)?))
                .filter(|range| range.end <= cmdbuf.len());
            let Some(range) = range else {
                return -libc::EINVAL;
            };
            return match engine.send(id, &cmdbuf[range]) {
                Ok(false) if command.flags & EP_SEND_PROMISED_WRITABLE != 0 => {
                    // The user was told to stop producing: keep the promise of an on_writable.
                    if let Ok(user) = engine.with_handler(id, |h| h.user) {
                        let queued = queued_of(engine, id);
                        boxed
                            .queue
                            .borrow_mut()
                            .push(EP_EVENT_WRITABLE, id, user)
                            .queued = queued;
                    }
                    0
                }
                Ok(above_high) => c_int::from(above_high),
                Err(e) => code(e),
            };
        }
        EP_CMD_CLOSE => engine.close(id),
        EP_CMD_ABORT => engine.abort(id),
        EP_CMD_SHUTDOWN => engine.shutdown(id),
        EP_CMD_PAUSE => engine.pause_reading(id, true),
        EP_CMD_RESUME => engine.pause_reading(id, false),
        _ => Err(Error::Os(libc::EINVAL)),
    };
    match result {
        Ok(()) => 0,
        Err(e) => code(e),
    }
}

/// The commands of one ep_poll() step.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ep_commands {
    /// `count` commands, applied in order (NULL when `count` is 0).
    pub cmds: *const ep_command,
    /// The number of commands.
    pub count: usize,
    /// The bytes EP_CMD_SEND commands take their payload from (copied; NULL when `buf_len` is 0).
    pub buf: *const u8,
    /// The number of bytes at `buf`.
    pub buf_len: usize,
    /// NULL, or room for `count` ints: each command's return code.
    pub results: *mut c_int,
}

/// One loop step for bindings: applies the `commands` in order (NULL: none; EP_CMD_SEND takes its
/// bytes from `commands->buf`, which is copied), writes each command's return code to
/// `commands->results[i]` (when not NULL), then waits at most `timeout_ms` and dispatches, exactly
/// like ep_run_once(). The events of EP_QUEUE registrations recorded during the step — and any
/// recorded earlier by ep_run_once() or ep_run() and not handed out yet, or by the commands
/// themselves (a promised writable, a close): the wait is then skipped — are returned in `*out`, in
/// the order callbacks would have run; the previous call's arrays become invalid. Because an
/// EP_QUEUE registration only reacts to its events in the next call, a peer EOF read in the same
/// step as data is processed one step later: the commands answering that data (the reply to a last
/// request) are applied before EOF ends the connection. A step reads about 512 KiB at most from
/// level-triggered EP_QUEUE connections (the read that reaches it is the step's last; the rest
/// comes in the next steps), so that the step's bytes are still in the CPU's cache when the
/// binding copies them out; edge-triggered ones are read as callback registrations are. Four
/// arguments, so that a binding calling it through a generic FFI (ctypes converts every argument
/// on every call) pays little per step.
/// Returns 0, -EINTR (a signal interrupted the wait; the commands were applied and `*out` holds what
/// was recorded), EP_EBUSY (from inside a callback: nothing applied), EP_ENULL (NULL out, or NULL
/// cmds/buf with a non-zero count), -errno of epoll_wait(), or a loop error (EP_ENULL,
/// EP_ETHREAD, EP_EFORK, EP_EPANIC). Callback registrations keep their callbacks.
///
/// # Safety
/// `lp` as for ep_loop_free(); `commands` NULL or readable, its `cmds` readable for `count`
/// commands (or NULL with 0), its `buf` readable for `buf_len` bytes (or NULL with 0), its
/// `results` NULL or writable for `count` ints; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn ep_poll(
    lp: *mut ep_loop,
    timeout_ms: c_int,
    commands: *const ep_commands,
    out: *mut ep_poll_result,
) -> c_int {
    let none = ep_commands {
        cmds: std::ptr::null(),
        count: 0,
        buf: std::ptr::null(),
        buf_len: 0,
        results: std::ptr::null_mut(),
    };
    // SAFETY: `commands` is NULL or readable (contract).
    let ep_commands {
        cmds,
        count: ncmds,
        buf: cmdbuf,
        buf_len: cmdbuf_len,
        results,
    } = unsafe { commands.as_ref() }.copied().unwrap_or(none);
    if out.is_null() || (cmds.is_null() && ncmds > 0) || (cmdbuf.is_null() && cmdbuf_len > 0) {
        return EP_ENULL;
    }
    let commands: &[ep_command] = if ncmds == 0 {
        &[]
    } else {
        // SAFETY: `cmds` is readable for `ncmds` commands (contract).
        unsafe { std::slice::from_raw_parts(cmds, ncmds) }
    };
    let bytes: &[u8] = if cmdbuf_len == 0 {
        &[]
    } else {
        // SAFETY: `cmdbuf` is readable for `cmdbuf_len` bytes (contract).
        unsafe { std::slice::from_raw_parts(cmdbuf, cmdbuf_len) }
    };
    with_loop!(lp, |boxed| {
        if boxed.engine.in_callback() {
            return EP_EBUSY;
        }
        boxed.begin_step();
        for (i, command) in commands.iter().enumerate() {
            let result = apply(boxed, command, bytes);
            if !results.is_null() {
                // SAFETY: `results` is writable for `ncmds` ints (contract), i < ncmds.
                unsafe { results.add(i).write(result) };
            }
        }
        // Events already recorded (earlier, or by the commands: a promised writable, a close)
        // are handed out now, without waiting for the kernel.
        let waiting = boxed.queue.borrow().events.is_empty();
        let timeout = if waiting { timeout_ms.max(-1) } else { 0 };
        let state = run_code(boxed.engine.run_once(timeout));
        let mut queue = boxed.queue.borrow_mut();
        queue.handed_out = true;
        let result = ep_poll_result {
            events: queue.events.as_ptr(),
            count: queue.events.len(),
            data: queue.data.storage.as_ptr(),
            data_len: queue.data.len,
            state: state.max(0),
        };
        // SAFETY: `out` is writable (contract).
        unsafe { out.write(result) };
        state.min(0)
    })
}

/// ep_poll()'s arguments and result in one block the binding keeps from step to step, for
/// ep_poll_with().
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ep_poll_args {
    /// The loop, as for ep_poll().
    pub lp: *mut ep_loop,
    /// As for ep_poll().
    pub timeout_ms: c_int,
    /// As for ep_poll() (NULL: none).
    pub commands: *const ep_commands,
    /// Written as ep_poll() writes `*out`.
    pub result: ep_poll_result,
}

/// ep_poll(args->lp, args->timeout_ms, args->commands, &args->result): the same step with a single
/// argument, for a binding whose FFI converts every argument on every call (Python's ctypes: about
/// 500 instructions each); it sets the fields that change (the timeout, rarely) and passes the
/// same pointer each step. Returns what ep_poll() returns, or EP_ENULL for a NULL `args`.
///
/// # Safety
/// `args` NULL or readable and writable, its fields as ep_poll()'s arguments.
#[no_mangle]
pub unsafe extern "C" fn ep_poll_with(args: *mut ep_poll_args) -> c_int {
    // SAFETY: `args` is NULL or readable and writable (contract).
    match unsafe { args.as_mut() } {
        // SAFETY: the fields are ep_poll()'s arguments (contract); `result` is writable.
        Some(a) => unsafe { ep_poll(a.lp, a.timeout_ms, a.commands, &mut a.result) },
        None => EP_ENULL,
    }
}
