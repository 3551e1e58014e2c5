"""The CCAT operations database: typed SQLAlchemy models and Alembic migrations.

This package imports nothing else of the workflow manager; everything else imports it.
"""
