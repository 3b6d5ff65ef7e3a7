"""Delivery status notifications (RFC 3464) built from a queue entry, without I/O.

A DSN is a multipart/report; report-type=delivery-status (RFC 6522) with
three parts: a text for people, the machine-readable message/delivery-status
(per-message fields, then one block per recipient), and the original message
(message/rfc822 with RET=FULL, text/rfc822-headers with RET=HDRS, for delay
and success notices, and when the message is larger than dsnlimit). A message
sent with SMTPUTF8 gets the RFC 6533 types (message/global-delivery-status,
message/global, text/global-headers).

Who gets one (RFC 3461 §4.1): NOTIFY=NEVER never; without NOTIFY, failures
and delays; SUCCESS only when asked. The null sender never gets one (RFC 5321
§6.1: no bounce of a bounce); queue.py sends a failed DSN of ours to
postmaster instead (a double bounce) and drops a failed double bounce.

The text is built by hand (not the email package): the same bytes every time,
LF line ends as the spool keeps them, and nothing imported lazily after the
privilege drop.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass

from libcourier.smtp.grammar import xtext_encode
from libcourier.spool import Envelope, Recipient

MAX_FIELD = 900            # a DSN field's value stays well under RFC 5322's 998
MAX_REPORTS = 1000         # recipients listed in one DSN

FAILED, DELAYED, DELIVERED, RELAYED = "failed", "delayed", "delivered", "relayed"

# How queue.py marks the messages it makes, in the envelope's `client` field
# (smtpd writes "[ip] ..." there, sendmail "uid N", so these cannot collide).
ORIGIN_DSN = "courierd: dsn"
ORIGIN_DOUBLE = "courierd: double bounce"


@dataclass(frozen=True, slots=True)
class Report:
    """What happened to one recipient, for its DSN block."""
    recipient: Recipient
    action: str                       # failed / delayed / delivered / relayed
    status: str                       # RFC 3463 "5.1.1"
    diagnostic: str | None = None     # "smtp; 550 5.1.1 no such user"
    remote_mta: str | None = None     # the server that answered


def notify_wants(notify: str | None, what: str) -> bool:
    """RFC 3461 §4.1: does this recipient's NOTIFY ask for `what`
    (SUCCESS, FAILURE, DELAY)? Absent NOTIFY means FAILURE,DELAY."""
    if notify is None:
        return what in ("FAILURE", "DELAY")
    words = [w.strip() for w in notify.upper().split(",")]
    return "NEVER" not in words and what in words


def _clean(value: str) -> str:
    # Header fields hold no control characters: a server's reply text must
    # not be able to add fields of its own.
    value = "".join(ch if ch >= " " and ch != "\x7f" else " " for ch in value)
    return value[:MAX_FIELD]


def _date(t: float) -> str:
    return email.utils.formatdate(t, localtime=False)


def _headers_of(original: bytes) -> bytes:
    end = original.find(b"\n\n")
    head = original if end < 0 else original[:end + 1]
    return head if head.endswith(b"\n") or not head else head + b"\n"


# Courier's DSN texts (module.dsn, ETC/dsn*.txt): the subjects, the start of
# the text part (its own header lines first: [#ME#], [#FROMTIME#] and
# [#FROMMTA#] are filled in), one heading per kind of notice (the delayed one
# with %s for this host), and the closing text. `courier init` ships these
# defaults as files; config.py reads the files, so an admin's Courier texts
# carry over. Our own wording, Courier's file names and markers.
RULE = "-" * 75
DEFAULT_TEXTS: dict[str, str] = {
    "subject_warn": "WARNING: delayed mail",
    "subject_notice": "Mail delivery status notification",
    "header": ('Content-Type: text/plain; charset="utf-8"\n\n'
               "This is a delivery status notification from [#ME#],\n"
               "running courier-py.\n\n"
               "Your message arrived here on [#FROMTIME#]\n"
               "from [#FROMMTA#].\n"),
    "delayed": (f"\n{RULE}\n\n"
                "                        YOUR MESSAGE IS DELAYED\n\n"
                "%s has not yet been able to deliver your message to the\n"
                "recipients below. It keeps trying; you do not need to send it\n"
                "again. You will hear from it again only if it gives up.\n\n"
                "What happened at the last attempt, for each of them:\n"),
    "failed": (f"\n{RULE}\n\n"
               "                          UNDELIVERABLE MAIL\n\n"
               "Your message could not be delivered to these recipients:\n"),
    "relayed": (f"\n{RULE}\n\n"
                "                  PASSED ON, NO RECEIPT POSSIBLE\n\n"
                "Your message was handed to a mail server that does not send\n"
                "delivery receipts, for these recipients:\n"),
    "delivered": (f"\n{RULE}\n\n"
                  "                              DELIVERED\n\n"
                  "Your message was delivered to these recipients:\n"),
    "footer": (f"\n{RULE}\n\n"
               "Recipients not named above are not covered by this notice; other\n"
               "notices may follow for them. The message, or its header, is\n"
               "attached.\n"),
}
TEMPLATE_FILES = {
    "subject_warn": "dsnsubjectwarn.txt", "subject_notice": "dsnsubjectnotice.txt",
    "header": "dsnheader.txt", "footer": "dsnfooter.txt", "delayed": "dsndelayed.txt",
    "relayed": "dsnrelayed.txt", "delivered": "dsndelivered.txt", "failed": "dsnfailed.txt",
}
MAX_TEMPLATE = 16 * 1024        # bytes of one template file used
_FIELD_LINE = re.compile(r"[!-9;-~]+:")


@dataclass(frozen=True, slots=True)
class DsnTexts:
    """The texts of Courier's ETC/dsn*.txt files (str, surrogate-escaped bytes)."""
    subject_warn: str = DEFAULT_TEXTS["subject_warn"]
    subject_notice: str = DEFAULT_TEXTS["subject_notice"]
    header: str = DEFAULT_TEXTS["header"]
    footer: str = DEFAULT_TEXTS["footer"]
    delayed: str = DEFAULT_TEXTS["delayed"]
    relayed: str = DEFAULT_TEXTS["relayed"]
    delivered: str = DEFAULT_TEXTS["delivered"]
    failed: str = DEFAULT_TEXTS["failed"]


