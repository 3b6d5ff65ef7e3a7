"""parse_addresses' regular-expression path for simple lists gives what the tokenizer
path gives for the same bytes, and never takes a list it cannot read exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libcourier.mime import parse
from libcourier.rfc5322 import _simple_addresses, parse_address_tokens, parse_addresses, unfold

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"

_pieces = st.sampled_from([
    b"a", b"b.c", b"x", b"@", b"<", b">", b",", b" ", b"\t", b'"', b"\\", b"(", b")",
    b"Jo", b"Doe", b".", b":", b";", b"=?utf-8?B?w6k=?=", b"\xc3\xa9", b"[1.2.3.4]",
    b"\r\n ", b"", b"-", b"'"])
values = st.lists(_pieces, max_size=24).map(b"".join)
_ws = st.sampled_from([b"", b" ", b"\t", b"  "])
_word = st.sampled_from([b"a", b"Jo", b"x.y", b"=?utf-8?B?w6k=?=", b"\xc3\xa9", b"o'k", b"-"])
_spec = st.tuples(_word, st.sampled_from([b"ex.com", b"b", b"a.b.", b"\xc3\xa9.fr"])).map(
    lambda t: t[0] + b"@" + t[1])
_name = st.lists(_word, min_size=1, max_size=3).map(b" ".join) | \
    st.sampled_from([b'"Doe, John"', b'""', b'"a  b\tc"', b'"\xc3\xa9"'])
_item = st.tuples(_ws, st.none() | _name, _ws, _spec, _ws).map(
    lambda t: t[0] + (t[3] if t[1] is None else t[1] + t[2] + b"<" + t[3] + b">") + t[4])
# simple lists, sometimes with one piece of other syntax put in somewhere
simple_lists = st.tuples(st.lists(_item, min_size=1, max_size=4).map(b",".join),
                         st.none() | _pieces, st.integers(0, 200)).map(
    lambda t: t[0] if t[1] is None else t[0][:t[2]] + t[1] + t[0][t[2]:])


@settings(max_examples=3000, deadline=None)
@given(values | simple_lists)
def test_simple_path_equals_tokenizer(value: bytes) -> None:
    fast = _simple_addresses(value)
    if fast is not None:
        assert fast == parse_address_tokens(value)
    assert parse_addresses(value) == parse_address_tokens(value)


@pytest.mark.parametrize("value", [
    b"a@b.c", b"John Doe <j.d@ex.com>", b'"Doe, John" <j@d>, x@y', b"a@b , c@d",
    b" =?utf-8?B?w6k=?= <a@b> ", b'"" <a@b>', b"J\xc3\xa9r\xc3\xb4me <j@x>"])
def test_common_forms_take_the_simple_path(value: bytes) -> None:
    fast = _simple_addresses(value)
    assert fast is not None and fast == parse_address_tokens(value)


@pytest.mark.parametrize("value", [
    b"a@b,", b"J. Doe <a@b>", b"a@b (Comment)", b"g: a@b;", b"<@r:a@b>", b'"a\\"b" <a@b>',
    b"a @ b", b",a@b", b""])
def test_other_forms_take_the_tokenizer(value: bytes) -> None:
    assert _simple_addresses(value) is None


def test_corpus_address_fields_agree() -> None:
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file())
    if not files:
        pytest.skip(f"no corpus at {CORPUS}")
    seen = 0
    for p in files:
        with open(p, "rb") as fh:
            root = parse(fh, header_only=True)
        for name in (b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc"):
            v = root.field(name)
            if v is not None:
                v = unfold(v)
                assert parse_addresses(v) == parse_address_tokens(v), (p, name)
                seen += 1
    assert seen
