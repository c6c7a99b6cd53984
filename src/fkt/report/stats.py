"""Paired comparisons over seeds: seed s of arm A against seed s of arm B (same split, same seed)."""

from __future__ import annotations

import math
import statistics

from scipy import stats


def paired_difference(a: dict[int, float], b: dict[int, float], level: float = 0.95) -> dict:
    """Mean of A - B over the seeds both have, its t-interval and the paired t-test's p-value.

    With fewer than two pairs there is no interval and no test (`p_value` None)."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    result = {"n": len(diffs), "seeds": seeds, "mean_diff": statistics.fmean(diffs) if diffs else math.nan,
              "ci_low": None, "ci_high": None, "p_value": None, "significant": False}
    if len(diffs) < 2:
        return result
    sd = statistics.stdev(diffs)
    if sd == 0:  # identical differences: the t statistic is infinite (or undefined if all zero)
        mean = result["mean_diff"]
        result.update(ci_low=mean, ci_high=mean, p_value=0.0 if mean != 0 else 1.0)
    else:
        half = stats.t.ppf(0.5 + level / 2, len(diffs) - 1) * sd / math.sqrt(len(diffs))
        result.update(ci_low=result["mean_diff"] - half, ci_high=result["mean_diff"] + half,
                      p_value=float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue))
    result["significant"] = result["p_value"] < 1 - level
    return result
