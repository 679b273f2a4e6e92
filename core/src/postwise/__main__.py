"""``python -m postwise``: the same as the ``postwise`` command."""

from postwise.cli import main

main()
