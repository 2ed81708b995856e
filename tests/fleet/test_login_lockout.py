"""Password logins (the admin) lock out per account and per client address after
FLEET_LOGIN_FAILURE_LIMIT failures, refuse a locked-out attempt before hashing anything,
and show the lockout in the admin, where deleting it lifts it."""

from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.hashers import MD5PasswordHasher
from django.contrib.auth.models import User
from django.test import Client

PASSWORD = "right-horse-battery-staple"  # noqa: S105 - a test account's
LIMIT = getattr(settings, "AXES_FAILURE_LIMIT", 5)


@pytest.fixture(autouse=True)
def _fast_hashing(settings: Any) -> None:
    # The hashes themselves are not under test here, only whether one is computed.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def operator(db: None) -> User:
    return User.objects.create_superuser("operator", "op@example.com", PASSWORD)


def _login(username: str, password: str, address: str = "192.0.2.1", **headers: str) -> Any:
    return Client(REMOTE_ADDR=address).post(
        "/admin/login/?next=/admin/",
        {"username": username, "password": password},
        headers=headers,
    )


def _logged_in(response: Any) -> bool:
    return response.status_code == 302 and response["Location"] == "/admin/"


def test_the_right_password_after_too_many_wrong_ones_is_refused(operator: User) -> None:
    # given an attacker who guessed wrong up to the limit
    for n in range(LIMIT):
        assert not _logged_in(_login("operator", f"guess-{n}"))

    # when the right password comes next
    response = _login("operator", PASSWORD)

    # then the account is locked out
    assert not _logged_in(response)
    assert response.status_code == 429


def test_the_account_is_locked_for_every_client(operator: User) -> None:
    # given wrong guesses spread over many addresses
    for n in range(LIMIT):
        _login("operator", f"guess-{n}", address=f"198.51.100.{n}")

    # then the account is locked from a fresh address as well
    assert _login("operator", PASSWORD, address="203.0.113.5").status_code == 429


def test_a_client_is_locked_for_every_account(operator: User) -> None:
    # given one address guessing a different account each time
    for n in range(LIMIT):
        _login(f"user-{n}", "guess", address="198.51.100.1")

    # then it cannot log in to the operator's account either
    assert not _logged_in(_login("operator", PASSWORD, address="198.51.100.1"))
    # while the operator, elsewhere, can
    assert _logged_in(_login("operator", PASSWORD, address="203.0.113.5"))


def test_forwarded_for_does_not_choose_the_client_address(operator: User) -> None:
    for n in range(LIMIT):
        _login(f"user-{n}", "guess", address="198.51.100.1", X_Forwarded_For=f"10.1.1.{n}")

    assert not _logged_in(
        _login("operator", PASSWORD, address="198.51.100.1", X_Forwarded_For="10.9.9.9")
    )


def test_a_locked_out_attempt_hashes_no_password(
    operator: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an account that is locked out
    for n in range(LIMIT):
        _login("operator", f"guess-{n}")
    # and a count of password hashing (checking a password hashes it)
    hashed: list[str] = []
    encode = MD5PasswordHasher.encode

    def counting(self: MD5PasswordHasher, password: str, *args: Any, **kwargs: Any) -> str:
        hashed.append(password)
        return encode(self, password, *args, **kwargs)

    monkeypatch.setattr(MD5PasswordHasher, "encode", counting)
    assert _login("someone-else", "x", address="203.0.113.9").status_code == 200
    assert hashed  # the count sees an attempt that is not locked out
    hashed.clear()

    # when more attempts come
    for _ in range(3):
        assert _login("operator", "another-guess").status_code == 429

    # then none of them cost a hash
    assert hashed == []


def test_the_admin_shows_the_lockout_and_deleting_it_lifts_it(operator: User) -> None:
    from axes.models import AccessAttempt

    # given a locked-out account
    for n in range(LIMIT):
        _login("operator", f"guess-{n}", address=f"198.51.100.{n}")
    assert _login("operator", PASSWORD).status_code == 429

    # when another operator looks at the access attempts in the admin
    other = User.objects.create_superuser("second", "s@example.com", "x")
    admin = Client()
    admin.force_login(other)
    listing = admin.get("/admin/axes/accessattempt/")
    assert listing.status_code == 200
    assert b"operator" in listing.content

    # and deletes them
    ids = [str(pk) for pk in AccessAttempt.objects.values_list("pk", flat=True)]
    deleted = admin.post(
        "/admin/axes/accessattempt/",
        {"action": "delete_selected", "_selected_action": ids, "post": "yes"},
    )
    assert deleted.status_code == 302

    # then the operator can log in again
    assert not AccessAttempt.objects.exists()
    assert _logged_in(_login("operator", PASSWORD))


def test_behind_a_trusted_proxy_each_forwarded_client_is_counted(
    operator: User, settings: Any
) -> None:
    settings.FLEET_TRUSTED_PROXIES = 1
    proxy = "10.0.0.1"
    # given one client behind the proxy guessing accounts, spoofing the left entries
    for n in range(LIMIT):
        _login(f"user-{n}", "guess", address=proxy, X_Forwarded_For=f"10.1.1.{n}, 198.51.100.7")

    # then that client is locked out, and the operator behind the same proxy is not
    locked = _login("operator", PASSWORD, address=proxy, X_Forwarded_For="198.51.100.7")
    assert locked.status_code == 429
    assert _logged_in(_login("operator", PASSWORD, address=proxy, X_Forwarded_For="198.51.100.8"))
