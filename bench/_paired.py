"""The paired comparison of two sets of runs, one pair per training seed, that the retrain benches report."""

from __future__ import annotations

import numpy as np
from scipy import stats


def paired_summary(noisy: np.ndarray, cleaned: np.ndarray) -> dict[str, float]:
    """Mean, standard error and sd of `cleaned − noisy` (in accuracy points), the counts ahead / behind /
    level, and the two-sided paired t-test and Wilcoxon signed-rank p-values.

    Args:
        noisy: (N,) test accuracy of each run on the noisy labels.
        cleaned: (N,) test accuracy of the same seed on the cleaned labels.
    """
    if noisy.shape != cleaned.shape or noisy.ndim != 1 or len(noisy) < 2:
        raise ValueError(
            f"need two equal 1-d arrays of at least 2 runs, got {noisy.shape} and {cleaned.shape}"
        )
    diff = np.round((cleaned - noisy) * 100, 6)  # points; rounded so a tie at 3 decimals counts as level
    sd = float(diff.std(ddof=1))
    return {
        "runs": len(diff),
        "mean": float(diff.mean()),
        "se": sd / np.sqrt(len(diff)),
        "sd": sd,
        "ahead": int((diff > 0).sum()),
        "behind": int((diff < 0).sum()),
        "level": int((diff == 0).sum()),
        # = the paired t-test, on the same diffs; no difference at all has nothing to test (scipy gives nan
        # for the t-test there, and some versions refuse the Wilcoxon test), so both p-values are 1
        "t_p": float(stats.ttest_1samp(diff, 0.0).pvalue) if diff.any() else 1.0,
        "wilcoxon_p": float(stats.wilcoxon(diff).pvalue) if diff.any() else 1.0,
    }
