"""SMTP grammar, reply codes and dot-stuffing, shared by courier-smtpd and courier-deliver.

- grammar: command lines, paths (RFC 5321 §4.1.2), ESMTP parameters, xtext
- reply: the one reply formatter (RFC 5321 §4.2, RFC 2034 enhanced codes)
- dotstuff: transparency (RFC 5321 §4.5.2)
A client core (client.py) can be added next to these; it shares the grammar.
"""

from libcourier.smtp.dotstuff import END_OF_DATA, dot_stuff, is_end_of_data, unstuff_line
from libcourier.smtp.grammar import (
    MAX_COMMAND_LINE,
    MAX_TEXT_LINE,
    Command,
    Mailbox,
    PathArg,
    parse_command,
    parse_helo_domain,
    parse_mail_from,
    parse_mailbox,
    parse_params,
    parse_rcpt_to,
    xtext_decode,
    xtext_encode,
)
from libcourier.smtp.reply import Reply, format_reply

__all__ = [
    "END_OF_DATA",
    "MAX_COMMAND_LINE",
    "MAX_TEXT_LINE",
    "Command",
    "Mailbox",
    "PathArg",
    "Reply",
    "dot_stuff",
    "format_reply",
    "is_end_of_data",
    "parse_command",
    "parse_helo_domain",
    "parse_mail_from",
    "parse_mailbox",
    "parse_params",
    "parse_rcpt_to",
    "unstuff_line",
    "xtext_decode",
    "xtext_encode",
]
