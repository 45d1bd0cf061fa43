"""Faust tables: the state the stream agents keep, each changelog-backed."""

from __future__ import annotations

from typing import Any, cast

import faust


def json_table(app: faust.App, name: str, partitions: int) -> faust.Table[str, dict[str, Any]]:
    """A table keyed by string, valued with JSON (the app's default serializer)."""
    return cast(
        faust.Table[str, dict[str, Any]],
        app.Table(name, default=None, partitions=partitions, key_type=str),
    )
