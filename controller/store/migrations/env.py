"""Alembic environment: migrations run on the connection `Database.upgrade_schema` opens
(inside its transaction, under its lock); there is no alembic.ini."""

from __future__ import annotations

from alembic import context

from edgefleet.controller.store.schema import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things in place: batch operations copy the table.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
