"""The devices list (/admin/fleet/device/): filters combined, search, paging, the admin's
actions posted from it, permissions, and hostile query strings (a note on the page or an
empty list, never a server error nor unescaped markup)."""

import re
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from rollout_helpers import HW, HW2, devices, user

from fleet.models import Device, Group, Tag

pytestmark = pytest.mark.django_db
LIST = "/admin/fleet/device/"


def _client(*perms: str) -> Client:
    client = Client()
    client.force_login(user("op", "fleet.view_device", *perms, staff=True))
    return client


def _listed(client: Client, query: str) -> list[str]:
    page = client.get(f"{LIST}?{query}")
    assert page.status_code == 200, query
    return re.findall(
        r'<a href="/admin/fleet/device/\d+/change/">([^<]+)</a>', page.content.decode()
    )


def _fleet() -> None:
    devices(4)
    devices(2, hardware=HW2, prefix="esp")
    lab = Group.objects.create(name="lab")
    red = Tag.objects.create(name="red")
    Device.objects.filter(device_id__in=["dev-00001", "dev-00002", "esp-00000"]).update(online=True)
    for name in ("dev-00001", "esp-00000", "esp-00001"):
        Device.objects.get(device_id=name).groups.add(lab)
    for name in ("dev-00001", "dev-00003", "esp-00000"):
        Device.objects.get(device_id=name).tags.add(red)


def test_filters_combine_with_the_search() -> None:
    _fleet()
    client = _client()
    lab, red = Group.objects.get().pk, Tag.objects.get().pk

    assert _listed(client, "") == [f"dev-0000{i}" for i in range(4)] + ["esp-00000", "esp-00001"]
    assert _listed(client, "online__exact=1") == ["dev-00001", "dev-00002", "esp-00000"]
    assert _listed(client, "online__exact=0&hardware=" + HW2) == ["esp-00001"]
    assert _listed(client, f"groups__id__exact={lab}&tags__id__exact={red}") == [
        "dev-00001",
        "esp-00000",
    ]
    both = f"groups__id__exact={lab}&tags__id__exact={red}&online__exact=1&hardware={HW}"
    assert _listed(client, both) == ["dev-00001"]
    assert _listed(client, both + "&q=00001") == ["dev-00001"]
    assert _listed(client, both + "&q=esp") == []
    # the admin's own spelling of the hardware filter (the overview links with it)
    assert _listed(client, f"hardware__exact={HW2}") == ["esp-00000", "esp-00001"]


def test_sidebar_links_keep_the_other_filters() -> None:
    _fleet()
    page = _client().get(f"{LIST}?online__exact=1&q=dev").content.decode()
    assert f'href="?q=dev&amp;online__exact=1&amp;hardware={HW2}"' in page
    assert 'href="?q=dev"' in page  # "All" of the online filter drops it, keeps the search
    assert "lab" in page
    assert "red" in page
    assert "2 devices" in page


def test_pages_of_a_hundred(monkeypatch: pytest.MonkeyPatch) -> None:
    from ota import device_list

    monkeypatch.setattr(device_list, "PER_PAGE", 2)
    devices(5)
    client = _client()
    assert _listed(client, "") == ["dev-00000", "dev-00001"]
    assert _listed(client, "p=3") == ["dev-00004"]
    assert _listed(client, "p=9") == ["dev-00004"]  # past the end: the last page
    page = client.get(f"{LIST}?p=2&q=dev").content.decode()
    assert 'href="?q=dev&amp;p=1" rel="prev"' in page
    assert 'href="?q=dev&amp;p=3" rel="next"' in page
    assert "page 2 of 3 (5 devices)" in page


@pytest.mark.parametrize(
    ("query", "note"),
    [
        ("groups__id__exact=abc", "groups__id__exact must be a number"),
        ("tags__id__exact=-1", "tags__id__exact must be a number"),
        ("p=x", "p must be a number"),
        ("p=" + "9" * 40, "p must be a number"),
        ("online__exact=maybe", "online__exact must be 1 or 0"),
        ("failing=%3Cscript%3E", "unknown failing filter"),
        ("evil=1", "unknown parameter"),
        ("groups__id__exact=%EF%BC%91", "groups__id__exact must be a number"),  # a wide "1"
    ],
)
def test_bad_values_are_said_and_ignored(query: str, note: str) -> None:
    devices(2)
    page = _client().get(f"{LIST}?{query}")
    assert page.status_code == 200
    html = page.content.decode()
    assert note in html
    assert "<script>" not in html
    assert len(re.findall(r"/admin/fleet/device/\d+/change/", html)) == 2


