"""An eploop Loop inside a running asyncio program, in one thread (issue 14, asyncio interop):
``attach()``/``serve()`` drive it from asyncio's own loop, timers included; handlers schedule
coroutines with ``create_task`` and send their results back; cancellation and Ctrl-C leave
cleanly. Every asyncio run is bounded by ``asyncio.wait_for``."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
from bindings_support import CHILD_ENV, TIMEOUT

import eploop
from eploop import CloseReason, RunResult


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


class Echo(eploop.Handler):
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def on_data(self, data: bytes) -> None:
        self.conn.send(data)

    def on_close(self, reason: CloseReason, errno: int) -> None:
        self.log.append(("close", reason))


async def round_trips(port: int, count: int) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = []
    for i in range(count):
        message = f"ping {i}\n".encode()
        writer.write(message)
        replies.append(await reader.readexactly(len(message)))
    writer.close()
    await writer.wait_closed()
    return replies


@pytest.mark.parametrize("edge", [False, True], ids=["level", "edge"])
def test_echo_server_and_asyncio_client_in_one_thread(edge: bool) -> None:
    log: list[Any] = []

    async def main() -> tuple[list[bytes], RunResult, bool]:
        with eploop.Loop() as loop:
            listener = loop.listen(("127.0.0.1", 0), lambda: Echo(log), edge=edge)
            server = asyncio.ensure_future(loop.serve())
            replies = await round_trips(listener.port, 50)
            replies += await round_trips(listener.port, 5)  # a second client, same loop
            while len(log) < 2:
                await asyncio.sleep(0.01)
            loop.stop()
            result = await server
            return replies, result, loop.attached

    replies, result, attached = run(main())
    assert replies == [f"ping {i}\n".encode() for i in range(50)] + [
        f"ping {i}\n".encode() for i in range(5)
    ]
    assert result == RunResult.STOPPED and not attached
    assert log == [("close", CloseReason.PEER_EOF)] * 2


def test_timers_run_and_serve_returns_when_out_of_work() -> None:
    fired: list[tuple[str, float]] = []

    async def main() -> RunResult:
        with eploop.Loop() as loop:
            t0 = time.monotonic()
            loop.call_later(0.05, lambda: fired.append(("once", time.monotonic() - t0)))
            ticks = loop.call_later(0.02, lambda: fired.append(("tick", 0.0)), repeat=0.02)
            loop.call_later(0.15, ticks.cancel)
            return await loop.serve()  # the last timer is done: EMPTY

    assert run(main()) == RunResult.EMPTY
    once = [t for kind, t in fired if kind == "once"]
    assert len(once) == 1 and 0.045 <= once[0] < 2.0, fired
    assert 3 <= len([k for k, _ in fired if k == "tick"]) <= 8, fired


def test_timer_started_from_a_coroutine_wakes_the_attached_loop() -> None:
    """A call_later made outside a step (from asyncio code) is a new deadline no descriptor
    announces: the driver must learn of it."""
    fired = asyncio.Event

    async def main() -> float:
        done = fired()
        with eploop.Loop() as loop:
            loop.attach()
            await asyncio.sleep(0.01)
            t0 = time.monotonic()
            loop.call_later(0.03, done.set)
            await asyncio.wait_for(done.wait(), 5)
            return time.monotonic() - t0

    assert 0.025 <= run(main()) < 5


def test_handler_schedules_a_coroutine_and_sends_its_result_back() -> None:
    closes: list[Any] = []

    class Upper(eploop.Handler):
        def on_data(self, data: bytes) -> None:
            self.conn.loop.create_task(self.reply(data))

        async def reply(self, data: bytes) -> None:
            await asyncio.sleep(0.01)  # e.g. a database lookup
            self.conn.send(data.upper())
            if data.startswith(b"bye"):
                self.conn.close()  # from a coroutine: the close must still be delivered

        def on_close(self, reason: CloseReason, errno: int) -> None:
            closes.append(reason)

    async def main() -> tuple[bytes, bytes, bytes]:
        with eploop.Loop() as loop:
            listener = loop.listen(("127.0.0.1", 0), Upper)
            loop.attach()
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            writer.write(b"hello")
            first = await reader.readexactly(5)
            writer.write(b"bye")
            second = await reader.readexactly(3)
            rest = await reader.read()  # EOF: the server's close() from the coroutine
            while not closes:
                await asyncio.sleep(0.01)
            writer.close()
            return first, second, rest

    assert run(main()) == (b"HELLO", b"BYE", b"")
    assert closes == [CloseReason.LOCAL]


def test_a_failing_task_goes_to_the_exception_handler() -> None:
    contexts: list[dict[str, Any]] = []

    async def broken() -> None:
        await asyncio.sleep(0)
        raise ValueError("task bug")

    async def main() -> None:
        with eploop.Loop() as loop:
            loop.set_exception_handler(lambda _loop, context: contexts.append(context))
            loop.attach()
            task = loop.create_task(broken())
            with pytest.raises(ValueError):
                await task

    run(main())
    assert len(contexts) == 1 and isinstance(contexts[0]["exception"], ValueError)
    assert "task" in contexts[0]


def test_what_the_exception_handler_raises_is_raised_by_serve() -> None:
    class Bug(Exception):
        pass

    class Raising(eploop.Handler):
        def on_data(self, data: bytes) -> None:
            raise Bug("handler bug")

    async def main() -> None:
        with eploop.Loop() as loop:
            loop.set_exception_handler(eploop.reraise)
            listener = loop.listen(("127.0.0.1", 0), Raising)
            _, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            writer.write(b"x")
            with pytest.raises(Bug):
                await loop.serve()
            assert not loop.attached
            writer.close()

    run(main())


def test_cancelling_serve_detaches_and_leaves_the_loop_open() -> None:
    log: list[Any] = []

    async def main() -> tuple[bool, int, list[bytes]]:
        loop = eploop.Loop()
        listener = loop.listen(("127.0.0.1", 0), lambda: Echo(log))
        server = asyncio.ensure_future(loop.serve())
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"one")
        got = [await reader.readexactly(3)]
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server
        attached, still_open = loop.attached, loop.stats().open
        # The loop lives on: serve it again, then close it with the client still there.
        server = asyncio.ensure_future(loop.serve())
        writer.write(b"two")
        got.append(await reader.readexactly(3))
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server
        loop.close()
        writer.close()
        return attached, still_open, got

    attached, still_open, got = run(main())
    assert not attached and still_open == 2 and got == [b"one", b"two"]
    assert log == [("close", CloseReason.LOOP_FREED)]


def test_misuse_is_refused() -> None:
    async def main() -> None:
        with eploop.Loop() as loop:
            loop.attach()
            with pytest.raises(RuntimeError):
                loop.attach()
            with pytest.raises(RuntimeError):
                loop.run()
            assert loop.detach() and not loop.detach()
        with eploop.Loop() as other:
            with pytest.raises(RuntimeError):
                other.create_task(asyncio.sleep(0))

    run(main())


CTRL_C_PROGRAM = textwrap.dedent(
    """
    import asyncio, sys
    import eploop

    class Echo(eploop.Handler):
        def on_data(self, data):
            self.conn.send(data)

        def on_close(self, reason, errno):
            print("close", reason.name, flush=True)

    async def main():
        with eploop.Loop() as loop:
            listener = loop.listen(("127.0.0.1", 0), Echo)
            print("port", listener.port, flush=True)
            try:
                await loop.serve()
            finally:
                print("serve ended, attached:", loop.attached, flush=True)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    """
)


def test_ctrl_c_ends_an_asyncio_program_serving_eploop() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_PROGRAM], stdout=subprocess.PIPE, text=True, env=CHILD_ENV
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
            client.sendall(b"echo?")
            assert client.recv(5) == b"echo?"
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    lines = out.splitlines()
    assert "serve ended, attached: False" in lines, out
    assert "close LOOP_FREED" in lines and lines[-1] == "interrupted", out
