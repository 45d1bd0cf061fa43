"""The state the stages keep: window logic, the sketch, and each stage's state store.

State is kept by :class:`kestrel.state.StateStore`, not by Faust tables: Kestrel owns
its restore and its transactions (see that module for why and how). :func:`bind`
connects a store to its Faust app's rebalances and shutdown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # nothing heavy at import: the Quix Streams baseline imports tables.sketch
    import faust
    from mode import BaseSignalT

    from kestrel.state import StateStore


def bind(app: faust.App, store: StateStore[Any]) -> None:
    """Restore a store's tasks on assignment, commit and drop them on revocation."""

    async def assigned(sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kw: Any) -> None:
        # Faust's signal: args[0] is the set of assigned topic partitions.
        store.on_assigned(args[0], app.consumer_generation_id)

    async def revoked(sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kw: Any) -> None:
        await store.on_revoked(args[0])

    async def shutdown(sender: Any, /, *args: Any, **kw: Any) -> None:
        await store.stop()

    async def catch_up(partition: int, offsets: dict[str, int]) -> None:
        from faust.types import TP

        from kestrel.faust_compat import commit_done

        await commit_done(app, {TP(topic, partition): off for topic, off in offsets.items()})

    app.on_partitions_assigned.connect(assigned)
    app.on_partitions_revoked.connect(revoked)
    app.on_before_shutdown.connect(shutdown)
    store.catch_up = catch_up
