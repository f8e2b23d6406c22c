"""Persistence for FSDI: SQLAlchemy tables, repositories, migrations and the blob store.

Nothing here imports HTTP or torch code.
"""
