"""Leave room on fleet_desiredstate's pages for the next version of each row
(PostgreSQL only).

A device's desired state is rewritten twice per change: by the director (a new seq,
payload and envelope) and by the bridge's outbox (published_seq once it went out). Both
change an indexed column (seq and the outbox index's condition), so neither is a
heap-only update; but with free space on the page PostgreSQL still writes the new version
there instead of on another page. At the default fill factor of 100 a page holds five
rows of about 1.6 KB and is full from the start, so every write moved its row to another
page, and the table grew by four fifths of its size over two changes of a fifth of the
fleet. At 50 it does not grow (tests/fleet/test_table_storage.py).
The table takes about twice the pages.
"""

from django.db import migrations

from fleet.storage import fillfactor


class Migration(migrations.Migration):
    dependencies = [("fleet", "0006_device_fillfactor")]

    operations = [fillfactor("fleet", "DesiredState", 50)]
