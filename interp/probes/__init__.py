"""Linear probes on Safety-Token activations: trainers, grouped CV, metrics, calibration, ProbeSet, sweeps."""

from interp.probes.data import LayerData, load_layer
from interp.probes.probeset import ProbeSet

__all__ = ["LayerData", "ProbeSet", "load_layer"]
