"""installed_counts (the overview's and the model page's version counts) counts in SQL on
PostgreSQL what installed_models reads in Python, odd stored documents included."""

import pytest
from django.utils import timezone

from fleet.models import Device
from fleet.selectors import installed_counts, installed_counts_scan

pytestmark = pytest.mark.django_db

REPORTS = [
    {"models": [{"name": "kws", "version": "1.0.0", "slot": "a"}]},
    {"models": [{"name": "kws", "version": "1.0.0"}, {"name": "vad", "version": "0.3.0"}]},
    {"models": [{"name": "kws", "version": "2.0.0"}]},
    {},  # never reported
    {"models": "kws"},  # not an array
    {"models": [{"name": "kws"}]},  # no version
    {"models": [{"name": "kws", "version": 2}, "kws 1.0.0", ["kws"], 7, None]},
    {"models": [{"name": 5, "version": "1.0.0"}, {"version": "1.0.0"}]},
    {"models": [{"name": "kws", "version": "1.0.0"}, {"name": "kws", "version": "1.0.0"}]},
    ["models"],
    "models",
]


def test_sql_counts_match_the_python_reading():
    Device.objects.bulk_create(
        Device(device_id=f"d-{i}", hardware="linux-x86_64-fp32", reported=reported)
        for i, reported in enumerate(REPORTS)
    )
    # A revoked device counts nowhere.
    Device.objects.create(
        device_id="gone",
        hardware="linux-x86_64-fp32",
        reported=REPORTS[0],
        revoked_at=timezone.now(),
    )
    counts, none = installed_counts()
    assert (counts, none) == installed_counts_scan()
    assert counts == {("kws", "1.0.0"): 4, ("vad", "0.3.0"): 1, ("kws", "2.0.0"): 1}
    assert none == 7
