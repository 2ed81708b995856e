"""The one private member of python-tuf the agent uses, kept here and nowhere else.

The agent judges metadata expiry against max(clock, last trusted time), so a device whose
clock was set back still refuses frozen metadata (docs/security.md). ngclient fixes the
time of an update to the system clock when an `Updater` is made and has no public
argument for it: `TrustedMetadataSet.reference_time`, reached through the Updater's
`_trusted_set`, is read by every expiry check of the refresh and of the delegated roles
loaded by `get_targetinfo()`. Re-checking expiry from outside with the public metadata API
would repeat ngclient's walk of the delegations, where a missed role is a frozen-metadata
attack let through, so this stays.

pyproject.toml pins tuf to exactly TUF_PINNED; tests/device_agent/test_tuf_reference_time.py
fails when the installed python-tuf is another version or stops honouring the attribute.
"""

from datetime import datetime

from tuf.ngclient import Updater

TUF_PINNED = "7.0.1"


def reference_time_set(updater: Updater, when: datetime) -> None:
    """Make `updater` judge expiry at `when` (timezone-aware); call before `refresh()`."""
    if when.tzinfo is None:
        raise ValueError("the reference time must be timezone-aware")
    trusted_set = getattr(updater, "_trusted_set", None)
    if trusted_set is None or not hasattr(trusted_set, "reference_time"):
        raise RuntimeError(
            f"python-tuf changed: Updater._trusted_set.reference_time is gone (the agent is "
            f"tested with tuf {TUF_PINNED})"
        )
    trusted_set.reference_time = when
