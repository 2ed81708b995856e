"""Leave room on fleet_device's pages for HOT updates (PostgreSQL only).

Every report rewrites a device's row (its reported state, sequence number and last
seen time), and none of those columns is indexed: with free space on the page
PostgreSQL updates the row in place (a heap-only tuple), without a new entry in each of
the table's indexes. At the default fill factor of 100 the pages of a freshly enrolled
fleet are full, and every update moved the row to another page and touched every index.
tests/fleet/test_table_storage.py checks that such updates stay in place. The table takes twice the pages; it is the smallest of the
busy ones (one row per device, events and telemetry are many per device).
"""

from django.db import migrations

from fleet.storage import fillfactor


class Migration(migrations.Migration):
    dependencies = [("fleet", "0005_alter_desiredstate_published_seq")]

    operations = [fillfactor("fleet", "Device", 50)]
