"""Process-wide settings: children that cannot outlive their parent, signals, malloc."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import threading
from types import FrameType

PR_SET_PDEATHSIG = 1
M_ARENA_MAX = -8  # glibc's mallopt parameter behind MALLOC_ARENA_MAX


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


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for this process, as ``MALLOC_ARENA_MAX`` would.

    glibc gives threads that allocate at once arenas of their own (up to 8 per core)
    and keeps what is freed in each: a worker whose thread pools decode images grows
    its RSS in steps of tens of MB that it never gives back (``make bench-requests``
    measured 541 MB at the end of a run with the default, 469 with 2). Call it before
    the thread pools start. False where there is no glibc.
    """
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False
