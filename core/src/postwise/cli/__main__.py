"""``python -m postwise.cli``: the same as the ``postwise`` command (what the supervisor runs)."""

from postwise.cli import main

main()
