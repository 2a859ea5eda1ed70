"""Running an eploop ``Loop`` inside a running asyncio program, in the same thread.

The C loop can be hosted by another event loop (``ep_loop_fd``/``ep_next_timeout``, see the
README's "Inside another event loop"): its epoll descriptor is readable when it has events, and
``ep_next_timeout`` says when a timer or deadline is due, or that work is pending without an
event (0: a close to deliver, data held by ``resume_reading``). ``_Driver`` watches the
descriptor with ``add_reader``, keeps one ``call_later`` for the next deadline, and runs one step
(``ep_poll`` with a zero timeout and its handlers) whenever either fires — so handlers and
eploop timers run as ordinary callbacks of the asyncio loop, between its other callbacks.

Calls made outside a step (from a coroutine: ``conn.close()``, ``loop.call_later()``...) may
create work that no descriptor announces; they ``Loop._kick()`` the driver, which then steps at
the asyncio loop's next iteration. Sends need no kick: what they queue is announced by the
descriptor when the socket becomes writable.

Exceptions: a handler's goes to the eploop exception handler as under ``run()``. What that
raises (``eploop.reraise``) is raised by ``serve()``; with a bare ``attach()`` it goes to the
asyncio loop's exception handler and the loop keeps serving. ``KeyboardInterrupt`` and
``SystemExit`` propagate out of the asyncio loop as asyncio's own callbacks' do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from ._errors import RunResult, _error
from ._events import _MORE
from ._ffi import lib

if TYPE_CHECKING:
    from ._loop import Loop

T = TypeVar("T")


class _Driver:
    """One Loop attached to one asyncio loop."""

    def __init__(self, loop: Loop, aio: asyncio.AbstractEventLoop) -> None:
        fd = lib.ep_loop_fd(loop._open_lp())
        if fd < 0:
            raise _error(fd, "ep_loop_fd")
        self.loop = loop
        self.aio = aio
        self.fd = fd
        self.wakeup: asyncio.Handle | None = None  # the pending call_soon/call_later
        self.wakeup_at: float | None = None  # its time on the asyncio clock
        self.done: asyncio.Future[RunResult] | None = None  # serve()'s
        aio.add_reader(fd, self.step)
        self.soon()  # what is pending already (a close decided before attach)

    def soon(self) -> None:
        """Step at the asyncio loop's next iteration (once, however often asked)."""
        now = self.aio.time()
        if self.wakeup is not None:
            if self.wakeup_at is not None and self.wakeup_at <= now:
                return
            self.wakeup.cancel()
        self.wakeup, self.wakeup_at = self.aio.call_soon(self.step), now

    def schedule(self) -> None:
        """Wake for the loop's next deadline (ep_next_timeout; ask again after every step)."""
        lp = self.loop._lp
        timeout = lib.ep_next_timeout(lp) if lp is not None else -1
        if timeout == 0:
            self.soon()
            return
        if self.wakeup is not None:
            self.wakeup.cancel()
            self.wakeup = self.wakeup_at = None
        if timeout > 0:
            self.wakeup = self.aio.call_later(timeout / 1000.0, self.step)
            self.wakeup_at = self.aio.time() + timeout / 1000.0

    def step(self) -> None:
        loop = self.loop
        self.wakeup = self.wakeup_at = None
        if loop._lp is None or loop._running:
            return  # closed (close() detaches), or inside run_once() called by a coroutine
        loop._start_running()
        try:
            state = loop._step(0)
        except Exception as exc:  # the eploop exception handler raised: serve() raises it
            loop._stopped_running()
            self.failed(exc)
            state = _MORE
        except BaseException:  # KeyboardInterrupt, SystemExit: the asyncio loop stops
            loop._stopped_running()
            self.schedule()
            raise
        loop._stopped_running()
        if state != _MORE and self.done is not None and not self.done.done():
            self.done.set_result(RunResult(state))
        if loop._driver is self:  # (a handler may have detached or closed the loop)
            self.schedule()

    def failed(self, exc: Exception) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)
            return
        self.aio.call_exception_handler(
            {"message": "eploop: the exception handler raised", "exception": exc, "loop": self.aio}
        )

    def close(self) -> None:
        self.aio.remove_reader(self.fd)
        if self.wakeup is not None:
            self.wakeup.cancel()
            self.wakeup = self.wakeup_at = None
        if self.done is not None and not self.done.done():
            self.done.cancel()


