"""Tooling that ships with postwise but is not part of the product: benchmarks, the demo and the
local SMTP sink.

``postwise bench ...`` and ``postwise demo`` load these modules by name (the CLI's lazy command
tables), and the test kit (:mod:`postwise.testing.smtp`) builds its fault-injecting server on
:mod:`postwise.devtools.sink`. No product module imports anything here, and nothing here is
imported by a product module: the layering test (``tests/core/test_layering.py``) enforces both.
"""
