"""Behaviour triggers: product events matched against conditions fire follow-up email."""
