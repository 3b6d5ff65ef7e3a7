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


def _subject(kind: str) -> str:
    return {FAILED: "Undelivered Mail Returned to Sender",
            DELAYED: "WARNING: delayed mail",
            DELIVERED: "Delivery Status Notification (Success)"}[kind]


def _human_text(me: str, kind: str, reports: list[Report], until: float | None) -> str:
    lines = [f"This is the mail delivery system at {me}.", ""]
    if kind == FAILED:
        lines += ["Your message could not be delivered to one or more recipients.",
                  "It is attached below.", ""]
    elif kind == DELAYED:
        lines += ["Your message has not been delivered yet to the recipients below.",
                  "Delivery will be tried again"
                  + (f" until {_date(until)}" if until else "") + ";",
                  "you do not need to send it again.", ""]
    else:
        lines += ["Your message was delivered to the recipients below.", ""]
    for r in reports:
        what = r.diagnostic.partition(";")[2].strip() if r.diagnostic else r.status
        where = f" (at {r.remote_mta})" if r.remote_mta else ""
        lines.append(f"<{_clean(r.recipient.address)}>{where}: {_clean(r.action)}: "
                     f"{_clean(what)}")
    return "\n".join(lines) + "\n"


def build_dsn(*, me: str, dsnfrom: str, env: Envelope, reports: list[Report], kind: str,
              original: bytes, original_size: int, dsnlimit: int, now: float,
              message_id: str, will_retry_until: float | None = None) -> bytes:
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
        f"Subject: {_subject(kind)}",
        f"Date: {_date(now)}",
        f"Message-ID: {message_id}",
        "Auto-Submitted: auto-replied",       # RFC 3834 §5
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\n'
        f' boundary="{boundary}"',
    ]
    text = _human_text(me, kind, reports, will_retry_until)
    out = ["\n".join(head), "", "This is a MIME-formatted delivery status notification.", "",
           f"--{boundary}",
           "Content-Type: text/plain; charset=utf-8",
           "Content-Transfer-Encoding: 8bit",
           "Content-Description: Notification", "", text.rstrip("\n"), "",
           f"--{boundary}",
           "Content-Type: " + ("message/global-delivery-status" if utf8
                               else "message/delivery-status"),
           "Content-Description: Delivery report", "", "\n".join(status), "",
           f"--{boundary}",
           f"Content-Type: {third_type}",
           *(["Content-Transfer-Encoding: 8bit"] if any(b >= 0x80 for b in third) else []),
           "Content-Description: " + ("Undelivered message" if full else "Message headers"),
           "", ""]
    body = "\n".join(out).encode("utf-8")
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
