"""Energy mapping: a model's metrics as the dashboard's visual parameters, each 0..1.

The digest's formulas, with the constants it leaves open fixed here:

* token velocity = tokens_per_second x entropy factor, the entropy factor being
  ``entropy_bits / MAX_ENTROPY_BITS``;
* particle_density = ``entropy_bits / MAX_ENTROPY_BITS``;
* ribbon_width = throughput / baseline = ``tokens_per_second / BASELINE_TPS``;
* animation_speed = velocity / max velocity = ``velocity / MAX_TPS`` (the largest
  velocity is MAX_TPS tokens/s at full entropy);
* lightning_intensity (named by the digest, not defined) = the model's own
  ``energy_normalized`` when it reports one, else ``gpu_utilization / 100``.

Each value is clamped to 0..1; a value whose inputs are unknown (null) is 0.
"""

from __future__ import annotations

from collections.abc import Mapping

from kestrel.schemas.metrics import EnergyVisual

#: log2 of a 32,000-token vocabulary (LLaMA's): the entropy of a uniform next token.
MAX_ENTROPY_BITS = 15.0
#: Throughput that fills the ribbon: a healthy single-stream decoding rate.
BASELINE_TPS = 100.0
#: Throughput at which the animation runs at full speed.
MAX_TPS = 200.0


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))


def energy_visual(data: Mapping[str, float | None]) -> EnergyVisual:
    """The four visual parameters of one model sample."""
    tps = data.get("tokens_per_second") or 0.0
    entropy = data.get("entropy_bits") or 0.0
    entropy_factor = _clamp(entropy / MAX_ENTROPY_BITS)
    velocity = tps * entropy_factor
    energy = data.get("energy_normalized")
    if energy is None:
        gpu = data.get("gpu_utilization")
        energy = None if gpu is None else gpu / 100
    return EnergyVisual(
        ribbon_width=_clamp(tps / BASELINE_TPS),
        particle_density=entropy_factor,
        animation_speed=_clamp(velocity / MAX_TPS),
        lightning_intensity=_clamp(energy or 0.0),
    )
