"""`data.where` applied to records: JSON objects one at a time, Parquet columns a slice at a time.

The conditions (`gptcore.params.Filter`) come from one source's settings, so every source of a
corpus can carry its own. A record is kept when it passes every condition; one that fails is
counted once, under the first condition it fails, in the order they were written.

The same rules hold for both formats:

- a null value fails the condition (it is neither equal nor unequal to anything, as in SQL);
- a field the record lacks (JSON) or a column the file lacks (Parquet) stops the stage, naming the
  fields or columns there are, since a misspelt name would otherwise drop the whole corpus quietly;
- a value of another kind than the condition's (a string where `>=3` wants a number, a number
  where `en` wants a string) stops the stage too, naming the field and what it holds.

`optional` conditions (data.pile_set_names) fail instead of stopping, as that key always did.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from gptcore.params import Filter

NAMES_SHOWN = 30  # field or column names listed in an error

_MISSING = object()
_COMPARE = {
    "==": "equal",
    "!=": "not_equal",
    ">": "greater",
    ">=": "greater_equal",
    "<": "less",
    "<=": "less_equal",
}
_PYTHON = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}


class WhereError(ValueError):
    """A record or file that data.where cannot be applied to; the reader adds where it is."""


# -- JSON


def lookup(obj: dict, field: str) -> Any:
    """`obj[field]`, or the value a dotted `field` reaches through nested objects; _MISSING if none."""
    if field in obj:
        return obj[field]
    value: Any = obj
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def is_missing(value: object) -> bool:
    return value is _MISSING


def field_names(obj: dict, prefix: str = "") -> list[str]:
    """The fields of a JSON object, nested objects' as dotted paths (`meta.pile_set_name`)."""
    names = []
    for key, value in obj.items():
        if isinstance(value, dict) and value:
            names += field_names(value, f"{prefix}{key}.")
        else:
            names.append(f"{prefix}{key}")
    return names


def first_failed(filters: Sequence[Filter], obj: dict) -> Filter | None:
    """The first condition that the JSON object `obj` fails, or None when it passes them all."""
    for f in filters:
        value = lookup(obj, f.field)
        if value is _MISSING:
            if f.optional:
                return f
            raise WhereError(
                f'data.where names the field "{f.field}", which this object lacks '
                f"(its fields: {listed(field_names(obj))})"
            )
        if value is None:
            return f
        kind = _json_kind(value)
        if kind != f.kind:
            if f.optional:
                return f
            raise WhereError(f'data.where {f.label}: "{f.field}" holds {_json_words(value)}, not a {f.kind}')
        if not _python_holds(f, value):
            return f
    return None


def _python_holds(f: Filter, value: Any) -> bool:
    if isinstance(f.value, tuple):
        return value in f.value
    return bool(_PYTHON[f.op](value, f.value))


def _json_kind(value: object) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "string" if isinstance(value, str) else None


def _json_words(value: object) -> str:
    kinds = ((bool, "a boolean"), ((int, float), "a number"), (str, "a string"), (list, "an array"))
    return next((words for kind, words in kinds if isinstance(value, kind)), "an object")


# -- Arrow


def arrow_kind(tp: pa.DataType) -> str | None:
    """What an Arrow type holds, in data.where's words: number, string, boolean (None: other)."""
    if pa.types.is_dictionary(tp):
        return arrow_kind(tp.value_type)
    if pa.types.is_integer(tp) or pa.types.is_floating(tp) or pa.types.is_decimal(tp):
        return "number"
    if pa.types.is_string(tp) or pa.types.is_large_string(tp) or pa.types.is_string_view(tp):
        return "string"
    return "boolean" if pa.types.is_boolean(tp) else None


def resolve(schema: pa.Schema, field: str) -> tuple[str, tuple[str, ...], pa.DataType] | None:
    """Where `field` is in a file: its top-level column, the path of struct fields below it, and
    its type. A column whose own name holds dots wins over a nested path. None if neither exists."""
    if field in schema.names:
        return field, (), schema.field(field).type
    top, *path = field.split(".")
    if top not in schema.names:
        return None
    tp = schema.field(top).type
    for part in path:
        if not pa.types.is_struct(tp) or tp.get_field_index(part) < 0:
            return None
        tp = tp.field(part).type
    return top, tuple(path), tp


