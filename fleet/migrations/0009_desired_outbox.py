"""The bridge's outbox becomes a table of its own (DesiredOutbox), so that neither the
director's nor the bridge's write of a desired state touches an index of the wide row.

Rows behind when this runs are queued; the partial index that found them, and the index
on ``expires_at``, go.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("fleet", "0008_deviceevent_device_index"),
    ]

    operations = [
        migrations.CreateModel(
            name="DesiredOutbox",
            fields=[
                (
                    "desired",
                    models.OneToOneField(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="outbox",
                        serialize=False,
                        to="fleet.desiredstate",
                    ),
                ),
                ("seq", models.PositiveBigIntegerField()),
            ],
        ),
        migrations.RunSQL(
            "INSERT INTO fleet_desiredoutbox (desired_id, seq)"
            " SELECT id, seq FROM fleet_desiredstate WHERE published_seq < seq",
            reverse_sql=migrations.RunSQL.noop,
        ),
        migrations.RemoveIndex(
            model_name="desiredstate",
            name="fleet_desired_behind",
        ),
        migrations.AlterField(
            model_name="desiredstate",
            name="expires_at",
            field=models.DateTimeField(null=True),
        ),
    ]
