"""Bulk writes: many rows of one model in one statement, the same on every database.

The one module that chooses between PostgreSQL and the others for a write (the
"database" part of docs/architecture.md: every server part may import it, it imports
nothing of the project). One function per kind of write:

- ``columns_update`` / ``rows_update``: each row, by primary key, gets its own values;
- ``columns_insert``: new rows, the fields not named taking their defaults;
- ``columns_insert_new``: the same, skipping rows that collide with a stored one, and
  returning columns of the rows it inserted;
- ``columns_upsert``: insert, or on a conflict on ``unique`` update the named fields;
- ``rows_copy``: append many rows given as tuples (telemetry samples): binary COPY;
- ``delete_returning``: delete the rows matching, returning a column of each;
- ``notify``: wake listeners (PostgreSQL NOTIFY) when the transaction commits.

and ``filter_in`` for the reads that select the rows to write.

On PostgreSQL each write is one statement whatever the number of rows: one array per
column, bound by the server in binary, and ``unnest()`` of them. Django's bulk_update
builds a ``CASE WHEN pk = ...`` per field and row and bulk_create a model instance per
row; the client-side binding of Django's own cursor spells every array element out as a
literal, which costs more than the statement. Elsewhere (SQLite, for development) an
``executemany`` or a multi-row VALUES.

Every statement goes through a Django cursor wrapper on the connection (``connection.
cursor()`` where binding is client-side, ``_cursor(binary=True)`` for the server-side
binding), so ``connection.execute_wrapper``, ``CaptureQueriesContext`` and
``connection.queries`` see it, and errors are Django's. The one exception is
``rows_copy``'s COPY on PostgreSQL, which psycopg streams outside ``execute`` (Django's
wrappers have no hook for it); its errors are still Django's.
"""

from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from django.db import connection, models
from django.db.backends.utils import CursorWrapper
from django.db.models import F, Lookup, Model, QuerySet
from django.utils import timezone


def _postgresql() -> bool:
    return connection.vendor == "postgresql"


@contextmanager
def _cursor(*, binary: bool) -> Iterator[CursorWrapper]:
    """A cursor of the default connection, wrapped by Django as ``connection.cursor()``
    wraps its own (execute wrappers, query logging, error translation).

    ``binary``: a psycopg cursor that binds parameters on the server, so ``%b`` sends an
    array in binary; Django's own cursor binds on the client, as text literals.
    """
    if not binary:
        with connection.cursor() as cursor:
            yield cursor
        return
    import psycopg  # PostgreSQL only

    connection.ensure_connection()
    raw = psycopg.Cursor(connection.connection)
    # What connection.cursor() does with the cursor it creates (the stubs type the
    # argument as the wrapper; Django passes the DB-API cursor).
    if connection.queries_logged:
        wrapped: CursorWrapper = connection.make_debug_cursor(raw)  # type: ignore[arg-type]
    else:
        wrapped = connection.make_cursor(raw)  # type: ignore[arg-type]
    with wrapped as cursor:
        yield cursor


# --- reads --------------------------------------------------------------------------


class _AnyOf(Lookup):
    """``lhs = ANY(%s)`` with the values as one array parameter (PostgreSQL).

    ``pk__in`` writes one placeholder per value, and psycopg's client-side binding parses
    such a statement again on every call (it caches short statements only): with a
    thousand pks per batch that parse cost as much as the query.
    """

    lookup_name = "any_of"  # not registered: built directly by filter_in
    prepare_rhs = False

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:  # type: ignore[override]
        lhs, params = self.process_lhs(compiler, connection)
        if all(isinstance(value, int) for value in self.rhs):
            # The array as one text literal: psycopg dumps a list element by element.
            literal = "{" + ",".join(str(int(value)) for value in self.rhs) + "}"
            return f"{lhs} = ANY(%s::bigint[])", [*params, literal]
        # Text (device ids): psycopg quotes the list as one array value.
        return f"{lhs} = ANY(%s::text[])", [*params, [str(value) for value in self.rhs]]


def filter_in[M: Model](
    queryset: QuerySet[M], field: str, values: Sequence[int] | Sequence[str]
) -> QuerySet[M]:
    """``queryset.filter(<field>__in=values)``, as one array parameter on PostgreSQL."""
    if not values:
        return queryset.none()
    if _postgresql():
        return queryset.filter(_AnyOf(F(field), values))
    return queryset.filter(**{f"{field}__in": values})


# --- writes -------------------------------------------------------------------------


