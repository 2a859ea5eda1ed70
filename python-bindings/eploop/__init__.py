"""eploop: Linux epoll as a callback event loop, where every way a peer goes away becomes
exactly one ``on_close(reason, errno)``.

    import eploop

    class Echo(eploop.Handler):
        def on_data(self, data):
            self.conn.send(data)

    with eploop.Loop() as loop:
        loop.listen(("127.0.0.1", 8989), Echo)
        loop.run()

See ``Loop``, ``Handler``, ``Connection``, ``DatagramEndpoint`` and ``CloseReason``.
"""

from ._errors import (
    BlockingIOEploopError,
    BrokenPipeEploopError,
    ConnectionAbortedEploopError,
    ConnectionRefusedEploopError,
    ConnectionResetEploopError,
    FileExistsEploopError,
    FileNotFoundEploopError,
    InterruptedEploopError,
    PermissionEploopError,
    TimeoutEploopError,
)
from ._datagram import DatagramHandler, TruncatedDatagram
from ._ffi import LibraryLoadError, library_path, library_version
from ._handler import ConnectionHandler, HandlerFactory
from ._loop import (
    CloseReason,
    ClosingError,
    Connection,
    DatagramEndpoint,
    EploopError,
    ForkedLoopError,
    Handler,
    Listener,
    Loop,
    RunResult,
    StaleError,
    Stats,
    Timer,
    WrongThreadError,
    reraise,
)
from ._version import __version__

__all__ = [
    "BlockingIOEploopError",
    "BrokenPipeEploopError",
    "CloseReason",
    "ClosingError",
    "Connection",
    "ConnectionAbortedEploopError",
    "ConnectionHandler",
    "ConnectionRefusedEploopError",
    "ConnectionResetEploopError",
    "DatagramEndpoint",
    "DatagramHandler",
    "EploopError",
    "FileExistsEploopError",
    "FileNotFoundEploopError",
    "ForkedLoopError",
    "Handler",
    "HandlerFactory",
    "InterruptedEploopError",
    "LibraryLoadError",
    "Listener",
    "Loop",
    "PermissionEploopError",
    "RunResult",
    "StaleError",
    "Stats",
    "TimeoutEploopError",
    "Timer",
    "TruncatedDatagram",
    "WrongThreadError",
    "__version__",
    "library_path",
    "library_version",
    "reraise",
]
