"""The plain ways of sortkeys (a common Date:, a Subject: with nothing to take away)
give what the general ways give, on values built to sit on their edges."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from libcourier.maildir import sortkeys
from libcourier.rfc5322.basesubject import base_subject, sort_form

DAYS = ["Mon", "Tue", "Sun", "Xyz", "mon"]
MONTHS = ["Jan", "Feb", "Dec", "jan", "Foo"]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(DAYS), st.integers(0, 39), st.sampled_from(MONTHS),
       st.sampled_from(["0000", "0068", "0069", "0099", "1969", "2023", "9999", "99"]),
       st.integers(0, 99), st.integers(0, 99), st.integers(0, 99),
       st.sampled_from(["+", "-"]), st.sampled_from(["0000", "0100", "0130", "1260", "2359", "9999"]),
       st.sampled_from(["", " ", "\n", "\r\n", "  \t", " (CET)", "\n x"]),
       st.sampled_from([" ", "", "\t"]))
def test_common_date_same_as_email_utils(day, dd, mon, yy, hh, mi, ss, sign, zone, tail, head):
    v = f"{head}{day}, {dd:02d} {mon} {yy} {hh:02d}:{mi:02d}:{ss:02d} {sign}{zone}{tail}".encode()
    assert sortkeys.parse_date(v) == sortkeys._parse_date_general(v), v


def test_common_date_takes_the_plain_way() -> None:
    v = b" Sun, 01 Jan 2023 19:57:53 +0100\n"
    assert sortkeys._COMMON_DATE(v) is not None
    assert sortkeys.parse_date(v) == sortkeys._parse_date_general(v)
    assert sortkeys.parse_date(v)[1] == 1672599473.0


ALPHABET = st.sampled_from(list("abRrFfwdeEx :[](=?)\t\r\n\\\"") + ["re:", "fwd:", "(fwd)", "=?utf-8?q?a?=", "\xe9"])


@settings(max_examples=600, deadline=None)
@given(st.lists(ALPHABET, max_size=12))
def test_plain_subject_same_as_base_subject(parts: list[str]) -> None:
    raw = "".join(parts).encode("utf-8")
    subj, reply = base_subject(raw)
    assert sortkeys.subject_key(raw) == (sort_form(subj), reply), raw


def test_plain_subject_takes_the_plain_way() -> None:
    raw = b" Storage up prototype from but\n"
    assert sortkeys._PLAIN_SUBJECT(raw) is not None
    assert sortkeys.subject_key(raw) == (b"STORAGE UP PROTOTYPE FROM BUT", False)
