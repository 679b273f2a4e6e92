"""Holm's step-down correction for comparing several treatments with one control."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["holm"]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order.

    Rejecting every hypothesis whose adjusted p-value is below alpha keeps the chance of any false
    rejection at most alpha, for any dependence between the tests. Applied to always-valid p-values
    the guarantee holds at every look.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
