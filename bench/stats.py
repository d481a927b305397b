"""How sure a ratio of two loops' medians is, for the runners' reports.

On this kind of machine (a small, shared VM) one network sample's throughput moves by 10-30%
from one second to the next, with the same server process and the same client, so a row's
ratio of medians is often decided by which samples landed in a fast second. The reports
therefore give, for each row where ferroloop is behind, a bootstrap interval of the ratio: if
it reaches 1 the gap is within the run's noise, and only a row whose whole interval lies below
1 is behind in a way the run can show.

The interval is the percentile bootstrap: resample each loop's samples with replacement, take
the ratio of the two medians, repeat, and read off the central quantiles. It assumes nothing
about the shape of the samples' distribution (which is often bimodal here), but with five
samples per loop it is coarse; more samples (``--repeat``) narrow it.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence

RESAMPLES = 4000
LEVEL = 0.95


def ratio_interval(
    mine: Sequence[float], theirs: Sequence[float], level: float = LEVEL, resamples: int = RESAMPLES
) -> tuple[float, float]:
    """Percentile-bootstrap interval of median(mine) / median(theirs), at `level` confidence.

    Seeded from the samples themselves, so a report printed twice from the same data agrees.
    """
    if not mine or not theirs or min(theirs) <= 0:
        raise ValueError("need samples for both loops, and positive ones for the divisor")
    rng = random.Random(hash((tuple(mine), tuple(theirs))) & 0xFFFFFFFF)
    ratios = sorted(
        statistics.median(rng.choices(mine, k=len(mine))) / statistics.median(rng.choices(theirs, k=len(theirs)))
        for _ in range(resamples)
    )
    tail = (1 - level) / 2
    low = ratios[int(tail * (resamples - 1))]
    high = ratios[int((1 - tail) * (resamples - 1))]
    return low, high


def behind_verdict(mine: Sequence[float], theirs: Sequence[float]) -> str:
    """Words for a row whose median ratio is below 1: within the noise, or behind."""
    if min(len(mine), len(theirs)) < 3:
        return "too few samples to judge"
    low, high = ratio_interval(mine, theirs)
    where = "within the noise" if high >= 1 else "behind"
    return f"{LEVEL:.0%} interval {low:.2f}-{high:.2f}: {where}"
