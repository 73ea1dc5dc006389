"""Alembic environment and revisions of the profile store (run by `sampleattn.store.migrate`)."""