def column_names(schema: pa.Schema) -> list[str]:
    """A file's columns, a struct's fields as dotted paths (`meta.pile_set_name`)."""

    def leaves(name: str, tp: pa.DataType) -> list[str]:
        if pa.types.is_struct(tp) and tp.num_fields:
            return [
                leaf
                for i in range(tp.num_fields)
                for leaf in leaves(f"{name}.{tp.field(i).name}", tp.field(i).type)
            ]
        return [name]

    return [leaf for f in schema for leaf in leaves(f.name, f.type)]


def check_columns(filters: Sequence[Filter], schema: pa.Schema) -> list[Filter | None]:
    """Check the conditions against a file's schema before a row is read; return, per condition,
    itself, or None for an optional one that no row of this file can pass (column missing or of
    another kind). Raises WhereError naming the file's columns for a missing one, and the
    column's type for one of another kind."""
    checked: list[Filter | None] = []
    for f in filters:
        found = resolve(schema, f.field)
        kind = arrow_kind(found[2]) if found else None
        if found is not None and kind == f.kind:
            checked.append(f)
        elif f.optional:
            checked.append(None)
        elif found is None:
            raise WhereError(
                f'data.where names the column "{f.field}", which this file lacks '
                f"(its columns: {listed(column_names(schema))})"
            )
        else:
            raise WhereError(f'data.where {f.label}: column "{f.field}" is {found[2]}, not a {f.kind} column')
    return checked


def column(batch: pa.RecordBatch, top: str, path: tuple[str, ...]) -> pa.Array:
    """A column of a batch, or a field nested in its structs; dictionary-encoded values decoded."""
    array = batch.column(top)
    for part in path:
        array = pc.struct_field(array, part)
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return array


def keep_mask(
    filters: Sequence[Filter | None],
    columns: Sequence[pa.Array | None],
    rows: int,
    rejected: Counter[str],
    labels: Sequence[str],
) -> pa.BooleanArray | None:
    """Which of `rows` rows pass every condition (None: all of them, there being no condition).
    Each rejected row is counted in `rejected` under the label of the first condition it fails;
    `None` in `filters` is a condition no row passes (see check_columns)."""
    keep: pa.BooleanArray | None = None
    for f, values, label in zip(filters, columns, labels, strict=True):
        passes = pa.repeat(False, rows) if f is None or values is None else _arrow_holds(f, values)
        failed = pc.invert(passes) if keep is None else pc.and_(keep, pc.invert(passes))
        keep = passes if keep is None else pc.and_(keep, passes)
        if count := pc.sum(failed).as_py():
            rejected[label] += count
    return keep


def _arrow_holds(f: Filter, values: pa.Array) -> pa.BooleanArray:
    """Where the condition holds, with False (never null) for a null value."""
    if f.kind == "number":
        if pa.types.is_decimal(values.type) or not (
            pa.types.is_integer(values.type) and all(isinstance(v, int) for v in _operands(f))
        ):
            values = values.cast(pa.float64())
        else:
            values = values.cast(pa.int64())
    if isinstance(f.value, tuple):
        result = pc.is_in(values, value_set=pa.array(f.value, type=values.type))
    else:
        result = getattr(pc, _COMPARE[f.op])(values, pa.scalar(f.value, type=values.type))
    return pc.fill_null(result, False)


def _operands(f: Filter) -> tuple[Any, ...]:
    return f.value if isinstance(f.value, tuple) else (f.value,)


def listed(names: list[str]) -> str:
    """The first NAMES_SHOWN names, comma-separated, and how many more there are."""
    more = len(names) - NAMES_SHOWN
    return ", ".join(names[:NAMES_SHOWN]) + (f" and {more} more" if more > 0 else "") if names else "none"
