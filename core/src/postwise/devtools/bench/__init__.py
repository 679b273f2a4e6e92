"""``postwise bench``: one module per subsystem measured; figures go into docs/benchmarks.md."""
