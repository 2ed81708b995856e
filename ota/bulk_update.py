"""Write many rows of one model, each with its own values, in one statement.

Django's ``bulk_update`` builds a ``CASE WHEN pk = ... THEN ...`` expression per field with
one branch per row, resolving and copying an expression object per value: in the rollout
benchmark it was most of the rollout engine's time (docs/benchmarks.md,
"Rollouts"). On PostgreSQL ``columns_update`` sends one array per column as a bound
parameter (server-side binding, in binary: Django's client-side cursor would spell every
element out as a literal) and updates from their ``unnest()`` joined on the primary key: one
short statement whatever the number of rows. Elsewhere (SQLite, for development) one
UPDATE per row through ``executemany``.

Fields with ``auto_now`` (``updated_at``) get the current time, as ``save()`` would give
them; ``bulk_update`` leaves them as they were.

``columns_insert`` does the same for new rows: on PostgreSQL ``INSERT ... SELECT FROM
unnest()`` of one array per column, where ``bulk_create`` built a model instance and a
prepared expression per value (most of a 10 000-device rollout's start).
"""

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from django.db import connection, models
from django.utils import timezone


def _fields(model: type[models.Model], names: Sequence[str]) -> list[models.Field[Any, Any]]:
    fields = [model._meta.get_field(name) for name in names]
    concrete = [
        f for f in fields if isinstance(f, models.Field) and f.concrete and not f.primary_key
    ]
    if len(concrete) != len(fields):
        raise ValueError(f"only concrete, non-key fields of {model._meta.label}: {names}")
    return concrete


def columns_update(
    model: type[models.Model], pks: Sequence[object], columns: Mapping[str, Sequence[object]]
) -> int:
    """Set, for each ``pks[i]``, every field ``name`` to ``columns[name][i]``; row count."""
    if not pks:
        return 0
    fields = _fields(model, list(columns))
    values: list[list[Any]] = [list(pks)]
    for field in fields:
        column = columns[field.name]
        if len(column) != len(pks):
            raise ValueError(f"{field.name}: {len(column)} values for {len(pks)} rows")
        values.append([field.get_db_prep_save(v, connection) for v in column])
    stamped = [
        f
        for f in model._meta.concrete_fields
        if getattr(f, "auto_now", False) and f.name not in columns
    ]
    if stamped:
        now = timezone.now()
        fields += stamped
        values += [[f.get_db_prep_save(now, connection)] * len(pks) for f in stamped]
    pk = model._meta.pk
    if pk is None:  # abstract models only
        raise ValueError(f"{model._meta.label} has no primary key")
    qn = connection.ops.quote_name
    table, key = qn(model._meta.db_table), qn(str(pk.column))
    names = [qn(str(f.column)) for f in fields]
    # Only quoted identifiers and column types from the model's metadata are formatted
    # into the SQL; the values are parameters.
    if connection.vendor == "postgresql":
        # Bound in binary (%b), as columns_insert: dumping the arrays as text costs more.
        arrays = ", ".join(f"%b::{f.cast_db_type(connection)}[]" for f in [pk, *fields])
        assignments = ", ".join(f"{name} = v.{name}" for name in names)
        sql = (
            f"UPDATE {table} SET {assignments} "  # noqa: S608
            f"FROM unnest({arrays}) AS v({key}, {', '.join(names)}) "
            f"WHERE {table}.{key} = v.{key}"
        )
        connection.ensure_connection()
        with psycopg.Cursor(connection.connection) as cursor:
            cursor.execute(sql, values)
            return int(cursor.rowcount)
    assignments = ", ".join(f"{name} = %s" for name in names)
    with connection.cursor() as cursor:
        cursor.executemany(
            f"UPDATE {table} SET {assignments} WHERE {key} = %s",  # noqa: S608
            [[*(column[i] for column in values[1:]), values[0][i]] for i in range(len(pks))],
        )
    return len(pks)


def rows_update(rows: Sequence[models.Model], fields: Sequence[str]) -> int:
    """Save ``fields`` of ``rows`` (instances of one model, already in the database)."""
    if not rows:
        return 0
    model = type(rows[0])
    names = [f.name for f in _fields(model, fields) if not getattr(f, "auto_now", False)]
    attnames = {f.name: f.attname for f in _fields(model, names)}
    return columns_update(
        model,
        [row.pk for row in rows],
        {name: [getattr(row, attnames[name]) for row in rows] for name in names},
    )


def columns_insert(model: type[models.Model], columns: Mapping[str, Sequence[object]]) -> int:
    """INSERT one row per index of ``columns`` (field name -> values; all of one length):
    the fields named take their values, every other concrete field but the key its
    default (``auto_now``/``auto_now_add``: the current time), as ``save()`` gives them.
    Returns the number of rows; defaults are evaluated once, so callables must not
    stand for per-row values."""
    named = _fields(model, list(columns))
    lengths = {len(columns[f.name]) for f in named}
    if len(lengths) > 1:
        raise ValueError(f"columns of different lengths: {sorted(lengths)}")
    count = lengths.pop() if lengths else 0
    if not count:
        return 0
    now = timezone.now()
    fields: list[models.Field[Any, Any]] = []
    values: list[list[Any]] = []
    for field in model._meta.concrete_fields:
        if field.primary_key:
            continue
        fields.append(field)
        if field.name in columns:
            values.append([field.get_db_prep_save(v, connection) for v in columns[field.name]])
            continue
        if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            default: object = now
        else:
            default = field.get_default()
        values.append([field.get_db_prep_save(default, connection)] * count)
    qn = connection.ops.quote_name
    table = qn(model._meta.db_table)
    names = ", ".join(qn(str(f.column)) for f in fields)
    # Only quoted identifiers and column types from the model's metadata are formatted
    # into the SQL; the values are parameters.
    if connection.vendor == "postgresql":
        # Bound in binary (%b): dumping the arrays as text cost more than the insert.
        arrays = ", ".join(f"%b::{f.cast_db_type(connection)}[]" for f in fields)
        connection.ensure_connection()
        with psycopg.Cursor(connection.connection) as cursor:
            cursor.execute(
                f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays})",  # noqa: S608
                values,
            )
            return int(cursor.rowcount)
    placeholders = ", ".join(["%s"] * len(fields))
    with connection.cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO {table} ({names}) VALUES ({placeholders})",  # noqa: S608
            [[column[i] for column in values] for i in range(count)],
        )
    return count
