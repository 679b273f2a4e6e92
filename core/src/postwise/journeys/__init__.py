"""Journeys: multi-step flows with waits, branches, splits and goals (see docs/journeys.md)."""
