"""Process-wide settings (kestrel/process.py)."""

from __future__ import annotations

import platform

from kestrel.process import limit_malloc_arenas


def test_glibc_takes_the_malloc_arena_cap() -> None:
    # Linux with glibc here (and in the Docker image): mallopt says 1 when it took it.
    assert platform.libc_ver()[0] == "glibc"
    assert limit_malloc_arenas(2) is True
