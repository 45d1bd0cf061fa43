"""Each camera's tracking state, in a changelog-backed Faust table keyed by camera id.

The value (JSON) holds the tracker (:meth:`kestrel.camera.tracker.Tracker.to_json`),
each counting line's totals, the classes seen, and the input offset it reflects, so
a restarted or rebalanced worker continues the camera's tracks and counts where they
were, and skips detections it already applied.
"""

from __future__ import annotations

from typing import Any, cast

import faust

from faust_app import app, settings

camera_tracks = cast(
    faust.Table[str, dict[str, Any]],
    app.Table(
        "camera-tracks",
        default=None,
        partitions=settings.topic_partitions,
        key_type=str,  # values: the app's default serializer, JSON
    ),
)
