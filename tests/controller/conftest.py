"""The `database` fixture (SQLite and PostgreSQL) lives in tests/conftest.py."""
