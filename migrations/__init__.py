"""Alembic migrations of the Lookalike schema (one head)."""
