"""The on-disk mail queue shared by submitters and the queue manager.

See queue.py for the layout, entry.py for a queue entry's file and envelope.py
for the envelope format. A queue entry holds the message with LF line ends
(the SMTP server converts the wire's CRLF; it refuses messages with bare CR
or LF, so this loses nothing) and the Received: line first.
"""

from libcourier.spool.entry import DataFile, data_span
from libcourier.spool.envelope import Envelope, Recipient, SpoolError
from libcourier.spool.queue import (
    data_present,
    ensure_spool,
    entry_exists,
    list_queue,
    new_qid,
    notify,
    open_data,
    purge_tmp,
    quarantine,
    read_envelope,
    remove,
    retire,
    rewrite_envelope,
)
from libcourier.spool.writer import SpoolWriter

__all__ = [
    "DataFile",
    "Envelope",
    "Recipient",
    "SpoolError",
    "SpoolWriter",
    "data_present",
    "data_span",
    "ensure_spool",
    "entry_exists",
    "list_queue",
    "new_qid",
    "notify",
    "open_data",
    "purge_tmp",
    "quarantine",
    "read_envelope",
    "remove",
    "retire",
    "rewrite_envelope",
]
