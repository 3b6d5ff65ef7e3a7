"""The maildrop format (courier_deliver.maildrop), the local sender rule
(localsubmit) and courierd's pickup on a scratch spool, with hostile files."""

from __future__ import annotations

import io
import os
import pwd
import stat

import pytest
from courier_deliver.localsubmit import Submitter, is_trusted, sender_allowed
from courier_deliver.maildrop import (
    DropEnvelope,
    DropWriter,
    MaildropError,
    format_block,
    read_block,
)
from courier_deliver.pickup import STALE_AFTER, Pickup, prepare_dirs
from hypothesis import given, settings
from hypothesis import strategies as st

from libcourier.spool import Recipient, ensure_spool, list_queue, open_data, read_envelope

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="files owned by another user need root")


# -- the sender rule --

def test_sender_rule():
    alice = Submitter(1000, "alice", trusted=False)
    domains = ("mx.test", "example.com")
    assert sender_allowed(alice, "alice@mx.test", domains)
    assert sender_allowed(alice, "Alice@EXAMPLE.com", domains)
    assert sender_allowed(alice, "alice-cron@mx.test", domains)
    assert not sender_allowed(alice, "alicex@mx.test", domains)
    assert not sender_allowed(alice, "bob@mx.test", domains)
    assert not sender_allowed(alice, "alice@elsewhere.test", domains)
    assert not sender_allowed(alice, "", domains)
    assert sender_allowed(Submitter(5, "cron", trusted=True), "", domains)
    assert is_trusted(0, "root", daemon_uid=1, trusted_logins=())
    assert is_trusted(1, "daemon", daemon_uid=1, trusted_logins=())
    assert is_trusted(7, "www", daemon_uid=1, trusted_logins=["www"])
    assert not is_trusted(7, "www", daemon_uid=1, trusted_logins=["www-data"])


# -- the file format --

ENV = DropEnvelope("me@mx.test", (Recipient("a@x.test", "rfc822;a b@x.test", "NEVER"),
                                  Recipient("b@x.test")), "HDRS", "id 1+")


def test_block_round_trip_leaves_the_message():
    fh = io.BytesIO(format_block(ENV) + b"Subject: x\n\nbody\n")
    assert read_block(fh) == ENV
    assert fh.read() == b"Subject: x\n\nbody\n"
    null = DropEnvelope("", (Recipient("a@x.test"),))
    assert read_block(io.BytesIO(format_block(null))) == null


FLAGGED = DropEnvelope("caf\u00e9@mx.test", (Recipient("b@x.test"),), None, None,
                       smtputf8=True, verp=True, security="STARTTLS")


def test_the_flags_round_trip_and_an_older_sendmails_file_still_reads():
    """SMTPUTF8, VERP and SECURITY (sendmail -bs) are lines of their own, written only
    when set: a file without them is what earlier sendmails wrote, byte for byte."""
    data = format_block(FLAGGED)
    assert b"\nsmtputf8 1\nverp 1\nsecurity STARTTLS\nrcpt " in data
    assert read_block(io.BytesIO(data)) == FLAGGED
    old = (b"courier-py-maildrop 1\nsender me@mx.test\nret HDRS\nenvid id+201+2B\n"
           b"rcpt a@x.test NEVER rfc822;a+20b@x.test\nrcpt b@x.test - -\nend\n")
    assert format_block(ENV) == old
    got = read_block(io.BytesIO(old))
    assert got == ENV and (got.smtputf8, got.verp, got.security) == (False, False, None)
    # Any order before `end`, as the other lines.
    moved = b"courier-py-maildrop 1\nverp 1\nsender a@b\nrcpt c@d - -\nsecurity STARTTLS\nend\n"
    assert read_block(io.BytesIO(moved)) == DropEnvelope("a@b", (Recipient("c@d"),),
                                                         verp=True, security="STARTTLS")


