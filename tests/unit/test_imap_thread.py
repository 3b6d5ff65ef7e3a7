"""THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256): grammar, algorithm steps, format."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from courier_imapd import core as c
from courier_imapd import search as s
from courier_imapd import thread as t
from hypothesis import given, settings
from hypothesis import strategies as st


@dataclass
class Msg:
    seq: int
    sent: float
    fields: dict[bytes, bytes] = field(default_factory=dict)

    def sent_time(self) -> float:
        return self.sent

    def field(self, name: bytes) -> bytes | None:
        return self.fields.get(name)

    def memo(self, key: str, compute):  # noqa: ANN001, ANN201 - nothing kept in a test
        return compute()

    def keys(self) -> None:      # not indexed: the keys are computed from field()
        return None


def msg(seq: int, sent: float, subject: str | None = None, mid: str | None = None,
        refs: str | None = None, irt: str | None = None) -> Msg:
    f: dict[bytes, bytes] = {}
    for name, v in ((b"subject", subject), (b"message-id", mid), (b"references", refs),
                    (b"in-reply-to", irt)):
        if v is not None:
            f[name] = v.encode()
    return Msg(seq, sent, f)


def threads(alg: str, msgs: list[Msg]) -> str:
    return t.format_threads(t.thread(alg, msgs), lambda m: m.seq)  # type: ignore[arg-type]


def test_parse() -> None:
    cmd = c.parse_command([(b"a UID THREAD references UTF-8 UNSEEN", None)], c.State.SELECTED)
    assert isinstance(cmd, c.Thread) and cmd.uid and cmd.algorithm == "REFERENCES"
    assert cmd.program == s.Program("UTF-8", s.Flag("S", False))
    for bad in (b"a THREAD", b"a THREAD REFS UTF-8 ALL", b"a THREAD REFERENCES ALL",
                b"a THREAD REFERENCES UTF-8", b"a THREAD (REFERENCES) UTF-8 ALL"):
        assert isinstance(c.parse_command([(bad, None)], c.State.SELECTED), c.BadCommand), bad


def test_ordered_subject() -> None:
    msgs = [msg(1, 3, "Re: A"), msg(2, 1, "A"), msg(3, 2, "B"), msg(4, 4, "a"), msg(5, 0)]
    # (5) has no subject: "" sorts first, a thread of its own
    assert threads("ORDEREDSUBJECT", msgs) == "(5)(2 (1)(4))(3)"
    assert threads("ORDEREDSUBJECT", msgs[:2]) == "(2 1)"
    assert threads("ORDEREDSUBJECT", []) == ""


def test_references_steps() -> None:
    msgs = [
        msg(1, 1, "A", "<1@x>"),
        msg(2, 2, "Re: A", "<2@x>", "<1@x>"),
        msg(3, 3, "Re: A", "<3@x>", "<1@x>"),
        msg(4, 4, "Re: A", "<4@x>", "<1@x> <2@x>"),
        msg(5, 5, "B", "<5@x>"),
        msg(6, 6, "C", "<6@x>", "<gone@x>"),         # a dummy with one child: promoted
        msg(7, 7, "D", "<7@x>", "<gone2@x>"),        # a dummy with two children stays
        msg(8, 8, "Re: D", "<8@x>", "<gone2@x>"),
        msg(9, 9, "Re: B", "<9@x>"),                 # (5): a reply joins B's thread
    ]
    assert threads("REFERENCES", msgs) == "(1 (2 4)(3))(5 9)(6)((7)(8))"


def test_references_sorting_siblings_by_date_then_sequence() -> None:
    msgs = [
        msg(1, 1, "A", "<1@x>"),
        msg(2, 9, "Re: A", "<2@x>", "<1@x>"),
        msg(3, 5, "Re: A", "<3@x>", "<1@x>"),
        msg(4, 5, "Re: A", "<4@x>", "<1@x>"),
    ]
    assert threads("REFERENCES", msgs) == "(1 (3)(4)(2))"


def test_same_subject_roots_get_a_dummy() -> None:
    msgs = [msg(1, 1, "X", "<1@x>"), msg(2, 2, "x", "<2@x>"), msg(3, 3, "X", "<3@x>")]
    assert threads("REFERENCES", msgs) == "((1)(2)(3))"


def test_loops_are_not_made() -> None:
    msgs = [msg(1, 1, "a", "<a@x>", "<b@x>"), msg(2, 2, "b", "<b@x>", "<a@x>")]
    assert threads("REFERENCES", msgs) == "(2 1)"
    # a message naming itself
    assert threads("REFERENCES", [msg(1, 1, "s", "<s@x>", "<s@x>")]) == "(1)"


def test_duplicate_message_id_is_unique() -> None:
    msgs = [msg(1, 1, "p", "<x@x>"), msg(2, 2, "q", "<x@x>"), msg(3, 3, "r", "<3@x>", "<x@x>")]
    assert threads("REFERENCES", msgs) == "(1 3)(2)"


def test_in_reply_to_when_no_references_and_normalised_ids() -> None:
    msgs = [msg(1, 1, "p", '<"a.b"@example.com>'),
            msg(2, 2, "q", "<2@x>", None, "junk <a.b@example.com> <other@x>"),
            msg(3, 3, "r", "<3@x>", "<\n 2@x>")]
    assert threads("REFERENCES", msgs) == "(1 2 3)"


def test_truncated_references_move_the_message() -> None:
    # step 1B never moves a container that has a parent; 1C moves the message itself:
    # seq 1 names <1> <3> (its <2> was cut), so <3> hangs under <1>; then <3> arrives
    # naming <1> <2> and moves under <2>
    msgs = [msg(1, 1, "e", "<5@x>", "<1@x> <3@x>"), msg(2, 2, "c", "<3@x>", "<1@x> <2@x>"),
            msg(3, 3, "a", "<1@x>"), msg(4, 4, "b", "<2@x>", "<1@x>")]
    assert threads("REFERENCES", msgs) == "(3 4 2 1)"
    # and a later, longer References does not move others' links (1B)
    msgs = [msg(1, 1, "a", "<1@x>"), msg(3, 3, "c", "<3@x>", "<1@x>"),
            msg(2, 2, "b", "<2@x>", "<1@x>"), msg(4, 4, "d", "<4@x>", "<1@x> <2@x> <3@x>")]
    assert threads("REFERENCES", msgs) == "(1 (2)(3 4))"


def test_deep_chain_without_recursion() -> None:
    n = 5000
    msgs = [msg(1, 0, "s", "<0@x>")]
    msgs += [msg(i + 1, i, "Re: s", f"<{i}@x>", f"<{i - 1}@x>") for i in range(1, n)]
    out = threads("REFERENCES", msgs)
    assert out == "(" + " ".join(str(i) for i in range(1, n + 1)) + ")"


@pytest.mark.parametrize("shape, text", [
    ([], ""),
    ([(1, [])], "(1)"),
    ([(1, [(2, [(3, [])])])], "(1 2 3)"),
    ([(1, [(2, []), (3, [(4, [])])])], "(1 (2)(3 4))"),
    ([(None, [(2, []), (3, [])])], "((2)(3))"),
    ([(1, []), (2, [])], "(1)(2)"),
])
def test_format(shape: list, text: str) -> None:
    def build(items: list, parent: t.Node | None) -> list[t.Node]:
        out = []
        for num, kids in items:
            n = t.Node(None if num is None else Msg(num, 0), parent)
            n.children = build(kids, n)
            out.append(n)
        return out

    assert t.format_threads(build(shape, None), lambda m: m.seq) == text  # type: ignore[arg-type,attr-defined]


# -- invariants on any input ------------------------------------------------------------------

_ID = st.sampled_from(["<1@x>", "<2@x>", "<3@x>", "<4@x>", "<5@x>", "<6@x>", "<\"7\"@x>", "bad"])
_MSG = st.tuples(st.floats(0, 10, allow_nan=False), st.sampled_from(
    ["a", "Re: a", "b", "Fwd: b", "", "[x] a", "re: [fwd: b]"]), st.none() | _ID,
    st.lists(_ID, max_size=4).map(" ".join), st.none() | _ID)


def _well_formed(text: str) -> list[int]:
    """The numbers of a THREAD answer in order, checking the thread-list grammar."""
    nums: list[int] = []
    pos = 0

    def thread_list() -> None:
        nonlocal pos
        assert text[pos] == "("
        pos += 1
        members = 0
        while text[pos].isdigit():
            end = pos
            while text[end].isdigit():
                end += 1
            nums.append(int(text[pos:end]))
            members += 1
            pos = end
            if text[pos] == " ":
                pos += 1
        nested = 0
        while text[pos] == "(":
            thread_list()
            nested += 1
        # thread-members [SP thread-nested], thread-nested = 2*thread-list
        assert nested >= 2 or (members and not nested), text
        assert text[pos] == ")"
        pos += 1

    while pos < len(text):
        thread_list()
    return nums


@settings(max_examples=300, deadline=None)
@given(st.lists(_MSG, max_size=12), st.sampled_from(t.ALGORITHMS))
def test_every_message_once_in_a_well_formed_answer(specs: list, alg: str) -> None:
    msgs = [msg(i + 1, when, subj, mid, refs or None, irt)
            for i, (when, subj, mid, refs, irt) in enumerate(specs)]
    out = threads(alg, msgs)
    assert sorted(_well_formed(out)) == list(range(1, len(msgs) + 1)), out
