"""The system collector: host metrics at 10 Hz from psutil.

Fields (the digest's): ``cpu_percent`` and ``memory_percent`` in %, ``disk_io_read_mb``
and ``disk_io_write_mb`` in MB/s, ``network_bytes_in`` and ``network_bytes_out`` in
bytes/s, all over the last interval; ``gpu_utilization`` (%) and ``gpu_memory_mb`` are
null on a machine without an NVIDIA GPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil

MB = 1024 * 1024


@dataclass
class _Counters:
    at: float
    read_bytes: int
    write_bytes: int
    recv_bytes: int
    sent_bytes: int


def _counters() -> _Counters:
    disk = psutil.disk_io_counters()
    net = psutil.net_io_counters()
    return _Counters(
        at=time.monotonic(),
        read_bytes=disk.read_bytes if disk else 0,
        write_bytes=disk.write_bytes if disk else 0,
        recv_bytes=net.bytes_recv,
        sent_bytes=net.bytes_sent,
    )


class SystemSampler:
    """Rates since the previous sample. psutil calls block briefly: run it off any event loop."""

    def __init__(self) -> None:
        psutil.cpu_percent(None)  # the first call only primes the counter
        self._last = _counters()

    def sample(self) -> dict[str, float | None]:
        now = _counters()
        dt = max(now.at - self._last.at, 1e-6)
        last, self._last = self._last, now
        return {
            "cpu_percent": psutil.cpu_percent(None),
            "memory_percent": psutil.virtual_memory().percent,
            "gpu_utilization": None,
            "gpu_memory_mb": None,
            "disk_io_read_mb": (now.read_bytes - last.read_bytes) / MB / dt,
            "disk_io_write_mb": (now.write_bytes - last.write_bytes) / MB / dt,
            "network_bytes_in": (now.recv_bytes - last.recv_bytes) / dt,
            "network_bytes_out": (now.sent_bytes - last.sent_bytes) / dt,
        }
