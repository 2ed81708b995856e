"""The devices list (/admin/fleet/device/): filters combined, search, paging, the admin's
actions posted from it, permissions, and hostile query strings (a note on the page or an
empty list, never a server error nor unescaped markup)."""

import re

import pytest
from django.test import Client
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
    if query.startswith("o="):  # the admin's sorting and facets: ignored, all listed
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
