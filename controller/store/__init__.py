"""Controller persistence: SQLAlchemy schema and transactional sessions."""
