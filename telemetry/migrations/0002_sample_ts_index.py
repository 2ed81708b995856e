"""A time index on raw samples for the rollup job and retention, chosen per database.

PostgreSQL gets BRIN: samples arrive roughly in time order, so a block-range index a few
pages large finds a time range, and COPY does not pay a B-tree insertion per row. SQLite
has no BRIN and gets a B-tree. The index is not in the model's state on purpose: it
differs by database.
"""

from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps


def _create(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            "CREATE INDEX telemetry_sample_ts_brin ON telemetry_sample "
            "USING brin (ts) WITH (pages_per_range = 32)"
        )
    else:
        schema_editor.execute("CREATE INDEX telemetry_sample_ts ON telemetry_sample (ts)")


def _drop(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    name = (
        "telemetry_sample_ts_brin"
        if schema_editor.connection.vendor == "postgresql"
        else "telemetry_sample_ts"
    )
    schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [("telemetry", "0001_initial")]

    operations = [migrations.RunPython(_create, _drop)]
