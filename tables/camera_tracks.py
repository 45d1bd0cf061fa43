"""Each camera's tracking state, in a changelog-backed Faust table keyed by camera id.

The value (JSON) holds the tracker (:meth:`kestrel.camera.tracker.Tracker.to_json`),
each counting line's totals, the classes seen, and the input offset it reflects, so
a restarted or rebalanced worker continues the camera's tracks and counts where they
were, and skips detections it already applied.
"""

from __future__ import annotations

from faust_app import app, settings
from tables import json_table

camera_tracks = json_table(app, "camera-tracks", settings.topic_partitions)
