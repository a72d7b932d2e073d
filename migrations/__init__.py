"""Alembic migrations for R3's database (Postgres and SQLite). `r3 migrate` applies them."""
