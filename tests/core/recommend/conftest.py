"""Fixtures of the recommendation tests: generated data with known taste clusters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from postwise.recommend.synthetic import SyntheticData, clustered


@pytest.fixture(scope="session")
def clusters() -> SyntheticData:
    """400 contacts in 4 taste clusters of 25 items each, 3 to 10 interactions per contact."""
    return clustered(contacts=400, seed=7)


@pytest.fixture(scope="session")
def recent_clusters() -> SyntheticData:
    """Like ``clusters``, with interactions in the last weeks (inside training's lookback)."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=30)
    return clustered(contacts=300, seed=11, start=start)
