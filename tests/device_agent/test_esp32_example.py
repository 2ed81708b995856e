"""The ESP-IDF example application (device_agent/esp32/examples/kws_selftest/) against
the component headers it uses.

Nothing here has ESP-IDF, so the example is never compiled; these checks keep it from
silently drifting from the fleet_ota API: every fo_* function it calls, fo_*_t type,
FO_*/FLEET_OTA_* constant and port field it names must be declared in
components/fleet_ota/include or components/fleet_ota_esp_idf/include, and the project
files must agree with each other (slot labels, Kconfig symbols, dependencies).
"""

import csv
import re
from pathlib import Path

ESP32 = Path(__file__).resolve().parents[2] / "device_agent" / "esp32"
EXAMPLE = ESP32 / "examples" / "kws_selftest"
MAIN = EXAMPLE / "main" / "main.cpp"
HEADER_DIRS = (
    ESP32 / "components" / "fleet_ota" / "include",
    ESP32 / "components" / "fleet_ota_esp_idf" / "include",
)


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.DOTALL)
    return re.sub(r"//[^\n]*", " ", text)


def _headers() -> str:
    files = [h for d in HEADER_DIRS for h in sorted(d.rglob("*.h"))]
    assert files, f"no headers under {HEADER_DIRS}"
    return "\n".join(_strip_comments(h.read_text()) for h in files)


def declared_functions(headers: str) -> set[str]:
    # `name(` outside a function-pointer declarator `(*name)(`
    return set(re.findall(r"(?<!\(\*)(?<!\w)(fo_[a-z0-9_]+)\s*\(", headers))


def declared_types(headers: str) -> set[str]:
    return set(re.findall(r"\b(fo_[a-z0-9_]+_t)\s*;", headers))


def declared_constants(headers: str) -> set[str]:
    return set(re.findall(r"#define\s+((?:FO|FLEET_OTA)_[A-Z0-9_]+)", headers)) | set(
        re.findall(r"^\s*(FO_[A-Z0-9_]+)\s*[,=]", headers, flags=re.MULTILINE)
    )


def undeclared(source: str, headers: str) -> list[str]:
    """Every fo_ call, type and constant in `source` that the headers do not declare."""
    code = _strip_comments(source)
    functions = declared_functions(headers)
    types = declared_types(headers)
    constants = declared_constants(headers)
    missing = []
    for name in sorted(set(re.findall(r"\b(fo_[a-z0-9_]+)\s*\(", code))):
        if name not in functions:
            missing.append(f"function {name}")
    for name in sorted(set(re.findall(r"\b(fo_[a-z0-9_]+_t)\b", code))):
        if name not in types:
            missing.append(f"type {name}")
    for name in sorted(set(re.findall(r"\b((?:FO|FLEET_OTA)_[A-Z0-9_]+)\b", code))):
        if name not in constants:
            missing.append(f"constant {name}")
    # Fields of the ports (fo_ports_t, fo_esp_t) and of fo_slot_info_t it reads or sets.
    fields = set(re.findall(r"\b(?:esp|ports(?:\.\w+)?)\.([a-z_]+)\b", code))
    fields |= set(re.findall(r"\binfo->([a-z_]+)\b", code))
    for name in sorted(fields):
        if not re.search(rf"[\s*]{name}\s*(?:;|\[|\)\s*\()", headers):
            missing.append(f"field {name}")
    return missing


def test_example_uses_only_declared_api() -> None:
    source = MAIN.read_text()
    headers = _headers()
    calls = set(re.findall(r"\b(fo_[a-z0-9_]+)\s*\(", _strip_comments(source)))
    # the example drives the agent through the whole cycle the README describes
    assert {
        "fo_esp_ports_init",
        "fo_agent_start",
        "fo_agent_run",
        "fo_agent_on_desired",
        "fo_agent_on_acks",
        "fo_agent_on_connected",
        "fo_agent_poll",
        "fo_agent_active_slot",
        "fo_agent_telemetry",
    } <= calls
    assert undeclared(source, headers) == []


def test_checker_notices_drift() -> None:
    headers = _headers()
    drifted = (
        "fo_agent_telemetry_v2(&agent, MODEL, names, values, 1);\n"
        "fo_telemetry_t t; x = FO_NOT_A_CODE; ports.selftest.execute = f; info->arm_name;\n"
        "/* fo_in_a_comment(); */ fo_agent_run(&agent);\n"
    )
    assert undeclared(drifted, headers) == [
        "function fo_agent_telemetry_v2",
        "type fo_telemetry_t",
        "constant FO_NOT_A_CODE",
        "field arm_name",
        "field execute",
    ]


def test_project_files_agree() -> None:
    source = _strip_comments(MAIN.read_text())
    top = (EXAMPLE / "CMakeLists.txt").read_text()
    assert "include($ENV{IDF_PATH}/tools/cmake/project.cmake)" in top
    assert "../../components" in top
    main_cmake = (EXAMPLE / "main" / "CMakeLists.txt").read_text()
    for component in ("fleet_ota", "fleet_ota_esp_idf"):
        assert re.search(rf"\b{component}\b", main_cmake)
        assert (ESP32 / "components" / component / "CMakeLists.txt").is_file()
    assert "espressif/esp-tflite-micro" in (EXAMPLE / "main" / "idf_component.yml").read_text()
    defaults = (EXAMPLE / "sdkconfig.defaults").read_text()
    assert 'CONFIG_PARTITION_TABLE_CUSTOM_FILENAME="partitions.csv"' in defaults

    rows = [
        [cell.strip() for cell in row]
        for row in csv.reader((EXAMPLE / "partitions.csv").read_text().splitlines())
        if row and not row[0].startswith("#")
    ]
    data_labels = {row[0] for row in rows if row[1] == "data"}
    assert "nvs" in data_labels
    slots = re.search(r"SLOTS\[\]\s*=\s*\{\{MODEL,\s*\{\"(\w+)\",\s*\"(\w+)\"\}\}\}", source)
    assert slots, "the slot table in main.cpp"
    assert set(slots.groups()) <= data_labels

    kconfig = (EXAMPLE / "main" / "Kconfig.projbuild").read_text()
    defined = set(re.findall(r"^config (\w+)", kconfig, flags=re.MULTILINE))
    used = set(re.findall(r"\bCONFIG_(KWS_\w+)", source))
    assert used
    assert used <= defined


def test_readmes_link_the_example_and_say_it_is_not_compiled() -> None:
    assert "examples/kws_selftest/" in (ESP32 / "README.md").read_text()
    readme = (EXAMPLE / "README.md").read_text()
    assert "Not compiled by this project" in readme
    assert "idf.py set-target esp32s3" in readme