def attach(loop: Loop, aio: asyncio.AbstractEventLoop | None = None) -> None:
    if loop._driver is not None:
        raise RuntimeError(f"{loop!r} is already attached to {loop._driver.aio!r}")
    if loop._running:
        raise RuntimeError("attach() called while the loop is running")
    loop._driver = _Driver(loop, aio if aio is not None else asyncio.get_running_loop())


def detach(loop: Loop) -> bool:
    driver, loop._driver = loop._driver, None
    if driver is None:
        return False
    driver.close()
    return True


async def serve(loop: Loop) -> RunResult:
    aio = asyncio.get_running_loop()
    attached_here = loop._driver is None
    if attached_here:
        attach(loop, aio)
    driver = loop._driver
    assert driver is not None
    if driver.aio is not aio:
        raise RuntimeError(f"{loop!r} is attached to another asyncio loop")
    if driver.done is not None and not driver.done.done():
        raise RuntimeError("serve() is already waiting on this loop")
    driver.done = aio.create_future()
    driver.soon()  # (EMPTY already? the first step says so)
    try:
        return await driver.done
    finally:
        driver.done = None
        if attached_here:
            detach(loop)


def create_task(loop: Loop, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    driver = loop._driver
    if driver is None:
        coro.close()
        raise RuntimeError("create_task() needs the loop attached to asyncio (attach/serve)")
    task = driver.aio.create_task(coro)

    def finished(task: asyncio.Task[T]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and loop._lp is not None:
            loop.call_exception_handler(
                {
                    "message": f"eploop: exception in task {task!r}",
                    "exception": exc,
                    "connection": None,
                    "handler": coro,
                    "task": task,
                }
            )
            error, loop._error = loop._error, None  # what the exception handler raised
            if error is not None:
                if isinstance(error, Exception):
                    driver.failed(error)
                else:
                    raise error

    task.add_done_callback(finished)
    return task


class _AsyncioHosting:
    """``Loop``'s asyncio API (a mixin, as ``_ExceptionHandling`` is)."""

    _driver: _Driver | None
    _running: bool

    def attach(self, aio: asyncio.AbstractEventLoop | None = None) -> None:
        """Drive this loop from the asyncio loop ``aio`` (default: the running one), in its
        thread, instead of ``run()``: handlers, timers and ``on_close`` run as asyncio callbacks
        until ``detach()`` or ``close()``. Connections, timers and handlers stay as they are.
        RuntimeError if already attached or running."""
        attach(self._self(), aio)

    def detach(self) -> bool:
        """Stop driving the loop from asyncio (nothing is closed: ``run()`` or ``attach()``
        can take over). False if it was not attached."""
        return detach(self._self())

    @property
    def attached(self) -> bool:
        """Whether an asyncio loop drives this loop (``attach()``, ``serve()``)."""
        return self._driver is not None

    async def serve(self) -> RunResult:
        """``run()`` for asyncio: ``await loop.serve()`` drives the loop from the running asyncio
        loop until ``stop()`` (returns ``RunResult.STOPPED``) or until it is out of work
        (``RunResult.EMPTY``), and raises what ``run()`` would raise. Cancelling the awaiting
        task (Ctrl-C under ``asyncio.run``) detaches the loop and leaves it open: close it."""
        return await serve(self._self())

    def create_task(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Schedule ``coro`` on the attached asyncio loop (from a handler: reply later, from a
        coroutine, with ``conn.send()``). Its exception, if it raises, goes to this loop's
        exception handler like a handler's; cancellation is quiet."""
        return create_task(self._self(), coro)

    def _kick(self) -> None:
        """A call outside a step may have made work no descriptor announces: step soon."""
        driver = self._driver
        if driver is not None and not self._running:
            driver.soon()

    def _self(self) -> Loop:
        return self  # type: ignore[return-value]  # (the mixin is only Loop's)
