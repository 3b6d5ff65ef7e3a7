r"""Courier's shell-style configuration files (esmtpd, imapd, pop3d, authdaemonrc, ...).

Courier's start scripts *source* these files with /bin/sh, so the grammar is the
subset of shell assignments the shipped files use (sysconftool format):

    ##NAME: KEY:version      upgrade marker, a comment to us
    # comment
    KEY=value                unquoted; ends at whitespace; `# ...` after it is a comment
    KEY="text $OTHER ${X}"   double quotes: $VAR/${VAR} expand, \\ \" \$ \` escape
    KEY='literal'            single quotes: nothing expands
    KEY="two                 a quoted value may go on over lines
    lines"
    export KEY=value         `export` is accepted and ignored

Words may be glued together (KEY="a"'b'c). $VAR refers to a key set earlier in
the same chain of files, else to the process environment, else expands to "".
Anything else is an error with file:line: a silently ignored line is how a
misconfigured mail server ends up open.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from libcourier.config.errors import ConfigError

MAX_LINE = 64 * 1024
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGN = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=")


class _Unterminated(ConfigError):
    """A quote or ${ still open at the end of the text: the value may go on
    over the next line (parse_rc), else it is this ConfigError."""


@dataclass(frozen=True, slots=True)
class RcValue:
    """One assignment: the expanded value and where it was made."""

    value: str
    path: str
    line: int


def _expand_var(text: str, i: int, scope: Mapping[str, RcValue], env: Mapping[str, str],
                where: tuple[str, int]) -> tuple[str, int]:
    """Expand the $NAME or ${NAME} starting at text[i] == '$'; return (value, next index)."""
    if i + 1 < len(text) and text[i + 1] == "{":
        end = text.find("}", i + 2)
        if end < 0:
            raise _Unterminated("unterminated ${", *where)
        name = text[i + 2:end]
        if not _NAME.fullmatch(name):
            raise ConfigError(f"bad variable name ${{{name}}}", *where)
        nxt = end + 1
    else:
        m = _NAME.match(text, i + 1)
        if not m:
            return "$", i + 1  # a lone $ is literal, as in sh
        name = m.group(0)
        nxt = m.end()
    if name in scope:
        return scope[name].value, nxt
    return env.get(name, ""), nxt


def _parse_value(text: str, scope: Mapping[str, RcValue], env: Mapping[str, str],
                 where: tuple[str, int]) -> str:
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t":
            rest = text[i:].strip()
            if rest and not rest.startswith("#"):
                raise ConfigError(f"unexpected text after value: {rest!r} (quote values with spaces)",
                                  *where)
            break
        if c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise _Unterminated("unterminated single quote", *where)
            out.append(text[i + 1:end])
            i = end + 1
        elif c == '"':
            i += 1
            while True:
                if i >= n:
                    raise _Unterminated("unterminated double quote", *where)
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and i + 1 < n and text[i + 1] in '\\"$`':
                    out.append(text[i + 1])
                    i += 2
                elif c == "$":
                    val, i = _expand_var(text, i, scope, env, where)
                    out.append(val)
                elif c == "`":
                    raise ConfigError("command substitution is not supported", *where)
                else:
                    out.append(c)
                    i += 1
        elif c == "$":
            val, i = _expand_var(text, i, scope, env, where)
            out.append(val)
        elif c == "\\" and i + 1 < n:
            out.append(text[i + 1])
            i += 2
        elif c in "`;&|<>()":
            raise ConfigError(f"shell syntax {c!r} is not supported in a value", *where)
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_rc(text: str, path: str = "<string>", scope: dict[str, RcValue] | None = None,
             env: Mapping[str, str] | None = None) -> dict[str, RcValue]:
    """Parse one file's text, adding to (and expanding from) ``scope``; return it."""
    scope = {} if scope is None else scope
    env = os.environ if env is None else env
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        raw = lines[i]
        i += 1
        lineno = i
        if len(raw) > MAX_LINE:
            raise ConfigError(f"line longer than {MAX_LINE} characters", path, lineno)
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _ASSIGN.match(raw)
        if not m:
            raise ConfigError(f"not a KEY=value line: {line[:60]!r}", path, lineno)
        key = m.group(1)
        while True:
            try:
                value = _parse_value(raw[m.end():], scope, env, (path, lineno))
                break
            except _Unterminated:
                # As in sh, a quoted value may go on over lines (Courier's
                # courierd shows DEFAULTDELIVERY="|| dotforward<newline>./Maildir").
                if i >= len(lines) or len(raw) + len(lines[i]) > MAX_LINE:
                    raise
                raw += "\n" + lines[i]
                i += 1
        scope[key] = RcValue(value, path, lineno)
    return scope


def read_rc_files(paths: Iterable[str | os.PathLike[str]], *, missing_ok: bool = False,
                  env: Mapping[str, str] | None = None) -> dict[str, RcValue]:
    """Read files in order into one scope; later files override earlier ones
    (imapd then imapd-ssl, as Courier's imapd-ssl start script does)."""
    scope: dict[str, RcValue] = {}
    for p in paths:
        p = Path(p)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            if missing_ok:
                continue
            raise ConfigError("no such file", str(p)) from None
        except OSError as e:
            raise ConfigError(f"cannot read: {e.strerror}", str(p)) from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            raise ConfigError("not valid UTF-8", str(p), line) from None
        parse_rc(text, str(p), scope, env)
    return scope
