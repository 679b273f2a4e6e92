"""Experiments: assign contacts to variants, and call a winner only when the difference is real.

* :mod:`postwise.experiments.assignment`: stable, weighted, independent assignment (send time).
* :mod:`postwise.experiments.stats`: ``analyze`` aggregate counts into a decision and a report.
* :mod:`postwise.experiments.sequential`: the always-valid test (the default decision gate).
* :mod:`postwise.experiments.chi2`, :mod:`postwise.experiments.bayes`: the other built-in tests.
* :mod:`postwise.experiments.planning`: sample sizes, fixed-horizon and sequential.

The package imports nothing heavy by itself, so send workers that only assign variants do not
load scipy.
"""
