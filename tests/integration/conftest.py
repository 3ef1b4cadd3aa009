"""The fleet fixtures (real controller and agent processes) live in tests/conftest.py, shared
with tests/attacks."""