def texts_from_files(files: dict[str, bytes]) -> DsnTexts:
    """DsnTexts from the contents of the template files present (by field name);
    a missing file keeps its default. Subjects are their first line."""
    kw: dict[str, str] = {}
    for name, data in files.items():
        text = data[:MAX_TEMPLATE].decode("utf-8", "surrogateescape")
        if name.startswith("subject"):
            text = _clean(text.strip().partition("\n")[0]) or DEFAULT_TEXTS[name]
        kw[name] = text
    return DsnTexts(**kw)


def _subject(kind: str, texts: DsnTexts) -> str:
    return texts.subject_warn if kind == DELAYED else texts.subject_notice


def _fill_header(template: str, me: str, from_time: str, from_mta: str) -> str:
    """Courier's print_header: [#ME#], [#FROMTIME#], [#FROMMTA#]; other text as is."""
    text = (template.replace("[#ME#]", me).replace("[#FROMTIME#]", from_time)
            .replace("[#FROMMTA#]", from_mta))
    if not _FIELD_LINE.match(text):
        # No header lines of its own: the part would swallow its first line.
        text = "Content-Type: text/plain; charset=utf-8\n\n" + text
    return text if text.endswith("\n") else text + "\n"


def _recipient_lines(r: Report) -> list[str]:
    # Courier's layout: " <rcpt>:", then the server ("     host:") and what it
    # said (" <<< reply"), or " *** " for a problem of our own.
    out = ["", f" <{_clean(r.recipient.address)}>:"]
    if r.remote_mta:
        out.append(f"     {_clean(r.remote_mta)}:")
    kind, _, what = (r.diagnostic or "").partition(";")
    what = _clean(what.strip()) or _clean(r.status)
    out.append((" <<< " if kind.strip().lower() == "smtp" else " *** ") + what)
    return out


DEFAULT = DsnTexts()


def _human_text(me: str, kind: str, reports: list[Report], texts: DsnTexts,
                from_time: str, from_mta: str) -> str:
    parts = [_fill_header(texts.header, me, from_time, from_mta)]
    if kind == DELAYED:
        parts.append(texts.delayed.replace("%s", me, 1).replace("%%", "%"))
        for r in reports:
            parts.append("\n".join(_recipient_lines(r)) + "\n")
    else:
        for action, heading in ((DELIVERED, texts.delivered), (RELAYED, texts.relayed),
                                (FAILED, texts.failed)):
            group = [r for r in reports if r.action == action]
            if group:
                parts.append(heading)
                for r in group:
                    parts.append("\n".join(_recipient_lines(r)) + "\n")
    parts.append(texts.footer)
    return "".join(p if p.endswith("\n") else p + "\n" for p in parts)


