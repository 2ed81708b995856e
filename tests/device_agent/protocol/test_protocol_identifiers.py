"""The identifier rules themselves: the documented alphabet passes, nothing else does."""

import argparse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from identifier_strategies import invalid, valid

from device_agent.protocol import identifiers
from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.identifiers import KINDS, InvalidIdentifier, rollout_number

PROPERTY = settings(max_examples=50, deadline=None, database=None)
ALLOWED_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:+-")


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
@PROPERTY
@given(data=st.data())
def test_valid_identifiers_pass(kind, data):
    value = data.draw(valid(kind))
    assert kind.check(value, field="f") == value
    assert set(value) <= ALLOWED_CHARS  # ASCII, no separator, no markup
    assert value not in ("", ".", "..")
    assert len(value) <= kind.max_length


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
@PROPERTY
@given(data=st.data())
def test_anything_else_is_refused_with_the_stable_code(kind, data):
    value = data.draw(invalid(kind))
    with pytest.raises(InvalidIdentifier) as refused:
        kind.check(value, field="the_field")
    assert refused.value.code == kind.code
    assert refused.value.code in (ErrorCode.INVALID_IDENTIFIER, ErrorCode.INVALID_VERSION)
    assert refused.value.detail.startswith("the_field: ")
    with pytest.raises(argparse.ArgumentTypeError):
        kind.argument()(value)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_the_documented_example_is_valid(kind):
    assert kind.is_valid(kind.example)


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        (identifiers.VERSION, "1.3.0\n"),  # "$" matched before the newline
        (identifiers.VERSION, "1.٣.0"),  # "\d" took Arabic-Indic digits
        (identifiers.HARDWARE, "esp32\n"),
        (identifiers.ARTIFACT_FORMAT, "onnx\n"),
        (identifiers.FILENAME, "model.onnx\n"),
        (identifiers.FILENAME, "-rf"),
        (identifiers.MODEL_NAME, "kws\n"),
        (identifiers.MODEL_NAME, "targets"),  # a TUF role name
        (identifiers.ROLLOUT_ID, "²"),  # isdigit() but not int()
        (identifiers.ROLLOUT_ID, "r-0"),
        (identifiers.ROLLOUT_ID, "1" * 19),  # beyond a bigint
        (identifiers.GROUP_NAME, "../../etc/passwd"),
        (identifiers.GROUP_NAME, "a/b"),
        (identifiers.GROUP_NAME, "<script>"),
        (identifiers.DEVICE_ID, "dev-1\n"),
    ],
)
def test_the_reported_cases_are_refused(kind, value):
    assert not kind.is_valid(value)


def test_non_strings_are_refused():
    for kind in KINDS:
        for value in (None, 5, 1.5, ["kws"], b"kws"):
            assert not kind.is_valid(value)


def test_rollout_number_takes_ascii_digits_only():
    assert rollout_number("r-42") == 42
    assert rollout_number("42") == 42
    for bad in ("²", "r-²", "٤٢", "r-42\n", "0", "r-", "", "r-1" + "0" * 18, None):
        assert rollout_number(bad) is None


def test_patterns_are_ascii_and_never_use_dollar_anchors():
    for kind in KINDS:
        for loose in ("$", "\\d", "\\w", "\\s"):
            assert loose not in kind.pattern
        assert kind.pattern.isascii()


@pytest.mark.fuzz
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
@settings(PROPERTY, max_examples=3000)
@given(value=st.text(max_size=80) | st.binary(max_size=80).map(lambda b: b.decode("latin-1")))
def test_fuzz_only_the_alphabet_passes(kind, value):
    """The slow set (.ci/run, -m fuzz): arbitrary text against every rule."""
    if kind.is_valid(value):
        assert set(value) <= ALLOWED_CHARS
        assert kind.regex.fullmatch(value)
        assert "\n" not in value
    else:
        with pytest.raises(InvalidIdentifier):
            kind.check(value, field="f")
