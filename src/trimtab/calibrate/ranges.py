"""Calibration results: one range per activation tensor."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorRange:
    """The range a calibration method chose for one tensor.

    `amax` is the symmetric clipping threshold the method picked (|x| <= amax is kept);
    `min`/`max` are what was observed. Asymmetric (uint8) quantization uses `asymmetric()`.
    """

    amax: float
    min: float
    max: float

    def __post_init__(self) -> None:
        if not (self.amax >= 0.0):
            raise ValueError(f"amax must be a non-negative number, got {self.amax}")
        if self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}")

    def asymmetric(self) -> tuple[float, float]:
        """[lo, hi] for uint8: the observed range clipped to +-amax, always containing 0
        (so that zero, e.g. padding, is exact)."""
        lo = min(0.0, max(self.min, -self.amax))
        hi = max(0.0, min(self.max, self.amax))
        return lo, hi
