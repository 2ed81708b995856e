"""Aggregate reads: figures over many rows, computed where the rows are on PostgreSQL and
in Python elsewhere, with the same answer on both.

The one module that chooses between PostgreSQL and the others for a read, as
``fleet.bulk`` is for writes (both are the "database" part of docs/architecture.md: every
server part may import them, they import nothing of the project). One function per kind
of read, each taking a queryset of the rows to read:

- ``summaries``: per group (and time bucket), count, sum, sum of squares, mean, sample
  standard deviation, min, max and p50/p95/p99 of one column;
- ``json_array_counts``: how many entries of a JSON array column carry each combination
  of string members (reported models by name and version, say).

On PostgreSQL each is one statement over the queryset's own SQL (``percentile_cont``,
``jsonb_array_elements``), so no row leaves the database; elsewhere (SQLite, for
development) the rows are read and the figures computed here, interpolating percentiles
as ``percentile_cont`` does. Statements go through ``connection.cursor()``, so Django's
execute wrappers and query logging see them.
"""

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import connection
from django.db.models import QuerySet

PERCENTILES = (0.5, 0.95, 0.99)


def percentile_cont(ordered: Sequence[float], fraction: float) -> float:
    """PostgreSQL's percentile_cont over already sorted values (linear interpolation)."""
    if not ordered:
        raise ValueError("no values")
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def bucket_floor(moment: datetime, seconds: int) -> datetime:
    """The start of the bucket of `seconds` (aligned to the Unix epoch) holding `moment`."""
    epoch = int(moment.timestamp() // seconds * seconds)
    return datetime.fromtimestamp(epoch, tz=UTC)


@dataclass(frozen=True, kw_only=True, slots=True)
class Summary:
    """Figures of the values of one group. `stddev` is NaN below two values; the
    percentiles are NaN when they were not asked for."""

    count: int
    sum: float
    sum_squares: float
    mean: float
    stddev: float
    min: float
    max: float
    p50: float
    p95: float
    p99: float


Key = tuple[Any, ...]


def summaries(
    rows: QuerySet[Any],
    value: str,
    *,
    keys: Sequence[str] = (),
    bucket: tuple[str, int] | None = None,
    percentiles: bool = True,
) -> list[tuple[Key, Summary]]:
    """Per group of `rows` with values, ordered by group: its key and the figures of its
    `value` field.

    A group is a combination of the `keys` fields, preceded, with `bucket` (a datetime
    field and a number of seconds), by the start of that field's bucket (``bucket_floor``).
    Without keys or bucket, all of `rows` are one group, with the key ``()``. Without
    `percentiles`, p50/p95/p99 are NaN and no group's values are sorted.
    """
    columns = [*([bucket[0]] if bucket else []), *keys, value]
    if connection.vendor == "postgresql":
        return _summaries_postgresql(rows, columns, bucket, percentiles)
    return summaries_python(rows, value, keys=keys, bucket=bucket, percentiles=percentiles)


def _summaries_postgresql(
    rows: QuerySet[Any],
    columns: list[str],
    bucket: tuple[str, int] | None,
    percentiles: bool,
) -> list[tuple[Key, Summary]]:
    try:
        inner, inner_params = rows.order_by().values_list(*columns).query.sql_with_params()
    except EmptyResultSet:  # a filter that can match nothing, such as `__in=[]`
        return []
    names = [f"k{i}" for i in range(len(columns) - 1)]
    selected = list(names)
    params: list[Any] = []
    if bucket:
        selected[0] = "to_timestamp(floor(extract(epoch FROM k0) / %s) * %s)"
        params += [bucket[1], bucket[1]]
    quantiles = (
        f"percentile_cont(ARRAY{list(PERCENTILES)}) WITHIN GROUP (ORDER BY v)"
        if percentiles
        else "NULL"
    )
    figures = "count(v), sum(v), sum(v * v), avg(v), stddev_samp(v), min(v), max(v), " + quantiles
    grouped = ", ".join(str(i) for i in range(1, len(names) + 1))
    # Only fixed fragments and generated aliases are formatted into the SQL; the inner
    # query is Django's own with its parameters.
    sql = (
        f"SELECT {', '.join([*selected, figures])} "  # noqa: S608
        f"FROM ({inner}) AS s({', '.join([*names, 'v'])}) "
        "WHERE v IS NOT NULL" + (f" GROUP BY {grouped} ORDER BY {grouped}" if names else "")
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, *inner_params])
        found = cursor.fetchall()
    out = []
    for row in found:
        key, (count, total, squares, mean, stddev, low, high, quantile) = (
            tuple(row[: len(names)]),
            row[len(names) :],
        )
        if not count:
            continue
        p50, p95, p99 = quantile if quantile is not None else (math.nan,) * 3
        out.append(
            (
                key,
                Summary(
                    count=int(count),
                    sum=float(total),
                    sum_squares=float(squares),
                    mean=float(mean),
                    stddev=math.nan if stddev is None else float(stddev),
                    min=float(low),
                    max=float(high),
                    p50=float(p50),
                    p95=float(p95),
                    p99=float(p99),
                ),
            )
        )
    return out


