"""No code of the project reaches into the private members of paho-mqtt, python-tuf or
prometheus_client, except in the modules listed here with the reason (issue 19): a
private member can change in any release without notice."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("device_agent", "fleet", "ota", "telemetry")
LIBRARIES = ("paho", "tuf", "prometheus_client")

# Private attributes of those libraries the project has used; our own classes do not use
# these names.
PRIVATE_NAMES = frozenset(
    {
        # prometheus_client
        "_buckets",
        "_sum",
        "_upper_bounds",
        "_name",
        "_value",
        "_labelnames",
        "_metrics",
        "_use_created",
        # python-tuf
        "_trusted_set",
        "_proxy_env",
        "_load_targets",
        "_download_metadata",
        # paho-mqtt
        "_OutPacket",
        "_packet_queue",
        "_packet_write",
        "_handle_pubackcomp",
        "_messages_reconnect_reset_out",
        "_out_messages",
        "_out_message_mutex",
        "_out_packet",
        "_in_packet",
        "_create_socket",
        "_do_on_publish",
        "_max_inflight_messages",
        "_inflight_messages",
        "_sock_send",
        "_sockpairW",
        "_send_publish",
        "_send_puback",
        "_update_inflight",
    }
)

ALLOWED = {
    # the one python-tuf private use, pinned exactly and tested
    # (tests/device_agent/test_tuf_reference_time.py)
    "device_agent/tuf_reference_time.py": {"_trusted_set"},
}


def _private_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] in LIBRARIES and any(p.startswith("_") for p in parts[1:])


def names_used(source: str, filename: str = "<source>") -> set[str]:
    """The private members of the libraries that `source` uses."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE_NAMES:
            names.add(node.attr)
        elif isinstance(node, ast.FunctionDef) and node.name in PRIVATE_NAMES:
            names.add(node.name)  # an override
        elif isinstance(node, ast.Constant) and node.value in PRIVATE_NAMES:
            names.add(str(node.value))  # getattr(obj, "_name")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if _private_module(node.module):
                names.add(node.module)
            elif node.module.split(".")[0] in LIBRARIES:
                names |= {a.name for a in node.names if a.name.startswith("_")}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if _private_module(a.name)}
    return names


def uses() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if names := names_used(path.read_text(), rel):
                found[rel] = names
    return found


def test_no_private_member_of_a_library_outside_the_listed_modules() -> None:
    unexpected = {
        path: names - ALLOWED.get(path, set())
        for path, names in uses().items()
        if names - ALLOWED.get(path, set())
    }
    assert not unexpected


def test_the_checker_finds_the_listed_uses() -> None:
    found = uses()
    assert found["device_agent/tuf_reference_time.py"] == {"_trusted_set"}


def test_the_checker_sees_what_the_bridge_used_of_paho() -> None:
    # The bridge uses paho's public API only (fleet/bridge/client.py): none is listed.
    assert "fleet/bridge/client.py" not in uses()
    source = (
        "from paho.mqtt.client import _OutPacket\n"
        "class C(mqtt.Client):\n"
        "    def _packet_write(self):\n"
        "        self._out_packet.append(getattr(self, '_in_packet'))\n"
    )
    assert names_used(source) == {"_OutPacket", "_packet_write", "_out_packet", "_in_packet"}
