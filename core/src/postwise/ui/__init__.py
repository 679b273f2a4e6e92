"""The web interface served by ``postwise serve`` under ``/ui`` (see :mod:`postwise.ui.pages`)."""
