"""Test utilities for postwise plugin authors.

* :mod:`postwise.testing.contracts`: contract test suites per extension kind. Subclass the one
  for your kind in your own test module, implement the factory method, and pytest runs every
  contract test against your implementation.
* :mod:`postwise.testing.smtp`: a fault-injecting SMTP server for provider tests.
"""