def _fields(
    model: type[models.Model], names: Sequence[str], *, key: bool = False
) -> list[models.Field[Any, Any]]:
    """The concrete fields named; the primary key too if ``key`` (an insert may name it)."""
    fields = [model._meta.get_field(name) for name in names]
    concrete = [
        f
        for f in fields
        if isinstance(f, models.Field) and f.concrete and (key or not f.primary_key)
    ]
    if len(concrete) != len(fields):
        what = "concrete fields" if key else "concrete, non-key fields"
        raise ValueError(f"only {what} of {model._meta.label}: {names}")
    return concrete


def _table(model: type[models.Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _column(field: models.Field[Any, Any]) -> str:
    return connection.ops.quote_name(str(field.column))


def _prepared(
    field: models.Field[Any, Any],
    values: Sequence[object],
    json_text: Collection[str],
    as_is: bool = False,
) -> list[Any]:
    if field.name in json_text:
        return [None if v is None else str(v) for v in values]
    if as_is and _postgresql():
        return list(values)
    prep = field.get_db_prep_save
    return [prep(v, connection) for v in values]


def _array(field: models.Field[Any, Any], json_text: Collection[str]) -> str:
    """The binary array parameter of ``field``'s column (PostgreSQL); JSON given as text
    travels as text and becomes the column's type in the statement."""
    kind = "text" if field.name in json_text else field.cast_db_type(connection)
    return f"%b::{kind}[]"


def _column_value(field: models.Field[Any, Any], source: str, json_text: Collection[str]) -> str:
    if field.name in json_text:
        return f"{source}::{field.db_type(connection)}"
    return source


def columns_update(
    model: type[models.Model],
    pks: Sequence[object],
    columns: Mapping[str, Sequence[object]],
    *,
    json_text: Collection[str] = (),
    as_is: bool = False,
) -> int:
    """Set, for each ``pks[i]``, every field ``name`` to ``columns[name][i]``; rows updated.

    Fields with ``auto_now`` not named get the current time, as ``save()`` gives them
    (``bulk_update`` leaves them). The fields in ``json_text`` take their values as JSON
    text already encoded (a signed payload stored as it was signed). Rows are written in
    primary key order, one lock order for concurrent writers.

    ``as_is``: the values are ints, strings, bytes and aware datetimes, which psycopg
    takes as they are; on PostgreSQL they skip the fields' ``get_db_prep_save`` (a tenth
    of the director's write per row).
    """
    if not pks:
        return 0
    fields = _fields(model, list(columns))
    for field in fields:
        if len(columns[field.name]) != len(pks):
            raise ValueError(f"{field.name}: {len(columns[field.name])} values for {len(pks)} rows")
    order = sorted(range(len(pks)), key=lambda i: pks[i])  # type: ignore[arg-type,return-value]
    values: list[list[Any]] = [[pks[i] for i in order]]
    for field in fields:
        column = columns[field.name]
        values.append(_prepared(field, [column[i] for i in order], json_text, as_is))
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
    table, key = _table(model), _column(pk)
    names = [_column(f) for f in fields]
    # Only quoted identifiers and column types from the model's metadata are formatted
    # into the SQL; the values are parameters.
    if _postgresql():
        arrays = ", ".join([_array(pk, ()), *(_array(f, json_text) for f in fields)])
        assignments = ", ".join(
            f"{name} = {_column_value(f, f'v.{name}', json_text)}"
            for name, f in zip(names, fields, strict=True)
        )
        with _cursor(binary=True) as cursor:
            cursor.execute(
                f"UPDATE {table} SET {assignments} "  # noqa: S608
                f"FROM unnest({arrays}) AS v({key}, {', '.join(names)}) "
                f"WHERE {table}.{key} = v.{key}",
                values,
            )
            return int(cursor.rowcount)
    assignments = ", ".join(f"{name} = %s" for name in names)
    with _cursor(binary=False) as cursor:
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


def _insert_values(
    model: type[models.Model], columns: Mapping[str, Sequence[object]], as_is: bool = False
) -> tuple[list[models.Field[Any, Any]], list[list[Any]], int]:
    """Every concrete field but an unnamed key, and its values: those named, else the
    default."""
    named = _fields(model, list(columns), key=True)
    lengths = {len(columns[f.name]) for f in named}
    if len(lengths) > 1:
        raise ValueError(f"columns of different lengths: {sorted(lengths)}")
    count = lengths.pop() if lengths else 0
    now = timezone.now()
    fields: list[models.Field[Any, Any]] = []
    values: list[list[Any]] = []
    for field in model._meta.concrete_fields:
        if field.primary_key and field.name not in columns:
            continue  # the database numbers the row
        fields.append(field)
        if field.name in columns:
            values.append(_prepared(field, columns[field.name], (), as_is))
            continue
        if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            default: object = now
        else:
            default = field.get_default()
        values.append([field.get_db_prep_save(default, connection)] * count)
    return fields, values, count


def _insert(
    model: type[models.Model],
    columns: Mapping[str, Sequence[object]],
    suffix: str,
    returning: bool,
    as_is: bool = False,
) -> tuple[int, list[tuple[Any, ...]]]:
    fields, values, count = _insert_values(model, columns, as_is)
    if not count:
        return 0, []
    table, names = _table(model), ", ".join(_column(f) for f in fields)
    # Only quoted identifiers and column types from the model's metadata are formatted
    # into the SQL; the values are parameters.
    if _postgresql():
        arrays = ", ".join(_array(f, ()) for f in fields)
        with _cursor(binary=True) as cursor:
            cursor.execute(
                f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}){suffix}",  # noqa: S608
                values,
            )
            return int(cursor.rowcount), cursor.fetchall() if returning else []
    rows = [[column[i] for column in values] for i in range(count)]
    placeholders = f"({', '.join(['%s'] * len(fields))})"
    with _cursor(binary=False) as cursor:
        if not returning:
            cursor.executemany(
                f"INSERT INTO {table} ({names}) VALUES {placeholders}{suffix}",  # noqa: S608
                rows,
            )
            return count, []
        cursor.execute(
            f"INSERT INTO {table} ({names}) "  # noqa: S608
            f"VALUES {', '.join([placeholders] * count)}{suffix}",
            [value for row in rows for value in row],
        )
        found = cursor.fetchall()
        return len(found), found


