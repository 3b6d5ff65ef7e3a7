"""Courier's DSN template files (ETC/dsn*.txt) in our RFC 3464 reports."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

from courier_deliver import dsn
from courier_deliver.config import load_config

from libcourier.control.init import DSN_FILES, template_dir
from libcourier.spool import Envelope, Recipient

ENV = Envelope("carol@example.net", (Recipient("x@example.org"),), 1_700_000_000.0,
               client="[192.0.2.7] mail.example.net")
ORIGINAL = b"Subject: hi\n\nbody\n"


def build(kind: str, reports: list[dsn.Report], texts: dsn.DsnTexts | None = None) -> bytes:
    return dsn.build_dsn(me="mx.test", dsnfrom="x <@>", env=ENV, reports=reports, kind=kind,
                         original=ORIGINAL, original_size=len(ORIGINAL), dsnlimit=32768,
                         now=1_700_000_100.0, message_id="<m@mx.test>",
                         will_retry_until=1_700_600_000.0, texts=texts)


def test_shipped_files_are_the_defaults():
    assert set(DSN_FILES) == set(dsn.TEMPLATE_FILES.values())
    for name, filename in dsn.TEMPLATE_FILES.items():
        text = (template_dir() / filename).read_text(encoding="utf-8")
        assert (text.strip() if name.startswith("subject") else text) == dsn.DEFAULT_TEXTS[name]


def test_admin_templates_fill_the_text_part():
    texts = dsn.texts_from_files({
        "header": b"Content-Type: text/plain; charset=\"utf-8\"\n\nFrom [#ME#] about mail "
                  b"of [#FROMTIME#] from [#FROMMTA#], [#OTHER#] kept\n",
        "failed": b"\nGONE:\n", "delivered": b"\nARRIVED:\n",
        "subject_notice": b"Your mail\nsecond line ignored\n",
        "footer": b"\nBye.\n"})
    reports = [dsn.Report(Recipient("x@example.org"), dsn.FAILED, "5.1.1",
                          "smtp; 550 5.1.1 no such user", "mx.example.org"),
               dsn.Report(Recipient("y@example.org"), dsn.FAILED, "5.4.6",
                          "x-local; mail loop")]
    msg = email.message_from_bytes(build(dsn.FAILED, reports, texts),
                                   policy=email.policy.default)
    assert msg["Subject"] == "Your mail"
    text = msg.get_payload()[0].get_content()
    assert text.startswith("From mx.test about mail of Tue, 14 Nov 2023 22:13:20 -0000 from "
                           "[192.0.2.7] mail.example.net, [#OTHER#] kept\n")
    assert ("\nGONE:\n\n <x@example.org>:\n     mx.example.org:\n"
            " <<< 550 5.1.1 no such user\n\n <y@example.org>:\n *** mail loop\n") in text
    assert "ARRIVED" not in text and text.rstrip().endswith("Bye.")


def test_delayed_uses_the_warning_subject_and_host():
    texts = dsn.texts_from_files({"delayed": b"\n%s is slow (100%% sure):\n",
                                  "subject_warn": b"Late\n"})
    r = dsn.Report(Recipient("x@example.org"), dsn.DELAYED, "4.4.1",
                   "x-local; cannot connect")
    msg = email.message_from_bytes(build(dsn.DELAYED, [r], texts), policy=email.policy.default)
    assert msg["Subject"] == "Late"
    assert "\nmx.test is slow (100% sure):\n\n <x@example.org>:\n *** cannot connect\n" in \
        msg.get_payload()[0].get_content()


def test_header_without_fields_still_makes_a_text_part():
    texts = dsn.texts_from_files({"header": b"Hello from [#ME#].\n"})
    msg = email.message_from_bytes(build(dsn.FAILED, [dsn.Report(
        Recipient("x@example.org"), dsn.FAILED, "5.0.0")], texts), policy=email.policy.default)
    part = msg.get_payload()[0]
    assert part.get_content_type() == "text/plain"
    assert part.get_content().startswith("Hello from mx.test.\n")


def test_courierd_reads_the_files(tmp_path: Path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "courierd").write_text("")
    (etc / "me").write_text("mx.test\n")
    assert load_config(etc).dsn_texts == dsn.DsnTexts()
    (etc / "dsnfailed.txt").write_bytes(b"\nNOPE \xff:\n")
    got = load_config(etc).dsn_texts
    assert got.failed == "\nNOPE \udcff:\n" and got.header == dsn.DEFAULT_TEXTS["header"]
    body = build(dsn.FAILED, [dsn.Report(Recipient("x@example.org"), dsn.FAILED, "5.0.0")], got)
    assert b"\nNOPE \xff:\n" in body          # the admin's bytes, as they are