@pytest.mark.parametrize(
    "query",
    [
        "q=%3Cscript%3Ealert(1)%3C/script%3E",
        "hardware=%27%3B%20DROP%20TABLE%20fleet_device%3B--",
        "q=" + "x" * 5000,
        "groups__id__exact=999999999999999999",
        "q=%25&hardware=%25",
        "o=-1&_facets=True&e=1",
    ],
)
def test_hostile_values_match_nothing_and_are_escaped(query: str) -> None:
    devices(2)
    page = _client().get(f"{LIST}?{query}")
    assert page.status_code == 200
    html = page.content.decode()
    assert "<script>alert" not in html
    if query.startswith("o="):  # the admin's sort (by hardware) and facets: all listed
        assert len(re.findall(r"/admin/fleet/device/\d+/change/", html)) == 2
    else:
        assert "No device matches." in html
    assert Device.objects.count() == 2


def test_revoke_action_from_the_list() -> None:
    two = devices(2)
    client = _client("fleet.change_device")
    page = client.get(LIST).content.decode()
    assert '<option value="revoke">' in page
    assert 'name="_selected_action"' in page
    posted = client.post(
        f"{LIST}?q=dev", {"action": "revoke", "_selected_action": [two[0].pk], "index": "0"}
    )
    assert posted.status_code == 302
    assert Device.objects.get(pk=two[0].pk).revoked_at is not None
    assert Device.objects.get(pk=two[1].pk).revoked_at is None


def test_viewers_list_without_actions_and_cannot_revoke() -> None:
    two = devices(2)
    viewer = _client()
    page = viewer.get(LIST).content.decode()
    assert 'name="_selected_action"' not in page
    assert 'name="action"' not in page
    viewer.post(LIST, {"action": "revoke", "_selected_action": [two[0].pk], "index": "0"})
    assert Device.objects.get(pk=two[0].pk).revoked_at is None

    nobody = Client()
    nobody.force_login(user("nobody", staff=True))
    assert nobody.get(LIST).status_code == 403
    assert Client().get(LIST).status_code == 302  # to the login page


# --- sorting (the admin's ``o``) ------------------------------------------------------------
# For a viewer (no actions) the admin counts device id as column 0; with the action checkbox
# (editors) as column 1.
VIEWER_COLUMNS = {
    "device_id": 0,
    "hardware": 1,
    "online": 3,
    "agent_version": 4,
    "last_seen_at": 5,
    "revoked_at": 6,
}


def _sortable_fleet() -> list[Device]:
    now = timezone.now()
    spec = [  # device id, hardware, online, agent, last seen (minutes ago), revoked
        ("dev-c", HW, False, "", 30, 60),
        ("dev-a", HW, True, "1.2.0", 5, None),
        ("dev-e", HW, True, "0.9.0", 600, None),
        ("dev-b", HW2, False, "1.10.0", None, None),
        ("dev-d", HW2, True, "1.2.0", 5, None),
        ("dev-f", HW2, False, "1.2.0", None, 5),
    ]
    fleet = []
    for device_id, hardware, online, agent, seen, revoked in spec:
        Device.objects.create(
            device_id=device_id,
            hardware=hardware,
            online=online,
            agent_version=agent,
            last_seen_at=None if seen is None else now - timedelta(minutes=seen),
            revoked_at=None if revoked is None else now - timedelta(minutes=revoked),
        )
        fleet.append(Device.objects.get(device_id=device_id))
    return fleet


def _expected(fleet: list[Device], column: str, descending: bool) -> list[str]:
    """Nulls after the others ascending, before them descending; ties by device id."""

    def value(device: Device) -> Any:
        return getattr(device, column)

    by_id = sorted(fleet, key=lambda d: d.device_id)
    if column == "device_id":
        return [d.device_id for d in (by_id[::-1] if descending else by_id)]
    ordered = sorted(
        by_id, key=lambda d: (value(d) is None, value(d)), reverse=descending
    )  # stable: ties stay by device id
    return [d.device_id for d in ordered]


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("column", sorted(VIEWER_COLUMNS))
def test_each_column_sorts_both_ways(column: str, descending: bool) -> None:
    fleet = _sortable_fleet()
    number = VIEWER_COLUMNS[column]
    o = f"-{number}" if descending else str(number)
    expected = _expected(fleet, column, descending)
    assert _listed(_client(), f"o={o}") == expected
    # an editor's list has the action checkbox as column 0, as in the admin's ChangeList
    editor = Client()
    editor.force_login(user("editor", "fleet.view_device", "fleet.change_device", staff=True))
    assert _listed(editor, f"o={'-' if descending else ''}{number + 1}") == expected
    page = _client().get(f"{LIST}?o={o}").content.decode()
    state = "descending" if descending else "ascending"
    assert f'class="sortable column-{column} sorted {state}"' in page
    assert page.count(" sorted ") == 1


def test_headers_link_to_the_admins_sorting() -> None:
    _sortable_fleet()
    page = _client().get(LIST).content.decode()
    # unsorted is by device id: marked, and its header turns it around
    assert 'class="sortable column-device_id sorted ascending"' in page
    assert '<a href="?o=-0">Device id</a>' in page
    assert '<a href="?o=5.0">Last seen</a>' in page
    assert '<th scope="col" class="column-installed">' in page  # not sortable: no link
    assert '<a href="?o=2' not in page

    page = _client().get(f"{LIST}?o=1.-5").content.decode()  # by hardware, then last seen
    assert 'class="sortable column-hardware sorted ascending"' in page
    assert 'class="sortable column-last_seen_at sorted descending"' in page
    assert '<a href="?o=-1.-5">Hardware</a>' in page
    assert '<a href="?o=5.1">Last seen</a>' in page
    assert 'class="sortremove" href="?o=1"' in page  # last seen taken out
    assert 'href="?o=1.5" class="toggle descending"' in page
    assert '<span class="sortpriority" title="Sorting priority: 2">2</span>' in page


