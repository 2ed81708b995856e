"""PostgreSQL storage parameters set by migrations (a no-op on other databases)."""

from typing import Any

from django.db import migrations


def fillfactor(app_label: str, model: str, percent: int) -> migrations.RunPython:
    """A migration operation that sets ``model``'s table fill factor to ``percent`` (and
    back to PostgreSQL's default of 100 when reversed): the share of each page inserts
    fill, leaving the rest for new versions of the page's rows."""

    def set_to(value: int) -> Any:
        def run(apps: Any, schema_editor: Any) -> None:
            if schema_editor.connection.vendor != "postgresql":
                return
            table = schema_editor.quote_name(apps.get_model(app_label, model)._meta.db_table)
            schema_editor.execute(f"ALTER TABLE {table} SET (fillfactor = {int(value)})")

        return run

    return migrations.RunPython(set_to(percent), set_to(100))