def columns_insert(model: type[models.Model], columns: Mapping[str, Sequence[object]]) -> int:
    """INSERT one row per index of ``columns`` (field name -> values; all of one length):
    the fields named take their values, every other concrete field but the key its
    default (``auto_now``/``auto_now_add``: the current time), as ``save()`` gives them.
    Returns the number of rows; defaults are evaluated once, so callables must not
    stand for per-row values."""
    count, _ = _insert(model, columns, "", returning=False)
    return count


def columns_insert_new(
    model: type[models.Model],
    columns: Mapping[str, Sequence[object]],
    *,
    returning: Sequence[str],
    as_is: bool = False,
) -> list[tuple[Any, ...]]:
    """``columns_insert``, except the rows that collide with a stored one on any unique
    constraint, which are skipped; the ``returning`` fields of the rows inserted.

    One statement: keep the rows few enough for the database's parameter limit
    (SQLite: 32 766) where the statement lists them. ``as_is`` as for ``columns_update``."""
    if not connection.features.can_return_rows_from_bulk_insert:
        raise NotImplementedError(f"{connection.vendor}: INSERT ... RETURNING")
    returned = ", ".join(_column(f) for f in _fields(model, returning, key=True))
    suffix = f" ON CONFLICT DO NOTHING RETURNING {returned}"
    _, rows = _insert(model, columns, suffix, True, as_is)
    return rows


def columns_upsert(
    model: type[models.Model],
    columns: Mapping[str, Sequence[object]],
    *,
    unique: str | Sequence[str],
    update: Sequence[str],
    as_is: bool = False,
) -> int:
    """``columns_insert``, except that a row whose ``unique`` field (or fields, those of a
    unique constraint) collides with a stored one updates that row's ``update`` fields
    instead; rows written. ``as_is`` as for ``columns_update``."""
    names = [unique] if isinstance(unique, str) else list(unique)
    target = ", ".join(_column(f) for f in _fields(model, names, key=True))
    changed = ", ".join(f"{c} = EXCLUDED.{c}" for c in map(_column, _fields(model, update)))
    suffix = f" ON CONFLICT ({target}) DO UPDATE SET {changed}"
    count, _ = _insert(model, columns, suffix, False, as_is)
    return count


