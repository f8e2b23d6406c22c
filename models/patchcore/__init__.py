"""Anomaly detection from good parts, the way anomalib keeps PatchCore (Roth et al., CVPR
2022, "Towards Total Recall in Industrial Anomaly Detection"): local patch features of the
good images form a memory bank; a query patch's anomaly is its distance to the nearest
good patch; the image score and the heatmap both come from that patch map."""

from models.patchcore.memory import PatchMemory, calibrate_threshold
from models.patchcore.sampler import KCenterGreedy

__all__ = ["KCenterGreedy", "PatchMemory", "calibrate_threshold"]