@pytest.mark.parametrize("block", [
    b"",
    b"courier-py-maildrop 2\nsender a@b\nrcpt c@d - -\nend\n",
    b"courier-py-maildrop 1\nsender a@b\nrcpt c@d - -\n",               # no end
    b"courier-py-maildrop 1\nsender a@b\nend\n",                         # no recipient
    b"courier-py-maildrop 1\nrcpt c@d - -\nend\n",                       # no sender
    b"courier-py-maildrop 1\nsender a@b\nsender e@f\nrcpt c@d - -\nend\n",
    b"courier-py-maildrop 1\nsender a b@c\nrcpt c@d - -\nend\n",
    b"courier-py-maildrop 1\nsender a@b\nrcpt c@d BOGUS -\nend\n",
    b"courier-py-maildrop 1\nsender a@b\nrcpt c@d - x\nend\n",
    b"courier-py-maildrop 1\nsender a@b\nrcpt <c@d> - -\nend\n",
    b"courier-py-maildrop 1\nsender a@b\nclient root\nrcpt c@d - -\nend\n",
    b"courier-py-maildrop 1\nsender a@b\nrcpt c@d - -\nret ALL\nend\n",
    b"courier-py-maildrop 1\nsender \xff@b\nrcpt c@d - -\nend\n",
    b"courier-py-maildrop 1\nsender a@b\nrcpt " + b"c" * 5000 + b"@d - -\nend\n",
    # The flags: exactly their one value, at most once each.
    b"courier-py-maildrop 1\nsender a@b\nverp 0\nrcpt c@d - -\nend\n",
    b"courier-py-maildrop 1\nsender a@b\nverp\nrcpt c@d - -\nend\n",
    b"courier-py-maildrop 1\nsender a@b\nverp 1 \nrcpt c@d - -\nend\n",
    b"courier-py-maildrop 1\nsender a@b\nverp 1\nverp 1\nrcpt c@d - -\nend\n",
    b"courier-py-maildrop 1\nsender a@b\nsmtputf8 yes\nrcpt c@d - -\nend\n",
    b"courier-py-maildrop 1\nsender a@b\nsmtputf8 1\nsmtputf8 1\nrcpt c@d - -\nend\n",
    b"courier-py-maildrop 1\nsender a@b\nsecurity NONE\nrcpt c@d - -\nend\n",
    b"courier-py-maildrop 1\nsender a@b\nsecurity starttls\nrcpt c@d - -\nend\n",
    b"courier-py-maildrop 1\nsender a@b\nsecurity\nrcpt c@d - -\nend\n",
    b"courier-py-maildrop 1\nsender a@b\nsecurity STARTTLS\nsecurity STARTTLS\n"
    b"rcpt c@d - -\nend\n",
    b"courier-py-maildrop 1\nsender a@b\nwarned 1\nrcpt c@d - -\nend\n",   # spool-only
])
def test_malformed_blocks(block):
    with pytest.raises(MaildropError):
        read_block(io.BytesIO(block))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_fail_cleanly(tail):
    for data in (tail, b"courier-py-maildrop 1\n" + tail):
        try:
            env = read_block(io.BytesIO(data))
        except MaildropError:
            continue
        assert env.recipients and env.sender is not None


def test_dropwriter_marks_completion_by_mode(tmp_path):
    w = DropWriter(tmp_path, 0)
    path = tmp_path / w.name
    assert stat.S_IMODE(path.stat().st_mode) == 0o600         # pickup leaves it alone
    w.begin(ENV)
    w.write(b"Subject: x\n\nbody\n")
    assert w.commit() == path.name
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    with open(path, "rb") as fh:
        assert read_block(fh) == ENV and fh.read() == b"Subject: x\n\nbody\n"
    small = DropWriter(tmp_path, 10)
    small.begin(ENV)
    small.write(b"x" * 11)
    with pytest.raises(Exception, match="size limit"):
        small.commit()
    assert not (tmp_path / small.name).exists()


# -- pickup on a scratch spool --

@pytest.fixture
def spool(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "me").write_text("mx.test\n")
    (etc / "defaultdomain").write_text("example.com\n")
    sp = tmp_path / "spool"
    ensure_spool(sp)
    prepare_dirs(sp)
    return sp, etc


def nobody():
    return pwd.getpwnam("nobody")


def drop(sp, name: str, data: bytes, *, uid: int | None = None, mode: int = 0o640):
    """A file as a user would leave it: made aside, renamed into the maildrop."""
    aside = sp / "tmp" / f"aside-{name}"
    aside.write_bytes(data)
    os.chmod(aside, mode)
    if uid is not None:
        os.chown(aside, uid, -1)
    os.rename(aside, sp / "maildrop" / name)
    return sp / "maildrop" / name


def block(sender: str, rcpt: str = "alice@example.com") -> bytes:
    return format_block(DropEnvelope(sender, (Recipient(rcpt),)))


def quarantine(sp) -> list[str]:
    return sorted(os.listdir(sp / "quarantine"))


def test_prepare_dirs_modes(spool):
    sp, _ = spool
    assert stat.S_IMODE((sp / "maildrop").stat().st_mode) == 0o3733
    assert stat.S_IMODE((sp / "quarantine").stat().st_mode) == 0o700
    assert stat.S_IMODE(sp.stat().st_mode) & 0o007 == 0o001     # searchable, not listable
    assert stat.S_IMODE((sp / "msgs").stat().st_mode) & 0o007 == 0


@needs_root
def test_a_users_file_is_queued_as_that_user(spool):
    sp, etc = spool
    nb = nobody()
    env = DropEnvelope("nobody-x@mx.test",
                       (Recipient("alice@example.com", "rfc822;alice@example.com", "NEVER"),),
                       "HDRS", "e1")
    drop(sp, "good", format_block(env) + b"Subject: hi\n\n\xc3\xa9t\xc3\xa9\n", uid=nb.pw_uid)
    got: list[str] = []
    qids = Pickup(sp, etc).scan(got.append)
    assert len(qids) == 1 and got == qids and list_queue(sp) == qids
    e = read_envelope(sp, qids[0])
    assert e.sender == "nobody-x@mx.test" and e.recipients == env.recipients
    assert (e.ret, e.envid, e.body) == ("HDRS", "e1", "8BITMIME")
    assert e.client == f"local uid={nb.pw_uid} user=nobody maildrop"
    with open_data(sp, qids[0]) as fh:
        data = fh.read()
    assert data.startswith(f"Received: (from nobody@localhost uid {nb.pw_uid})\n"
                           f"  by mx.test (courier-py) with local id {qids[0]}; ".encode())
    assert data.endswith(b"\nSubject: hi\n\n\xc3\xa9t\xc3\xa9\n")
    assert os.listdir(sp / "maildrop") == [] and quarantine(sp) == []


@needs_root
def test_the_flags_reach_the_spool_envelope_and_bad_ones_quarantine(spool):
    sp, etc = spool
    uid = nobody().pw_uid
    env = DropEnvelope("nobody@mx.test", (Recipient("j\u00f6rg@x.test"),), smtputf8=True,
                       verp=True, security="STARTTLS")
    drop(sp, "flags", format_block(env) + b"Subject: f\n\nx\n", uid=uid)
    # An older sendmail's file: no smtputf8 line, a UTF-8 address says it all the same.
    drop(sp, "older", b"courier-py-maildrop 1\nsender nobody@mx.test\n"
                      b"rcpt j\xc3\xb6rg@x.test - -\nend\nx\n", uid=uid)
    drop(sp, "bad", b"courier-py-maildrop 1\nsender nobody@mx.test\nverp 2\n"
                    b"rcpt a@x.test - -\nend\nx\n", uid=uid)
    qids = Pickup(sp, etc).scan()
    assert len(qids) == 2
    envs = sorted((read_envelope(sp, q) for q in qids), key=lambda e: e.verp)
    assert [(e.smtputf8, e.verp, e.security) for e in envs] == [
        (True, False, None), (True, True, "STARTTLS")]
    assert [n.rsplit(".", 1)[1] for n in quarantine(sp)] == ["bad"]
    assert os.listdir(sp / "maildrop") == []


@needs_root
def test_hostile_files_are_quarantined_never_deleted(spool, tmp_path):
    sp, etc = spool
    uid = nobody().pw_uid
    (etc / "sizelimit").write_text("100\n")
    secret = tmp_path / "secret"
    secret.write_bytes(block("nobody@mx.test") + b"secret\n")
    os.chown(secret, uid, -1)
    drop(sp, "forged", block("alice@example.com") + b"x\n", uid=uid)
    drop(sp, "nullsender", block("") + b"x\n", uid=uid)
    drop(sp, "garbage", b"GET / HTTP/1.0\r\n\r\n", uid=uid)
    drop(sp, "big", block("nobody@mx.test") + b"x" * 9000 + b"\n", uid=uid)
    drop(sp, "ghost", block("u@mx.test") + b"x\n", uid=4_242_424)     # no such account
    os.link(secret, sp / "maildrop" / "hardlink")
    os.symlink(secret, sp / "maildrop" / "symlink")
    os.mkfifo(sp / "maildrop" / "fifo")
    (sp / "maildrop" / "dir").mkdir()
    qids = Pickup(sp, etc).scan()
    assert qids == [] and list_queue(sp) == []
    assert os.listdir(sp / "maildrop") == []
    names = {n.split(".", 2)[2] for n in quarantine(sp)}
    assert names == {"forged", "nullsender", "garbage", "big", "ghost", "hardlink", "symlink",
                     "fifo", "dir"}
    assert secret.read_bytes().endswith(b"secret\n")        # the link target is untouched
    assert [p for p in (sp / "quarantine").iterdir() if p.name.endswith(".symlink")][0] \
        .is_symlink()


