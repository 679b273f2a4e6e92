"""Sample-ratio mismatch: do the exposures match the configured split?

A split that drifts from its weights (p < 0.001 by Pearson's chi-squared goodness of fit)
means assignment or tracking is broken (a variant's emails bounce more, a tracking pixel fails
in one template, a bot filter hits one arm), and then no difference in rates can be trusted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import special

__all__ = ["SRM_THRESHOLD", "srm_p_value"]

#: Below this p-value the split is flagged and every decision is withheld.
SRM_THRESHOLD = 0.001


def srm_p_value(exposures: Sequence[int], weights: Sequence[float]) -> float:
    """P-value of Pearson's goodness-of-fit test of ``exposures`` against ``weights``.

    Matches ``scipy.stats.chisquare`` and GrowthBook's ``check_srm``; 1 when nobody is exposed.
    Weights are validated by the caller (positive, summing to 1).
    """
    observed = np.asarray(exposures, dtype=np.float64)
    total = observed.sum()
    if total == 0:
        return 1.0
    expected = np.asarray(weights, dtype=np.float64) * total
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    return float(special.chdtrc(len(observed) - 1, statistic))
