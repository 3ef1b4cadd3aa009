"""The agent's local tamper-evident audit log."""