def rows_copy(
    model: type[models.Model],
    columns: Sequence[str],
    types: Sequence[str],
    rows: Sequence[Sequence[Any]],
) -> None:
    """Append ``rows`` (tuples of database values in the order of ``columns``, which are
    column names of ``model``'s table) in the current transaction. PostgreSQL: a binary
    COPY, ``types`` the PostgreSQL type of each column; elsewhere an executemany, with
    datetimes adapted once per distinct value."""
    if not rows:
        return
    table = _table(model)
    names = ", ".join(connection.ops.quote_name(c) for c in columns)
    if _postgresql():
        with (
            _cursor(binary=False) as cursor,
            connection.wrap_database_errors,
            cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.set_types(list(types))
            write_row = copy.write_row
            for row in rows:
                write_row(row)
        return
    adapt = connection.ops.adapt_datetimefield_value
    as_text: dict[datetime, str] = {}

    def adapted(value: Any) -> Any:
        if not isinstance(value, datetime):
            return value
        text = as_text.get(value)
        if text is None:
            text = as_text[value] = str(adapt(value))
        return text

    placeholders = ", ".join(["%s"] * len(columns))
    with _cursor(binary=False) as cursor:
        cursor.executemany(
            f"INSERT INTO {table} ({names}) VALUES ({placeholders})",  # noqa: S608
            [[adapted(value) for value in row] for row in rows],
        )


def delete_returning(
    model: type[models.Model], *, where: Mapping[str, object], returning: str
) -> list[Any]:
    """Delete the rows whose fields equal ``where``'s values; ``returning`` of each, in one
    statement (``DELETE ... RETURNING``), so nothing committed after it is taken. Without
    RETURNING, by the keys read first."""
    fields = _fields(model, list(where), key=True)
    condition = " AND ".join(f"{_column(f)} = %s" for f in fields)
    params = [f.get_db_prep_value(where[f.name], connection) for f in fields]
    returned = _column(_fields(model, [returning], key=True)[0])
    if connection.features.can_return_rows_from_bulk_insert:  # RETURNING at all
        with _cursor(binary=False) as cursor:
            cursor.execute(
                f"DELETE FROM {_table(model)} WHERE {condition} RETURNING {returned}",  # noqa: S608
                params,
            )
            return [value for (value,) in cursor.fetchall()]
    rows = list(model._default_manager.filter(**where).values_list("pk", returning))
    for start in range(0, len(rows), 500):
        model._default_manager.filter(pk__in=[pk for pk, _ in rows[start : start + 500]]).delete()
    return [value for _, value in rows]


def notify(channel: str) -> None:
    """Wake the listeners of ``channel`` when the current transaction commits (PostgreSQL
    NOTIFY, dropped on rollback); elsewhere nothing listens, and listeners poll."""
    if _postgresql():
        with _cursor(binary=False) as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [channel])


# --- the bridge: its clock, wake-ups and leader lock ---------------------------------
# Not bulk writes, but the same choice between the databases: the bridge's outbox
# (fleet/bridge/outbox.py) asks these rather than looking at the database vendor.


def database_now() -> datetime:
    """The database's clock (PostgreSQL ``clock_timestamp()``): processes that record
    times compared with each other's read one clock. Elsewhere (SQLite: one process)
    this process's."""
    if not _postgresql():
        return timezone.now()
    with _cursor(binary=False) as cursor:
        cursor.execute("SELECT clock_timestamp()")
        row = cursor.fetchone()
    at: datetime = row[0]
    return at


def listening_supported() -> bool:
    """Whether the database wakes listeners (``notify``) and has session locks
    (``Listening``): PostgreSQL. Elsewhere a single process polls."""
    return _postgresql()


class Listening:
    """A connection of its own, in autocommit, for LISTEN and session advisory locks
    (PostgreSQL; see ``listening()``). A lock taken is held until the connection closes."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def try_lock(self, key: int) -> bool:
        """Take the session advisory lock ``key`` unless another session holds it."""
        row = self._raw.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()
        return bool(row is not None and row[0])

    def listen(self, channel: str) -> None:
        """Receive the notifications of ``channel`` (``notify``) from now on."""
        from psycopg import sql

        self._raw.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    def notifications(self, timeout: float) -> Iterator[str]:
        """The channels of the notifications that arrive within ``timeout`` seconds."""
        for notification in self._raw.notifies(timeout=timeout):
            yield notification.channel


@contextmanager
def listening() -> Iterator[Listening]:
    """A new connection with the default connection's parameters, for ``Listening``;
    closed on leaving, which releases its locks. PostgreSQL only
    (``listening_supported()``)."""
    import psycopg  # PostgreSQL only

    params = connection.get_connection_params()
    with psycopg.connect(**params, autocommit=True) as raw:
        yield Listening(raw)
