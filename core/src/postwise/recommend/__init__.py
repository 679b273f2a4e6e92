"""Recommenders that fill recommendation blocks in templates."""
