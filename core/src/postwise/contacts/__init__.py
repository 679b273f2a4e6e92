"""Contacts: normalisation, import, segments."""
