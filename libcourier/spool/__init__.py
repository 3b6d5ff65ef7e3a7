"""The on-disk mail queue shared by submitters and the queue manager.

See queue.py for the layout and envelope.py for the envelope file format.
Data files hold the message with LF line ends (the SMTP server converts the
wire's CRLF; it refuses messages with bare CR or LF, so this loses nothing)
and the Received: line first.
"""

from libcourier.spool.envelope import Envelope, Recipient, SpoolError
from libcourier.spool.queue import (
    ensure_spool,
    list_queue,
    new_qid,
    notify,
    open_data,
    purge_tmp,
    quarantine,
    read_envelope,
    remove,
    rewrite_envelope,
)
from libcourier.spool.writer import SpoolWriter

__all__ = [
    "Envelope",
    "Recipient",
    "SpoolError",
    "SpoolWriter",
    "ensure_spool",
    "list_queue",
    "new_qid",
    "notify",
    "open_data",
    "purge_tmp",
    "quarantine",
    "read_envelope",
    "remove",
    "rewrite_envelope",
]