def build_dsn(*, me: str, dsnfrom: str, env: Envelope, reports: list[Report], kind: str,
              original: bytes, original_size: int, dsnlimit: int, now: float,
              message_id: str, will_retry_until: float | None = None,
              texts: DsnTexts | None = None) -> bytes:
    """The DSN message (LF line ends) telling env.sender about `reports`.

    `original` is the spooled message, possibly cut short by the caller;
    `original_size` its real size. kind: FAILED (a bounce), DELAYED, DELIVERED
    (success and relay notices; the per-recipient actions say which)."""
    reports = reports[:MAX_REPORTS]
    boundary = f"=_{message_id.strip('<>').replace('@', '_')}"
    utf8 = env.smtputf8
    full = (kind == FAILED and env.ret != "HDRS" and original_size <= dsnlimit
            and len(original) >= original_size)
    if full:
        third_type = "message/global" if utf8 else "message/rfc822"
        third = original if original.endswith(b"\n") or not original else original + b"\n"
    else:
        third_type = "text/global-headers" if utf8 else "text/rfc822-headers"
        third = _headers_of(original)

    status = [f"Reporting-MTA: dns; {_clean(me)}"]
    if env.envid is not None:
        status.append(f"Original-Envelope-Id: {_clean(xtext_encode(env.envid))}")
    status.append(f"Arrival-Date: {_date(env.received)}")
    for r in reports:
        status.append("")
        rc = r.recipient
        if rc.orcpt:
            status.append(f"Original-Recipient: {_clean(rc.orcpt)}")
        status.append(f"Final-Recipient: {'utf-8' if utf8 else 'rfc822'}; "
                      f"{_clean(rc.address)}")
        status.append(f"Action: {r.action}")
        status.append(f"Status: {_clean(r.status)}")
        if r.remote_mta:
            status.append(f"Remote-MTA: dns; {_clean(r.remote_mta)}")
        if r.diagnostic:
            status.append(f"Diagnostic-Code: {_clean(r.diagnostic)}")
        status.append(f"Last-Attempt-Date: {_date(now)}")
        if r.action == DELAYED and will_retry_until is not None:
            status.append(f"Will-Retry-Until: {_date(will_retry_until)}")

    head = [
        f"From: {dsnfrom}",
        f"To: <{_clean(env.sender)}>",
        f"Subject: {_subject(kind, texts or DEFAULT)}",
        f"Date: {_date(now)}",
        f"Message-ID: {message_id}",
        "Auto-Submitted: auto-replied",       # RFC 3834 §5
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\n'
        f' boundary="{boundary}"',
    ]
    text = _human_text(me, kind, reports, texts or DEFAULT, _date(env.received),
                       _clean(env.client) or "unknown")
    out = ["\n".join(head), "", "This is a MIME-formatted delivery status notification.", "",
           f"--{boundary}",
           "Content-Transfer-Encoding: 8bit",
           text.rstrip("\n"), "",
           f"--{boundary}",
           "Content-Type: " + ("message/global-delivery-status" if utf8
                               else "message/delivery-status"),
           "Content-Description: Delivery report", "", "\n".join(status), "",
           f"--{boundary}",
           f"Content-Type: {third_type}",
           *(["Content-Transfer-Encoding: 8bit"] if any(b >= 0x80 for b in third) else []),
           "Content-Description: " + ("Undelivered message" if full else "Message headers"),
           "", ""]
    body = "\n".join(out).encode("utf-8", "surrogateescape")
    return body + third + f"\n--{boundary}--\n".encode()


def dsn_envelope(env: Envelope, dsn: bytes, now: float, *, to: str, origin: str) -> Envelope:
    """The null-sender envelope a DSN is queued with."""
    eight = any(b >= 0x80 for b in dsn)
    return Envelope(sender="", recipients=(Recipient(to),), received=now,
                    body="8BITMIME" if eight else "7BIT",
                    smtputf8=env.smtputf8 and eight, client=origin,
                    # The SECURITY draft §6: a DSN may quote the message, so it
                    # travels at the message's security level.
                    security=env.security)
