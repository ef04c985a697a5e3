"""Stage 5: linear probes on Safety-Token activations: the batched solver, grouped CV, sweeps, the layer and
threshold rule (``select``), training under the held-out protocol, metrics, calibration, ``ProbeSet``."""

from interp.probes.data import LayerData, load_layer
from interp.probes.probeset import ProbeSet

__all__ = ["LayerData", "ProbeSet", "load_layer"]
