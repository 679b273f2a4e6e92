"""Salesforce for postwise: the ``salesforce`` CRM connector (REST API, signed Flow posts)."""

__version__ = "0.1.0"
