"""HubSpot API calls per idle poll against the local fake (issue 12, item 2).

Run: ``python3 tests/plugins/hubspot/bench_idle_poll.py``.
"""

import os
import sys
import time
from datetime import timedelta

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fake_hubspot import FakeHubSpot
from hubspot_helpers import options

from postwise_hubspot.connector import HubSpotConnector
from postwise_hubspot.options import parse_options


def main() -> None:
    fake = FakeHubSpot().start()
    try:
        for n in range(20):
            fake.add(f"live{n}@example.com")
        for n in range(10_000):
            fake.archive(fake.add(f"old{n}@example.com"))
        hs = HubSpotConnector(parse_options(options(fake)))
        since = fake.clock + timedelta(seconds=5)
        before = len(fake.received)
        list(hs.fetch_changes(since))
        idle = len(fake.received) - before
        before = len(fake.received)
        started = time.perf_counter()
        list(hs.reconcile_deletions(since))
        reconcile = len(fake.received) - before
        elapsed = time.perf_counter() - started
        print(
            f"10,000 archived contacts: idle poll {idle} call(s); reconciliation {reconcile} "
            f"calls in {elapsed:.1f} s; before the fix every poll cost {idle + reconcile}"
        )
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
