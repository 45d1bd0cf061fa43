"""A clip's context phase: its frames' detections through the tracker, in order.

The same tracker as the live cameras (:mod:`kestrel.camera.tracker`), over the clip's
sampled frames: every detection at or above the request's score threshold starts or
continues a track (reported from its first frame: a clip is short), and a track not
seen for ``MAX_MISSES`` sampled frames ends. Each frame's findings carry their track
id and zones; each track is summed up once (label, first and last time, frames, zones).
"""

from __future__ import annotations

from collections.abc import Sequence

from kestrel.camera.geometry import foot, inside
from kestrel.camera.tracker import Tracker
from kestrel.schemas.analysis import Finding, FrameResult, TrackSummary
from kestrel.schemas.camera import CameraConfig, Detection

MAX_MISSES = 2  # sampled frames (half a second at 4 a second)


def follow(
    frames: Sequence[tuple[int, int, list[Detection] | None]],
    camera: CameraConfig | None,
    score_threshold: float,
    max_items: int | None,
) -> tuple[list[FrameResult], list[TrackSummary]]:
    """``frames``: (frame number, t_ms, detections or None if the frame failed), in order."""
    tracker = Tracker(high=score_threshold, low=score_threshold, min_hits=1, max_misses=MAX_MISSES)
    zones = camera.zones if camera is not None else []
    results: list[FrameResult] = []
    tracks: dict[int, TrackSummary] = {}
    for position, (frame, t_ms, detections) in enumerate(frames):
        kept = [d for d in detections or [] if d.score >= score_threshold]
        seen = tracker.match_and_update(
            [tuple(d.box) for d in kept],  # type: ignore[misc]
            [d.score for d in kept],
            [d.label for d in kept],
        )
        seen.sort(key=lambda t: -t.score)
        if max_items is not None:
            seen = seen[:max_items]
        findings = []
        for i, track in enumerate(seen):
            inside_zones = [z.name for z in zones if inside(foot(list(track.box)), z.polygon)]
            findings.append(
                Finding(
                    position=i,
                    label=track.label,
                    score=min(1.0, max(0.0, track.score)),
                    box=list(track.box),
                    zones=inside_zones,
                    track_id=track.track_id,
                )
            )
            summary = tracks.get(track.track_id)
            if summary is None:
                summary = tracks[track.track_id] = TrackSummary(
                    track_id=track.track_id,
                    label=track.label,
                    first_ms=t_ms,
                    last_ms=t_ms,
                    frames=0,
                    best_score=track.score,
                    zones=[],
                )
            summary.label = track.label
            summary.last_ms = t_ms
            summary.frames += 1
            summary.best_score = max(summary.best_score, track.score)
            summary.zones += [z for z in inside_zones if z not in summary.zones]
        results.append(FrameResult(position=position, frame=frame, t_ms=t_ms, findings=findings))
    return results, list(tracks.values())
