"""Child processes that cannot outlive the Kestrel process that started them."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import threading
from types import FrameType

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for Popen: the child gets SIGTERM when its parent dies (Linux).

    A supervisor killed with SIGKILL cannot stop its children itself; the kernel
    does it for them, so no broker or worker is ever left running on its own.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_on_signals() -> threading.Event:
    """Install SIGINT and SIGTERM handlers that set (and return) one Event.

    A command-line loop checks or waits on it and shuts down in order, instead of
    dying mid-write on KeyboardInterrupt.
    """
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop
