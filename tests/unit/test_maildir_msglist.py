"""msglist.MessageList behaves as the list[MessageRef] it replaces, whatever a session
does to it (store, delete, append), and Picked / keys() give the same answers as the
MessageRefs would, without making them."""

from __future__ import annotations

import array
import os
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libcourier.maildir import snapshot as snapmod
from libcourier.maildir.flags import split_name
from libcourier.maildir.folder import Maildir, MessageRef
from libcourier.maildir.msglist import MessageList, Picked

NAMES = ["1700000000.M1P1.host,S=10:2,S", "1700000001.M2P1.host:2,FRS",
         "1700000002.M3P1.host", "1700000003.M4P1.host:1,odd", "170.a:b:2,T",
         "1700000005.M6P1.host:2,a"]


def ref(i: int, name: str, kw: frozenset[str] = frozenset()) -> MessageRef:
    base, flags = split_name(name)
    return MessageRef(10 + 3 * i, base, name, flags, 100 + i, 1.7e9 + i / 4, kw)


def columns(refs: list[MessageRef]) -> MessageList:
    return MessageList(array.array("q", [m.uid for m in refs]), [m.filename for m in refs],
                       array.array("q", [m.size for m in refs]),
                       array.array("d", [m.mtime for m in refs]),
                       {i: m.keywords for i, m in enumerate(refs) if m.keywords})


def sample() -> list[MessageRef]:
    return [ref(i, n, frozenset({"$Junk"}) if i % 2 else frozenset())
            for i, n in enumerate(NAMES)]


def test_reads_as_the_list_of_refs() -> None:
    refs = sample()
    ml = columns(refs)
    assert len(ml) == len(refs)
    # Read by columns (FETCH from the index, UID ranges): no MessageRef made or held.
    assert ml.keys(range(len(refs))) == [(m.base, m.size) for m in refs]
    assert list(ml.uids()) == [m.uid for m in refs]
    assert Picked(ml, [0, 2]).columns() == ([1, 3], [(refs[0].base, refs[0].size),
                                                     (refs[2].base, refs[2].size)],
                                            [refs[0].uid, refs[2].uid])
    assert ml._stored is None
    assert ml[-1] == refs[-1] and ml[1:4] == refs[1:4]
    assert ml[2] is ml[2]                # made once, kept
    assert list(ml) == refs
    assert [m.base for m in ml] == [m.base for m in refs]      # "170.a:b" kept whole
    with pytest.raises(IndexError):
        ml[len(refs)]
    fresh = columns(refs)
    assert [m for m in fresh] == refs and list(fresh) == refs  # made all at once, then kept


def test_a_stored_message_is_kept_as_stored() -> None:
    refs = sample()
    ml = columns(refs)
    # UID EXPUNGE stores a message whose flags are not its file name's (session.py)
    odd = replace(refs[0], flags="")
    ml[0] = odd
    assert ml[0] is odd and ml[0].flags == "" and ml[0].filename == refs[0].filename
    assert ml.copy()[0] is odd


OPS = st.lists(st.one_of(
    st.tuples(st.just("set"), st.integers(0, 50), st.integers(0, len(NAMES) - 1),
              st.booleans()),
    st.tuples(st.just("del"), st.integers(0, 50)),
    st.tuples(st.just("append"), st.integers(0, len(NAMES) - 1), st.booleans()),
    st.tuples(st.just("insert"), st.integers(-60, 60), st.integers(0, len(NAMES) - 1)),
), max_size=40)


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_any_sequence_of_changes_matches_a_list(ops: list[tuple]) -> None:
    model = sample()
    ml = columns(model)
    made = 100
    for op in ops:
        made += 1
        if op[0] == "set" and model:
            i = op[1] % len(model)
            m = ref(made, NAMES[op[2]], frozenset({"kw"}) if op[3] else frozenset())
            model[i] = m
            ml[i] = m
        elif op[0] == "del" and model:
            i = op[1] % len(model)
            del model[i]
            del ml[i]
        elif op[0] == "append":
            m = ref(made, NAMES[op[1]], frozenset({"x"}) if op[2] else frozenset())
            model.append(m)
            ml.append(m)
        elif op[0] == "insert":
            m = ref(made, NAMES[op[2]])
            model.insert(op[1], m)
            ml.insert(op[1], m)
    assert ml.keys(range(len(model))) == [(m.base, m.size) for m in model]
    assert [ml[i] for i in range(0, len(model), 3)] == model[::3]
    assert list(ml) == model
    assert ml.keys(range(len(model))) == [(m.base, m.size) for m in model]
    idx = list(range(0, len(model), 2))
    p = Picked(ml, idx)
    assert list(p) == [(i + 1, model[i]) for i in idx] == list(Picked(model, idx))
    assert p.columns() == Picked(model, idx).columns() == (
        [i + 1 for i in idx], [(model[i].base, model[i].size) for i in idx],
        [model[i].uid for i in idx])
    assert list(p[1:3]) == [(i + 1, model[i]) for i in idx[1:3]]


def test_columns_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError):
        MessageList(array.array("q", [1]), [], array.array("q", [1]), array.array("d", [1.0]),
                    {})


SCRIPT = (b"a LOGIN alice pw\r\nb SELECT INBOX\r\n"
          b"c FETCH 1:* BODYSTRUCTURE\r\nd UID FETCH 3:* (FLAGS)\r\n"
          b"e UID SEARCH KEYWORD $Label1\r\nf STORE 2:5 +FLAGS (\\Deleted \\Flagged)\r\n"
          b"g STORE 3 +FLAGS ($Label2)\r\nh UID EXPUNGE 4\r\ni FETCH 1:* (UID FLAGS)\r\n"
          b"j SEARCH UNSEEN\r\nk STORE 1 -FLAGS (\\Seen)\r\nl EXPUNGE\r\n"
          b"m UID FETCH 1:* (FLAGS RFC822.SIZE ENVELOPE)\r\nn FETCH 1:* BODYSTRUCTURE\r\n"
          b"o SEARCH KEYWORD $Label2\r\np LOGOUT\r\n")


def _folder(tmp_path: Path, warm: bool, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """SCRIPT's answer on a folder of 12 messages, selected warm (its message list
    read from the snapshot into a MessageList) or cold (a scan's list)."""
    from courier_imapd.mailbox import MailboxView

    from tests.unit.test_imap_session import session

    root = tmp_path / "Maildir"
    for d in ("tmp", "new", "cur"):
        (root / d).mkdir(parents=True)
    for i in range(12):
        body = b"From: a%d@example.com\nSubject: m%d\n\nline %d\n" % (i, i, i)
        (root / "new" / f"{1000 + i}.M{i}P1.h,S={len(body)}").write_bytes(body)
    session(tmp_path, b"a LOGIN alice pw\r\nb SELECT INBOX\r\nc STORE 1:6 +FLAGS (\\Seen)\r\n"
            b"d STORE 2,5,7 +FLAGS ($Label1)\r\ne LOGOUT\r\n")
    # SELECTs until one stores a snapshot the next SELECT trusts (the first after the
    # keyword changes may see courierimapkeywords/ tidied while it reads it).
    for _ in range(5):
        session(tmp_path, b"a LOGIN alice pw\r\nb SELECT INBOX\r\nc LOGOUT\r\n")
        summary = Maildir(root).open_summary()
        if summary is not None:
            summary.file.close()        # type: ignore[attr-defined]
            break
    else:
        raise AssertionError("no trusted snapshot after 5 SELECTs")
    state = root / snapmod.STATE_NAME
    if not warm:
        state.unlink()
    loads: list[int] = []
    real = MailboxView._load

    def counting(self: MailboxView) -> None:
        loads.append(1)
        real(self)
    monkeypatch.setattr(MailboxView, "_load", counting)
    out = session(tmp_path, SCRIPT)
    assert bool(loads) == warm          # the path under test was taken
    return b"".join(line for line in out.splitlines(keepends=True) if b"UIDVALIDITY" not in line)


def test_a_warm_session_answers_as_a_cold_one(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cold = _folder(tmp_path / "cold", False, monkeypatch)
    warm = _folder(tmp_path / "warm", True, monkeypatch)
    assert b"* 2 EXPUNGE" in cold and b"l OK" in cold and b"BODYSTRUCTURE (" in cold
    assert warm == cold


def test_of_a_scans_refs_gives_them_back() -> None:
    refs = sample()
    # A scan cuts the base at the first colon: "170.a", not split_name's "170.a:b".
    refs[4] = replace(refs[4], base="170.a")
    ml = MessageList.of(refs)
    assert list(ml) == refs and ml[4].base == "170.a"
    assert ml.keys([4, 0]) == [("170.a", refs[4].size), (refs[0].base, refs[0].size)]
    assert ml.first_unseen() == 3          # "...M3P1.host": no info, so no \Seen
    ml[2] = replace(ml[2], flags="S")      # as UID EXPUNGE stores it
    assert ml.first_unseen() == 4
    assert MessageList.of([refs[0]]).first_unseen() == 0
    assert len(MessageList.of([])) == 0 and MessageList.of([]).first_unseen() == 0


def test_a_refresh_keeps_only_what_changed(tmp_path: Path) -> None:
    """NOOP / IDLE after a delivery and another session's flag change: both reported,
    and the view keeps a MessageRef for those two only, not one per message."""
    from courier_imapd.mailbox import MailboxView

    root = tmp_path / "M"
    for d in ("tmp", "new", "cur"):
        (root / d).mkdir(parents=True)
    for i in range(40):
        (root / "cur" / f"{1000 + i}.M{i}P1.h,S=3:2,S").write_bytes(b"x\n\n")
    view = MailboxView("INBOX", Maildir(root), False)
    view.select_responses()
    msgs = view.messages
    assert isinstance(msgs, MessageList) and msgs._stored is None
    os.rename(root / "cur" / "1007.M7P1.h,S=3:2,S", root / "cur" / "1007.M7P1.h,S=3:2,FS")
    (root / "new" / "2000.M1P2.h,S=3").write_bytes(b"y\n\n")
    lines = view.refresh(allow_expunge=True)
    assert lines == ["8 FETCH (FLAGS (\\Flagged \\Seen))", "41 EXISTS", "1 RECENT"]
    assert view.messages is msgs and len(msgs) == 41
    assert msgs._stored is not None and sum(m is not None for m in msgs._stored) == 2
    assert msgs[7].flags == "FS" and msgs[40].uid == 41 and msgs[40].filename.endswith(":2,")
    assert view.refresh(allow_expunge=True) == []
    assert sum(m is not None for m in msgs._stored) == 2


def test_relocate_follows_a_rename_keeping_one_ref(tmp_path: Path) -> None:
    """FETCH after another session renamed a file: the view takes the new name, keeps
    the flags the client was told, and makes no MessageRef for the others."""
    from courier_imapd.mailbox import MailboxView

    root = tmp_path / "M"
    for d in ("tmp", "new", "cur"):
        (root / d).mkdir(parents=True)
    for i in range(20):
        (root / "cur" / f"{1000 + i}.M{i}P1.h,S=3:2,").write_bytes(b"x\n\n")
    view = MailboxView("INBOX", Maildir(root), False)
    os.rename(root / "cur" / "1003.M3P1.h,S=3:2,", root / "cur" / "1003.M3P1.h,S=3:2,S")
    assert view.relocate() == 1 and view.count_unseen() == 20
    msgs = view.messages
    assert isinstance(msgs, MessageList) and msgs._stored is not None
    assert sum(m is not None for m in msgs._stored) == 1
    assert msgs[3].filename == "1003.M3P1.h,S=3:2,S" and msgs[3].flags == ""
    assert view.relocate() == 0


def test_mtimes_of_messages_renamed_meanwhile_list_cur_once(tmp_path, monkeypatch) -> None:
    """Another session renamed every file (STORE 1:* +FLAGS \\Seen) after our scan,
    which read no mtime: reading them all (FETCH 1:* INTERNALDATE) looks each up by
    its base in one listing of cur/, not in one listing per message."""
    from libcourier.maildir import msglist as mod
    md = tmp_path / "M"
    for d in ("tmp", "new", "cur"):
        (md / d).mkdir(parents=True)
    for i in range(50):
        p = md / "cur" / f"{1700000000 + i}.M{i}P1.host,S=1:2,"
        p.write_bytes(b"x")
        os.utime(p, (1600000000 + i, 1600000000 + i))
    ml = Maildir(md).scan().messages
    for n in os.listdir(md / "cur"):
        os.rename(md / "cur" / n, md / "cur" / (n + "S"))
    listings = []
    real = os.scandir, os.listdir

    def scandir(p):
        listings.append(p)
        return real[0](p)

    def listdir(p):
        listings.append(p)
        return real[1](p)
    monkeypatch.setattr(mod.os, "scandir", scandir)
    monkeypatch.setattr(mod.os, "listdir", listdir)
    got = sorted(m.mtime for m in ml)
    assert got == [1600000000 + i for i in range(50)]
    assert len(listings) <= 2