@needs_root
def test_incomplete_files_wait_then_go_to_quarantine(spool):
    sp, etc = spool
    drop(sp, "partial", block("nobody@mx.test") + b"x\n", uid=nobody().pw_uid, mode=0o600)
    now = [os.stat(sp / "maildrop" / "partial").st_mtime]
    pickup = Pickup(sp, etc, clock=lambda: now[0])
    assert pickup.scan() == []
    assert os.listdir(sp / "maildrop") == ["partial"]
    now[0] += STALE_AFTER + 1
    assert pickup.scan() == []
    assert os.listdir(sp / "maildrop") == [] and len(quarantine(sp)) == 1


@needs_root
def test_trustedusers_may_use_any_sender(spool):
    sp, etc = spool
    (etc / "trustedusers").write_text("# web apps\nnobody\n")
    drop(sp, "t", block("") + b"x\n", uid=nobody().pw_uid)
    drop(sp, "u", block("boss@elsewhere.test") + b"x\n", uid=nobody().pw_uid)
    qids = Pickup(sp, etc).scan()
    assert len(qids) == 2 and quarantine(sp) == []
    assert {read_envelope(sp, q).sender for q in qids} == {"", "boss@elsewhere.test"}


def test_the_daemon_accounts_own_file_is_trusted(spool):
    """Pickup runs as the daemon account: its own files (and root's) may name any sender."""
    sp, etc = spool
    drop(sp, "own", block("someone@elsewhere.test") + b"x\n")
    qids = Pickup(sp, etc).scan()
    assert len(qids) == 1 and read_envelope(sp, qids[0]).sender == "someone@elsewhere.test"


def test_a_spool_that_cannot_be_written_keeps_the_file(spool, monkeypatch):
    sp, etc = spool
    drop(sp, "keep", block("x@mx.test") + b"x\n")
    import courier_deliver.pickup as pickup_mod

    class Broken:
        def __init__(self, *a, **k):
            raise OSError(28, "No space left on device")
    monkeypatch.setattr(pickup_mod, "SpoolWriter", Broken)
    assert Pickup(sp, etc).scan() == []
    assert os.listdir(sp / "maildrop") == ["keep"] and quarantine(sp) == []


def test_a_file_that_cannot_be_removed_is_queued_once(spool, monkeypatch):
    sp, etc = spool
    path = drop(sp, "stuck", block("x@mx.test") + b"x\n")
    real_unlink = os.unlink

    def unlink(p, *a, **k):
        if str(p) == str(path):
            raise OSError(30, "Read-only file system")
        return real_unlink(p, *a, **k)
    monkeypatch.setattr(os, "unlink", unlink)
    pickup = Pickup(sp, etc)
    first = pickup.scan()
    assert len(first) == 1 and pickup.scan() == []
    assert list_queue(sp) == first


def test_a_broken_control_file_makes_files_wait(spool):
    sp, etc = spool
    (etc / "me").write_bytes(b"\xff\xfe\n")
    drop(sp, "w", block("x@mx.test") + b"x\n")
    assert Pickup(sp, etc).scan() == []
    assert os.listdir(sp / "maildrop") == ["w"] and quarantine(sp) == []


def test_a_message_that_fills_sendmails_limit_exactly_is_queued(spool):
    sp, etc = spool
    (etc / "sizelimit").write_text("100\n")
    limit = 100 + 8192          # what sendmail allows: sizelimit plus the headers it adds
    drop(sp, "full", block("x@mx.test") + b"y" * (limit - 1) + b"\n")
    drop(sp, "over", block("x@mx.test") + b"y" * limit + b"\n")
    assert len(Pickup(sp, etc).scan()) == 1
    assert [n.rsplit(".", 1)[1] for n in quarantine(sp)] == ["over"]
