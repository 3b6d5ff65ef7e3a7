"""SMTP command grammar (RFC 5321 §4.1, with RFC 1869/1870/6152/6531 parameters).

Pure functions over already-framed command lines: no I/O, no state. The server
core uses them; so will the client side (libcourier.smtp.client) for checking
what it sends. Errors are raised as libcourier.proto.ClientError whose `code`
holds "<reply code> <enhanced code>", so a caller can answer without a table.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from libcourier.proto.errors import ClientError

# RFC 5321 §4.5.3.1: size limits.
MAX_COMMAND_LINE = 512       # §4.5.3.1.4, including CRLF
MAX_TEXT_LINE = 1000         # §4.5.3.1.6, including CRLF
MAX_LOCAL_PART = 64          # §4.5.3.1.1
MAX_DOMAIN = 255             # §4.5.3.1.2
MAX_PATH = 256               # §4.5.3.1.3, including the angle brackets
MAX_PARAMS = 16              # ours: no extension needs more on one command


def syntax_error(text: str, code: int = 501, enhanced: str = "5.5.4") -> ClientError:
    return ClientError(text, f"{code} {enhanced}")


@dataclass(frozen=True, slots=True)
class Command:
    verb: str        # upper-cased, e.g. "MAIL"
    arg: str         # the rest of the line after one space, CRLF removed, not stripped inside


_VERB = re.compile(r"[A-Za-z][A-Za-z0-9]{0,15}")
_COMMAND_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")   # control characters but TAB


def parse_command(line: bytes) -> Command:
    """Split a command line (with or without its CRLF) into verb and argument.

    The line is decoded as UTF-8 (RFC 6531 allows UTF-8 in MAIL/RCPT after
    SMTPUTF8; in a pure-ASCII session it is ASCII anyway). Control characters
    other than TAB are refused: they have no place in any command (RFC 5321
    §4.1.1 grammar) and NUL in particular confuses logs and C-based peers.
    """
    if line.endswith(b"\r\n"):
        line = line[:-2]
    elif line.endswith(b"\n"):
        line = line[:-1]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise syntax_error("Invalid characters in command", 500, "5.5.2") from None
    if _COMMAND_CONTROL.search(text):
        raise syntax_error("Invalid characters in command", 500, "5.5.2")
    verb, _, arg = text.partition(" ")
    if not _VERB.fullmatch(verb):
        raise syntax_error("Syntax error, command unrecognized", 500, "5.5.2")
    return Command(verb.upper(), arg)


# --- RFC 5321 §4.1.2 -----------------------------------------------------
#   atext = ALPHA / DIGIT / "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" /
#           "/" / "=" / "?" / "^" / "_" / "`" / "{" / "|" / "}" / "~"   (RFC 5322)
#   RFC 6531 §3.3 adds UTF8-non-ascii to atext, qtextSMTP and sub-domain.
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]"
_DOT_STRING = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
#   Quoted-string = DQUOTE *QcontentSMTP DQUOTE
#   QcontentSMTP  = qtextSMTP / quoted-pairSMTP ; quoted-pairSMTP = "\" %d32-126
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"')
#   sub-domain = Let-dig [Ldh-str]   (U-labels allowed with SMTPUTF8)
_LABEL = r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]*[A-Za-z0-9\u0080-\U0010ffff])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
#   General-address-literal = Standardized-tag ":" 1*dcontent
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9\-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+")


@dataclass(frozen=True, slots=True)
class Mailbox:
    local: str        # as written: a Dot-string, or a Quoted-string with its quotes
    domain: str       # a domain or an address literal with its brackets; "" only for "postmaster"

    @property
    def address(self) -> str:
        return f"{self.local}@{self.domain}" if self.domain else self.local

    @property
    def local_unquoted(self) -> str:
        """The local part with quoting removed (RFC 5321 §4.1.2: the same mailbox)."""
        if self.local.startswith('"'):
            return re.sub(r"\\(.)", r"\1", self.local[1:-1])
        return self.local

    @property
    def is_ascii(self) -> bool:
        return self.address.isascii()


def _check_domain(domain: str) -> None:
    if domain.startswith("["):
        if not domain.endswith("]"):
            raise syntax_error("Invalid address literal", 501, "5.1.3")
        inner = domain[1:-1]
        if inner[:5].lower() == "ipv6:":
            try:
                ipaddress.IPv6Address(inner[5:])
            except ValueError:
                raise syntax_error("Invalid IPv6 address literal", 501, "5.1.3") from None
            return
        if ":" in inner:
            if not _GENERAL_LITERAL.fullmatch(inner):
                raise syntax_error("Invalid address literal", 501, "5.1.3")
            return
        try:
            ipaddress.IPv4Address(inner)
        except ValueError:
            raise syntax_error("Invalid IPv4 address literal", 501, "5.1.3") from None
        return
    if len(domain.encode()) > MAX_DOMAIN or not _DOMAIN.fullmatch(domain):
        raise syntax_error("Invalid domain name", 501, "5.1.3")
    if any(len(label.encode()) > 63 for label in domain.split(".")):
        raise syntax_error("Invalid domain name", 501, "5.1.3")


def parse_mailbox(text: str) -> Mailbox:
    """Mailbox = Local-part "@" ( Domain / address-literal )   (RFC 5321 §4.1.2)."""
    if text.startswith('"'):
        m = _QUOTED.match(text)
        if m is None:
            raise syntax_error("Invalid quoted local part", 501, "5.1.3")
        local, rest = m.group(), text[m.end():]
    else:
        local, at, rest = text.partition("@")
        rest = at + rest
        if not _DOT_STRING.fullmatch(local):
            raise syntax_error("Invalid local part", 501, "5.1.3")
    if not rest.startswith("@") or len(rest) < 2:
        raise syntax_error("Address must have a domain", 501, "5.1.3")
    if len(local.encode()) > MAX_LOCAL_PART:
        raise syntax_error("Local part too long", 501, "5.1.3")
    domain = rest[1:]
    _check_domain(domain)
    return Mailbox(local, domain)


# esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
# esmtp-value   = 1*(%d33-60 / %d62-126)   (RFC 6531 §3.3 adds UTF8-non-ascii)
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+")


@dataclass(frozen=True, slots=True)
class PathArg:
    mailbox: Mailbox | None            # None: the null reverse-path "<>"
    params: dict[str, str | None]      # upper-cased keyword -> value (None: no "=")

    @property
    def address(self) -> str:
        return "" if self.mailbox is None else self.mailbox.address


def _split_path(arg: str, prefix: str) -> tuple[str, str]:
    """Take `FROM:<path>` / `TO:<path>` apart into (path, rest).

    RFC 5321 has no space after the colon, but many clients send one; as
    Courier and Postfix do, we allow spaces there and around the path.
    """
    if arg[: len(prefix)].upper() != prefix:
        raise syntax_error(f"Syntax error, expected {prefix}<address>")
    rest = arg[len(prefix):].lstrip(" ")
    if not rest.startswith("<"):
        raise syntax_error("Syntax error, address must be in <angle brackets>", 501, "5.5.4")
    if '"' not in rest:
        i = rest.find(">")      # nearly every path: the first ">" ends it
        if i < 0:
            raise syntax_error("Syntax error, missing '>'", 501, "5.5.4")
    else:
        i = _quoted_path_end(rest)
    path, after = rest[1:i], rest[i + 1:]
    if len(path) + 2 > MAX_PATH:
        raise syntax_error("Path too long", 501, "5.1.3")
    if after and not after.startswith(" "):
        raise syntax_error("Syntax error after the address", 501, "5.5.4")
    return path, after


def _quoted_path_end(rest: str) -> int:
    """Where "<...>" ends when it holds a quoted local part, in which ">" (and a
    backslash-quoted '"') may appear: scan."""
    i, quoted = 1, False
    while i < len(rest):
        ch = rest[i]
        if quoted and ch == "\\":
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            return i
        i += 1
    raise syntax_error("Syntax error, missing '>'", 501, "5.5.4")


def _strip_adl(path: str) -> str:
    # A-d-l (source route) "@a,@b:" is obsolete: RFC 5321 §4.1.1.3/§C says
    # receivers SHOULD ignore it. Accept and drop it.
    if path.startswith("@"):
        head, colon, mailbox = path.partition(":")
        if not colon:
            raise syntax_error("Invalid source route", 501, "5.1.3")
        for hop in head.split(","):
            if not hop.startswith("@"):
                raise syntax_error("Invalid source route", 501, "5.1.3")
            _check_domain(hop[1:])
        return mailbox
    return path


def parse_params(text: str) -> dict[str, str | None]:
    """Mail-parameters = esmtp-param *(SP esmtp-param)   (RFC 5321 §4.1.2)."""
    params: dict[str, str | None] = {}
    words = text.split(" ")
    for word in words:
        if not word:
            continue   # tolerate doubled spaces
        key, eq, value = word.partition("=")
        if not _KEYWORD.fullmatch(key):
            raise syntax_error(f"Invalid parameter {word[:40]!r}", 501, "5.5.4")
        if eq and not _VALUE.fullmatch(value):
            raise syntax_error(f"Invalid value for {key.upper()}", 501, "5.5.4")
        key = key.upper()
        if key in params:
            raise syntax_error(f"Duplicate parameter {key}", 501, "5.5.4")
        params[key] = value if eq else None
        if len(params) > MAX_PARAMS:
            raise syntax_error("Too many parameters", 501, "5.5.4")
    return params


def parse_mail_from(arg: str) -> PathArg:
    """MAIL FROM:<reverse-path> [SP Mail-parameters]   (RFC 5321 §4.1.1.2)."""
    path, rest = _split_path(arg, "FROM:")
    params = parse_params(rest)
    if path == "":
        return PathArg(None, params)
    return PathArg(parse_mailbox(_strip_adl(path)), params)


def parse_rcpt_to(arg: str) -> PathArg:
    """RCPT TO:<forward-path> [SP Rcpt-parameters]   (RFC 5321 §4.1.1.3).

    `<Postmaster>` without a domain must be accepted (§4.1.1.3, §4.5.1).
    """
    path, rest = _split_path(arg, "TO:")
    params = parse_params(rest)
    if path.lower() == "postmaster":
        return PathArg(Mailbox(path, ""), params)
    if path == "":
        raise syntax_error("Empty recipient address", 501, "5.1.3")
    return PathArg(parse_mailbox(_strip_adl(path)), params)


def parse_helo_domain(arg: str) -> str:
    """EHLO/HELO argument: Domain / address-literal (RFC 5321 §4.1.1.1).

    We check only that there is one printable word: many real clients send
    names that are not valid domains (Windows hostnames with underscores), and
    Courier only looks closer with BOFHCHECKHELO.
    """
    word = arg.strip(" \t")
    if not word or " " in word or "\t" in word:
        raise syntax_error("EHLO requires a domain or address literal", 501, "5.5.4")
    if len(word.encode()) > MAX_DOMAIN:
        raise syntax_error("Domain name too long", 501, "5.5.4")
    return word


# --- xtext (RFC 3461 §4): how ORCPT and ENVID values travel ----------------

def xtext_decode(value: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "+":
            hexpair = value[i + 1:i + 3]
            if len(hexpair) != 2 or not all(c in "0123456789ABCDEF" for c in hexpair):
                raise syntax_error("Invalid xtext", 501, "5.5.4")
            out.append(chr(int(hexpair, 16)))
            i += 3
            continue
        if not "!" <= ch <= "~" or ch == "=":
            raise syntax_error("Invalid xtext", 501, "5.5.4")
        out.append(ch)
        i += 1
    return "".join(out)


def xtext_encode(value: str) -> str:
    return "".join(ch if "!" <= ch <= "~" and ch not in "+=" else
                   "".join(f"+{b:02X}" for b in ch.encode()) for ch in value)


# --- DSN parameters (RFC 3461 §4) ------------------------------------------
# A bad value is answered 555 5.5.4 (RFC 5321 §4.1.1.11: parameter not
# recognized; RFC 3463 5.5.4: invalid command arguments). The values are kept
# decoded (ORCPT as "addr-type;address") and may not hold control characters:
# they end up in DSN header fields (RFC 3464 §2.2.1, §2.3.1), where a CR or LF
# would let a client write headers of its own.

MAX_ENVID = 100              # RFC 3461 §4.4
MAX_ORCPT = 500              # RFC 3461 §4.2
NOTIFY_WORDS = ("SUCCESS", "FAILURE", "DELAY")
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+")     # addr-type = atom (RFC 3461 §4.2)


def _dsn_error(text: str) -> ClientError:
    return syntax_error(text, 555, "5.5.4")


def _xtext_value(value: str, what: str) -> str:
    """xtext = *( xchar / hexchar ), hexchar = "+" 2(DIGIT / %x41-46)  (RFC 3461 §4).

    The octets are UTF-8 (RFC 6533 §3 for "utf-8" addresses; plain ASCII is a subset).
    """
    out = bytearray()
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "+":
            pair = value[i + 1:i + 3]
            if len(pair) != 2 or not all(c in "0123456789ABCDEF" for c in pair):
                raise _dsn_error(f"Invalid xtext in {what}.")
            out.append(int(pair, 16))
            i += 3
            continue
        if not "!" <= ch <= "~" or ch == "=":
            raise _dsn_error(f"Invalid xtext in {what}.")
        out.append(ord(ch))
        i += 1
    try:
        text = out.decode("utf-8")
    except UnicodeDecodeError:
        raise _dsn_error(f"Invalid UTF-8 in {what}.") from None
    if any(c < " " or c == "\x7f" for c in text):
        raise _dsn_error(f"Control characters in {what}.")
    return text


def parse_ret(value: str | None) -> str:
    """RET=FULL / RET=HDRS (RFC 3461 §4.3)."""
    ret = (value or "").upper()
    if ret not in ("FULL", "HDRS"):
        raise _dsn_error("RET must be FULL or HDRS.")
    return ret


def parse_security(value: str | None) -> str | None:
    """Courier's SECURITY=NONE / SECURITY=STARTTLS MAIL parameter
    (doc/draft-varshavchik-security-smtpext.txt §4); None for NONE, which is
    the same as no parameter at all."""
    level = (value or "").upper()
    if level == "NONE":
        return None
    if level != "STARTTLS":
        raise ClientError("SECURITY must be NONE or STARTTLS.", "501 5.5.4")
    return level


def parse_envid(value: str | None) -> str:
    """ENVID=xtext, at most 100 characters as sent (RFC 3461 §4.4); returns it decoded."""
    if not value:
        raise _dsn_error("ENVID needs a value.")
    if len(value) > MAX_ENVID:
        raise _dsn_error("ENVID too long.")
    return _xtext_value(value, "ENVID")


def parse_notify(value: str | None) -> str:
    """NOTIFY="NEVER" / 1#( "SUCCESS" / "FAILURE" / "DELAY" )  (RFC 3461 §4.1).

    Returns the upper-cased list as sent ("NEVER" or e.g. "SUCCESS,FAILURE");
    NEVER cannot be combined, and no keyword may repeat.
    """
    words = (value or "").upper().split(",")
    if words == ["NEVER"]:
        return "NEVER"
    if not value or any(w not in NOTIFY_WORDS for w in words):
        raise _dsn_error("NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY.")
    if len(set(words)) != len(words):
        raise _dsn_error("NOTIFY lists a keyword twice.")
    return ",".join(words)


def parse_orcpt(value: str | None) -> str:
    """ORCPT=addr-type ";" xtext  (RFC 3461 §4.2); returns "addr-type;address" decoded."""
    if not value:
        raise _dsn_error("ORCPT needs a value.")
    if len(value) > MAX_ORCPT:
        raise _dsn_error("ORCPT too long.")
    kind, semi, addr = value.partition(";")
    if not semi or not _ATOM.fullmatch(kind) or not addr:
        raise _dsn_error("ORCPT must be addr-type;xtext.")
    return f"{kind.lower()};{_xtext_value(addr, 'ORCPT')}"


@dataclass(frozen=True, slots=True)
class BdatArg:
    size: int | None        # None: no readable chunk size, so the chunk cannot be found
    last: bool
    error: str | None       # why the command is refused; None if it is well formed


def parse_bdat(arg: str) -> BdatArg:
    """BDAT SP chunk-size [SP end-marker]  (RFC 3030 §2).

    chunk-size = 1*DIGIT, end-marker = "LAST". The size is returned even when
    the rest is bad, so the server can still read the chunk and stay in step.
    At most 18 digits: any size fits; a big one is a size-limit matter.
    """
    words = arg.split(" ")
    head = words[0]
    if not head.isascii() or not head.isdigit() or len(head) > 18:
        return BdatArg(None, False, "Syntax: BDAT chunk-size [LAST]")
    size = int(head)
    if len(words) == 1:
        return BdatArg(size, False, None)
    if len(words) == 2 and words[1].upper() == "LAST":
        return BdatArg(size, True, None)
    return BdatArg(size, False, "Syntax: BDAT chunk-size [LAST]")
