"""Compliance: what must hold before, while and after postwise sends mail.

One module per concern; import the module you need (``postwise.compliance.bounces`` classifies
bounces, complaints and auto-replies that come back).
"""

from __future__ import annotations