def summaries_python(
    rows: QuerySet[Any],
    value: str,
    *,
    keys: Sequence[str] = (),
    bucket: tuple[str, int] | None = None,
    percentiles: bool = True,
) -> list[tuple[Key, Summary]]:
    """``summaries`` computed here from the rows, on any database (what it does outside
    PostgreSQL; the tests compare the two there)."""
    columns = [*([bucket[0]] if bucket else []), *keys, value]
    groups: dict[Key, list[float]] = {}
    for row in rows.order_by().values_list(*columns).iterator(chunk_size=10_000):
        if row[-1] is None:
            continue
        key = tuple(row[:-1])
        if bucket:
            key = (bucket_floor(key[0], bucket[1]), *key[1:])
        groups.setdefault(key, []).append(float(row[-1]))
    return [
        (key, summary_of(values, percentiles=percentiles)) for key, values in sorted(groups.items())
    ]


def summary_of(values: list[float], *, percentiles: bool = True) -> Summary:
    """The figures of `values` (at least one; sorted in place when `percentiles`), as
    PostgreSQL computes them."""
    n = len(values)
    total = math.fsum(values)
    mean = total / n
    stddev = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    p50 = p95 = p99 = math.nan
    if percentiles:
        values.sort()
        p50, p95, p99 = (percentile_cont(values, p) for p in PERCENTILES)
    return Summary(
        count=n,
        sum=total,
        sum_squares=math.fsum(v * v for v in values),
        mean=mean,
        stddev=stddev,
        min=min(values),
        max=max(values),
        p50=p50,
        p95=p95,
        p99=p99,
    )


def json_array_counts(
    rows: QuerySet[Any],
    field: str,
    *,
    array: str,
    members: Sequence[str],
    by: Sequence[str] = (),
    empty: bool = False,
) -> list[tuple[Key, int]]:
    """How many entries of the JSON array `array` of the JSON `field` of `rows` carry
    each combination of the string `members`: (the `by` fields' values, then the members'
    values) and the count, largest first.

    An entry counts only when it is an object whose `members` are all strings; a document
    without such an array has none. With `empty`, each row without a counted entry counts
    once, its members' values None.
    """
    if connection.vendor == "postgresql":
        return _json_array_counts_postgresql(rows, field, array, members, by, empty)
    return json_array_counts_python(rows, field, array=array, members=members, by=by, empty=empty)


def _json_array_counts_postgresql(
    rows: QuerySet[Any],
    field: str,
    array: str,
    members: Sequence[str],
    by: Sequence[str],
    empty: bool,
) -> list[tuple[Key, int]]:
    try:
        inner, inner_params = rows.order_by().values_list(*by, field).query.sql_with_params()
    except EmptyResultSet:
        return []
    names = [f"b{i}" for i in range(len(by))]
    strings = " AND ".join(["jsonb_typeof(entry -> %s) = 'string'"] * len(members))
    values = ", ".join(["e.entry ->> %s"] * len(members))
    grouped = ", ".join(str(i) for i in range(1, len(names) + len(members) + 1))
    join = "LEFT JOIN LATERAL" if empty else "JOIN LATERAL"
    # Only fixed fragments and generated aliases are formatted into the SQL; member names
    # are parameters.
    sql = (
        f"SELECT {', '.join([*names, values])}, count(*) "  # noqa: S608
        f"FROM ({inner}) AS d({', '.join([*names, 'doc'])}) "
        f"{join} (SELECT entry FROM jsonb_array_elements("
        "CASE WHEN jsonb_typeof(d.doc -> %s) = 'array' THEN d.doc -> %s ELSE '[]'::jsonb END"
        f") AS entry WHERE {strings}) e ON true "
        f"GROUP BY {grouped}"
    )
    params = [*members, *inner_params, array, array, *members]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        found = [(tuple(row[:-1]), int(row[-1])) for row in cursor.fetchall()]
    return _largest_first(found)


def json_array_counts_python(
    rows: QuerySet[Any],
    field: str,
    *,
    array: str,
    members: Sequence[str],
    by: Sequence[str] = (),
    empty: bool = False,
) -> list[tuple[Key, int]]:
    """``json_array_counts`` computed here from the rows, on any database (what it does
    outside PostgreSQL; the tests compare the two there)."""
    counts: dict[Key, int] = {}
    nothing = (None,) * len(members)
    for *grouped, doc in rows.order_by().values_list(*by, field).iterator(chunk_size=2000):
        entries = doc.get(array) if isinstance(doc, dict) else None
        counted = 0
        for entry in entries if isinstance(entries, list) else ():
            if not isinstance(entry, dict):
                continue
            found = tuple(entry.get(member) for member in members)
            if all(isinstance(v, str) for v in found):
                key = (*grouped, *found)
                counts[key] = counts.get(key, 0) + 1
                counted += 1
        if empty and not counted:
            key = (*grouped, *nothing)
            counts[key] = counts.get(key, 0) + 1
    return _largest_first(counts.items())


def _largest_first(counts: Iterable[tuple[Key, int]]) -> list[tuple[Key, int]]:
    # None sorts first within its column, whatever the database returned the rows in.
    return sorted(counts, key=lambda item: (-item[1], [(v is not None, v) for v in item[0]]))
