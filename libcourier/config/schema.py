"""Typed settings declared once: Courier key, attribute, type, default, doc.

A daemon declares its settings as a tuple of `Setting`s; `load_settings` turns
the parsed rc scope into typed values, raising ConfigError with file:line on a
bad value and returning warnings for keys nobody declared (Courier's shipped
files carry keys for features we do not have; those are not errors).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from libcourier.config.errors import ConfigError
from libcourier.config.rcfile import RcValue

Converter = Callable[[str], Any]


def to_str(v: str) -> str:
    return v


def to_bool(v: str) -> bool:
    low = v.strip().lower()
    if low in ("1", "yes", "y", "true", "on"):
        return True
    if low in ("0", "no", "n", "false", "off", ""):
        return False
    raise ValueError(f"expected YES/NO or 1/0, got {v!r}")


def to_int(v: str) -> int:
    try:
        return int(v.strip())
    except ValueError:
        raise ValueError(f"expected a whole number, got {v!r}") from None


def non_negative_int(v: str) -> int:
    n = to_int(v)
    if n < 0:
        raise ValueError(f"must not be negative, got {n}")
    return n


def positive_int(v: str) -> int:
    n = to_int(v)
    if n <= 0:
        raise ValueError(f"must be positive, got {n}")
    return n


def to_words(v: str) -> tuple[str, ...]:
    return tuple(v.split())


def to_port_list(v: str) -> tuple[int, ...]:
    """Courier's PORT: comma-separated numbers or service names (`smtp`, `imap`)."""
    ports: list[int] = []
    for item in v.replace(" ", ",").split(","):
        item = item.strip()
        if not item:
            continue
        if item.isdigit():
            port = int(item)
        else:
            try:
                port = socket.getservbyname(item, "tcp")
            except OSError:
                raise ValueError(f"unknown service name {item!r}") from None
        if not 0 < port < 65536:
            raise ValueError(f"port {port} out of range")
        ports.append(port)
    if not ports:
        raise ValueError("no port given")
    return tuple(ports)


def to_address(v: str) -> str:
    """Courier's ADDRESS: `0` means every address; else an IP literal."""
    v = v.strip()
    if v in ("", "0"):
        return ""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in v else socket.AF_INET, v)
    except OSError:
        raise ValueError(f"not an IP address: {v!r}") from None
    return v


@dataclass(frozen=True, slots=True)
class Setting:
    key: str                    # the Courier key, e.g. MAXDAEMONS
    attr: str                   # the Python attribute name, e.g. maxdaemons
    convert: Converter
    default: str                # in file syntax, so docs and shipped files can show it
    doc: str = ""


def load_settings(schema: Iterable[Setting], scope: Mapping[str, RcValue],
                  where: str = "<config>") -> tuple[dict[str, Any], list[str]]:
    """Return ({attr: typed value}, [warnings])."""
    schema = tuple(schema)
    values: dict[str, Any] = {}
    known = {s.key for s in schema}
    for s in schema:
        rc = scope.get(s.key)
        raw = rc.value if rc is not None else s.default
        try:
            values[s.attr] = s.convert(raw)
        except ValueError as e:
            if rc is None:
                raise ConfigError(f"built-in default of {s.key} is invalid: {e}", where) from None
            raise ConfigError(f"{s.key}: {e}", rc.path, rc.line) from None
    warnings = [f"{rc.path}:{rc.line}: unknown key {k} (ignored)"
                for k, rc in scope.items() if k not in known]
    return values, warnings
