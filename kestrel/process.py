"""Child processes that cannot outlive the Kestrel process that started them."""

from __future__ import annotations

import contextlib
import ctypes
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for Popen: the child gets SIGTERM when its parent dies (Linux).

    A supervisor killed with SIGKILL cannot stop its children itself; the kernel
    does it for them, so no broker or worker is ever left running on its own.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
