"""Test harness shared by the whole suite: the fixtures of the postwise pytest plugin.

The fixtures (``settings``, ``make_settings``, ``runtime``, ``client``, ``api_key``,
``real_redis``, ``pg_url``, ``use_plugin``, ``fake_server``...) live in
:mod:`postwise.testing.plugin`, which installing postwise registers with pytest (the
``pytest11`` entry point), so a plugin's tests outside this repository get the very same ones.
Naming it here keeps the suite working when the entry point is not installed (PYTHONPATH
checkouts, ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``); when it is, pytest sees the name already
registered and loads nothing twice.

The suite runs in two modes, chosen by environment:

* embedded defaults (no servers): SQLite and the in-process Redis stand-in;
* real servers: ``POSTWISE_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test`` and
  ``POSTWISE_TEST_REDIS_URL=redis://127.0.0.1:6379``. tox's ``servers`` env and CI set them.

Either way, each test session gets a database of its own (a fresh PostgreSQL database created
from the admin URL, or a migrated SQLite file copied per test) and a Redis database number of its
own (claimed atomically in db 0), so concurrent runs on one machine never see each other's data.

Tests that exercise Redis- or PostgreSQL-specific behaviour ask for ``real_redis`` /
``pg_url`` directly; they need those servers whatever the mode (they always run in CI).
"""

from __future__ import annotations

import os

# The suite runs postwise's long-running processes on loopback with test values (an http base
# URL, example senders): development mode lets them start. Production mode's refusal is tested
# on its own (tests/core/test_deployment.py).
os.environ.setdefault("POSTWISE_MODE", "development")

pytest_plugins = ["postwise.testing.plugin"]
