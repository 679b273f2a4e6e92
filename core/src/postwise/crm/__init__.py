"""CRM connectors: contacts flow in, engagement flows back."""
