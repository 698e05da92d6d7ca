"""Shared helpers for the benchmarks: medians, percentiles, tables, a bench provider."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from superapp_sdk.capabilities._common import Capability


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values."""
    return statistics.median(values) if values else math.nan


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` in (0, 1]."""
    if not values:
        return math.nan
    data = sorted(values)
    return data[max(1, math.ceil(q * len(data))) - 1]


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table."""
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells[1:]]
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


@dataclass(frozen=True, slots=True)
class BenchProvider:
    """A provider as the router sees it, for benchmarks that call plain HTTP endpoints."""

    name: str
    capability: Capability
    failure_domain: str
    operations: frozenset[str]
