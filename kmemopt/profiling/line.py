"""Bytes as a line in the batch size: the one type for `fixed + per_sample x B`.

Tensors, layer internals, the static peaks and the measured fit are all lines: a peak can then be
evaluated at any batch size exactly, and a measurement compared term by term with the estimate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Line:
    """bytes(B) = fixed_bytes + per_sample_bytes * B."""

    fixed_bytes: int = 0
    per_sample_bytes: int = 0

    def at(self, batch_size: int) -> int:
        return self.fixed_bytes + self.per_sample_bytes * batch_size

    def __add__(self, other: Line) -> Line:
        return Line(self.fixed_bytes + other.fixed_bytes, self.per_sample_bytes + other.per_sample_bytes)

    def __sub__(self, other: Line) -> Line:
        return Line(self.fixed_bytes - other.fixed_bytes, self.per_sample_bytes - other.per_sample_bytes)

    def to_dict(self) -> dict[str, int]:
        return {"fixed_bytes": self.fixed_bytes, "per_sample_bytes": self.per_sample_bytes}

    @classmethod
    def fit(cls, points: Sequence[tuple[int, int]]) -> Line | None:
        """Least squares through (batch size, bytes) points; None with fewer than two batch sizes."""
        sizes = {b for b, _ in points}
        if len(sizes) < 2:
            return None
        n = len(points)
        mean_b = sum(b for b, _ in points) / n
        mean_y = sum(y for _, y in points) / n
        slope = sum((b - mean_b) * (y - mean_y) for b, y in points) / sum((b - mean_b) ** 2 for b, _ in points)
        return cls(round(mean_y - slope * mean_b), round(slope))


ZERO = Line()
