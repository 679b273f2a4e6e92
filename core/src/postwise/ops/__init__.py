"""Operating postwise: process heartbeats, readiness, metrics, logs and the supervisor.

Everything here sits on the ground floor beside the runtime: subsystems may count into
:mod:`postwise.ops.metrics`, and the CLI and server use the rest; nothing here imports a
subsystem.
"""
