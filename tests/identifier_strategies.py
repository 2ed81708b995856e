"""Hypothesis strategies for identifiers: valid ones, and hostile ones outside the alphabet."""

from hypothesis import strategies as st

from device_agent.protocol.identifiers import IdentifierKind

HOSTILE = (
    "",
    " ",
    "/",
    "a/b",
    ".",
    "..",
    "../../etc/passwd",
    "<script>",
    "a b",
    "ü",
    "²",
    "1\n",
    "\x00",
)


def valid(kind: IdentifierKind) -> st.SearchStrategy[str]:
    """Identifiers of ``kind`` across its whole alphabet and length range."""
    return st.from_regex(kind.regex, fullmatch=True).filter(kind.is_valid)


def invalid(kind: IdentifierKind) -> st.SearchStrategy[str]:
    """Strings outside ``kind``: a trailing newline or space, a unicode digit, a path
    separator or ``..``, markup, empty, over-long, or any other text."""
    ok = valid(kind)
    return st.one_of(
        st.sampled_from(HOSTILE),
        ok.map(lambda v: v + "\n"),
        ok.map(lambda v: v + " "),
        ok.map(lambda v: " " + v),
        ok.map(lambda v: v + "²"),
        ok.map(lambda v: v + "٣"),
        ok.map(lambda v: v + "/x"),
        ok.map(lambda v: "../" + v),
        ok.map(lambda v: v + "<b>"),
        ok.map(lambda v: v + "a" * kind.max_length),
        st.text(max_size=kind.max_length + 2),
    ).filter(lambda v: not kind.is_valid(v))
