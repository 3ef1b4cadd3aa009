"""JSON columns that hold edgefleet.fleet dataclasses: rows are converted to dataclasses
once, here, as they are read, and back as they are written — the rest of the controller
reads attributes, never dict keys.

Rows written by an earlier version may lack a field added since (it takes its default)
or hold one since dropped (ignored); a row that cannot be read as the dataclass at all
is skipped rather than fail every read of its device."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sqlalchemy import JSON
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def _flat(item: object) -> dict[str, Any]:
    """A flat dataclass of edgefleet.fleet as a dict (``vars``: no deep copies, every
    sync writes these); a dict passes as it is."""
    return dict(item) if isinstance(item, dict) else dict(vars(item))


def _read(kind: type[T], value: object) -> T | None:
    if not isinstance(value, dict):
        return None
    names = {f.name for f in dataclasses.fields(kind)}
    try:
        return kind(**{k: v for k, v in value.items() if k in names})
    except TypeError:  # a required field is missing
        return None


def as_records(kind: type[T], value: Any) -> tuple[T, ...]:
    """``value`` (dataclasses or dicts, as assigned in code) as a tuple of ``kind``."""
    records = (item if isinstance(item, kind) else _read(kind, item) for item in value or ())
    return tuple(record for record in records if record is not None)


def as_record(kind: type[T], value: Any) -> T:
    """``value`` (a dataclass or a dict) as one ``kind``."""
    return value if isinstance(value, kind) else (_read(kind, value) or kind())


class RecordList(TypeDecorator[tuple[Any, ...]], Generic[T]):
    """A tuple of ``kind`` dataclasses, stored as a JSON list of objects."""

    impl = JSON
    cache_ok = True

    def __init__(self, kind: type[T]) -> None:
        super().__init__()
        self.kind = kind

    def process_bind_param(self, value: Any, dialect: Dialect) -> list[dict[str, Any]]:
        return [_flat(item) for item in value or ()]

    def process_result_value(self, value: Any, dialect: Dialect) -> tuple[Any, ...]:
        return as_records(self.kind, value)


class Record(TypeDecorator[Any], Generic[T]):
    """One ``kind`` dataclass (every field with a default), stored as a JSON object."""

    impl = JSON
    cache_ok = True

    def __init__(self, kind: type[T]) -> None:
        super().__init__()
        self.kind = kind

    def process_bind_param(self, value: Any, dialect: Dialect) -> dict[str, Any]:
        return _flat(value) if value is not None else {}

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return as_record(self.kind, value)