def test_several_columns_then_the_device_id() -> None:
    _sortable_fleet()
    # hardware ascending, then last seen descending (never seen first), then device id
    assert _listed(_client(), "o=1.-5") == ["dev-b", "dev-f", "dev-d", "dev-a", "dev-c", "dev-e"]
    # a key after the device id changes nothing; a repeated column counts once
    assert _listed(_client(), "o=-0.1") == ["dev-f", "dev-e", "dev-d", "dev-c", "dev-b", "dev-a"]
    assert _listed(_client(), "o=1.-1.-5") == _listed(_client(), "o=1.-5")


def test_sorting_keeps_filters_and_search_and_they_keep_it() -> None:
    fleet = _sortable_fleet()
    client = _client()
    query = f"q=dev&hardware={HW2}&o=-5"
    expected = [
        i for i in _expected(fleet, "last_seen_at", True) if i in {"dev-b", "dev-d", "dev-f"}
    ]
    assert _listed(client, query) == expected == ["dev-b", "dev-f", "dev-d"]
    assert _listed(client, query + "&online__exact=0") == ["dev-b", "dev-f"]
    page = client.get(f"{LIST}?{query}").content.decode()
    # the headers keep the search and the filters
    assert f'<a href="?q=dev&amp;hardware={HW2}&amp;o=4.-5">Agent version</a>' in page
    # the filters, the clear link and the search keep the sort
    assert f'href="?q=dev&amp;online__exact=1&amp;hardware={HW2}&amp;o=-5"' in page
    assert 'href="?q=dev&amp;o=-5">&#10006; Clear all filters' in page
    assert '<input type="hidden" name="o" value="-5">' in page


def test_sorted_pages_neither_repeat_nor_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    from ota import device_list

    monkeypatch.setattr(device_list, "PER_PAGE", 2)
    _sortable_fleet()
    devices(5)  # never seen, offline, one hardware: ties everywhere
    fleet = list(Device.objects.all())
    client = _client()
    for column, number in VIEWER_COLUMNS.items():
        for o in (str(number), f"-{number}"):
            pages = [_listed(client, f"o={o}&p={p}") for p in range(1, 7)]
            assert [len(p) for p in pages] == [2, 2, 2, 2, 2, 1], o
            assert sum(pages, []) == _expected(fleet, column, o.startswith("-")), o
    page = client.get(f"{LIST}?o=-5&p=2").content.decode()
    assert 'href="?o=-5&amp;p=1" rel="prev"' in page
    assert 'href="?o=-5&amp;p=3" rel="next"' in page


@pytest.mark.parametrize(
    ("o", "note"),
    [
        ("abc", "o must be column numbers"),
        ("%0A", "o must be column numbers"),
        ("5%0A", "o must be column numbers"),
        ("%205", "o must be column numbers"),
        ("1..5", "o must be column numbers"),
        ("--1", "o must be column numbers"),
        ("%3Cscript%3E", "o must be column numbers"),
        ("1." * 40 + "1", "o must be column numbers"),
        ("9" * 30, "o must be column numbers"),
        ("%EF%BC%91", "o must be column numbers"),  # a wide "1"
        ("99", "o: no sortable column 99"),
        ("7", "o: no sortable column 7"),
        ("2", "o: no sortable column 2"),  # installed models: read from JSON, not sorted
        ("-5.2", "o: no sortable column 2"),
    ],
)
def test_bad_sorts_are_said_and_ignored(o: str, note: str) -> None:
    _sortable_fleet()
    page = _client().get(f"{LIST}?o={o}")
    assert page.status_code == 200
    html = page.content.decode()
    assert note in html
    assert "<script>" not in html
    assert _listed(_client(), f"o={o}") == ["dev-a", "dev-b", "dev-c", "dev-d", "dev-e", "dev-f"]
    assert 'name="o"' not in html  # not carried on in the links


def test_empty_sort_is_the_default_without_a_note() -> None:
    _sortable_fleet()
    html = _client().get(f"{LIST}?o=").content.decode()
    assert "errornote" not in html
    assert _listed(_client(), "o=") == ["dev-a", "dev-b", "dev-c", "dev-d", "dev-e", "dev-f"]


def test_columns_are_the_registry_admins() -> None:
    from fleet.admin import DeviceAdmin as RegistryDeviceAdmin
    from ota.device_list import COLUMNS_SHOWN

    assert [c.name for c in COLUMNS_SHOWN] == RegistryDeviceAdmin.list_display
