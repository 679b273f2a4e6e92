"""HubSpot for postwise: the ``hubspot`` CRM connector (CRM v3 contacts API, webhooks v3)."""

__version__ = "0.1.0"
