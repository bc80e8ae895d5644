"""Persistence: resources, every version, and (later) search index rows, on SQLite or PostgreSQL."""
