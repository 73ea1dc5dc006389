"""Alembic revisions of the profile store, oldest first: 0001, 0002..."""
