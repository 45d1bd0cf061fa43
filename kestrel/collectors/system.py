"""The system collector: host metrics at 10 Hz from psutil.

Fields (the digest's): ``cpu_percent`` and ``memory_percent`` in %, ``disk_io_read_mb``
and ``disk_io_write_mb`` in MB/s, ``network_bytes_in`` and ``network_bytes_out`` in
bytes/s, all over the last interval; ``gpu_utilization`` (%, the mean over the GPUs)
and ``gpu_memory_mb`` (used, summed over the GPUs) come from NVML (nvidia-ml-py) and
are null on a machine where NVML finds no NVIDIA GPU or no driver.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import psutil
import pynvml

log = logging.getLogger(__name__)

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


class GpuSampler:
    """NVML's view of this host's NVIDIA GPUs; empty (and null fields) without one."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except pynvml.NVMLError as exc:
            log.info("no NVIDIA GPU metrics (NVML: %s); GPU fields are null", exc)
        else:
            names = [pynvml.nvmlDeviceGetName(h) for h in self.handles]
            log.info("GPU metrics from NVML: %s", ", ".join(map(str, names)) or "no devices")

    def sample(self) -> tuple[float | None, float | None]:
        """(utilisation %, used memory MB), or (None, None) without a GPU."""
        if not self.handles:
            return None, None
        try:
            busy = [pynvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self.handles]
            used = [pynvml.nvmlDeviceGetMemoryInfo(h).used for h in self.handles]
        except pynvml.NVMLError as exc:  # a GPU fell off the bus, a driver reload
            log.warning("NVML read failed, GPU fields null this sample: %s", exc)
            return None, None
        return sum(busy) / len(busy), sum(used) / MB


class SystemSampler:
    """Rates since the previous sample. psutil calls block briefly: run it off any event loop."""

    def __init__(self) -> None:
        psutil.cpu_percent(None)  # the first call only primes the counter
        self._last = _counters()
        self._gpu = GpuSampler()

    def sample(self) -> dict[str, float | None]:
        now = _counters()
        dt = max(now.at - self._last.at, 1e-6)
        last, self._last = self._last, now
        gpu_utilization, gpu_memory_mb = self._gpu.sample()
        return {
            "cpu_percent": psutil.cpu_percent(None),
            "memory_percent": psutil.virtual_memory().percent,
            "gpu_utilization": gpu_utilization,
            "gpu_memory_mb": gpu_memory_mb,
            "disk_io_read_mb": (now.read_bytes - last.read_bytes) / MB / dt,
            "disk_io_write_mb": (now.write_bytes - last.write_bytes) / MB / dt,
            "network_bytes_in": (now.recv_bytes - last.recv_bytes) / dt,
            "network_bytes_out": (now.sent_bytes - last.sent_bytes) / dt,
        }
