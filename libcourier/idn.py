"""International domain names as A-labels (RFC 5890 §2.3.2.1), the form Courier
gets from libidn's idna_to_ascii before a name goes into SMTP or is compared.

Python's "idna" codec is IDNA 2003 (RFC 3490), as libidn's idna_to_ascii. The
codec module is imported here, at import time: str.encode("idna") would
import it on first use, and after a daemon drops privileges the Python
installation may be unreadable. dns.name (libcourier.mx) encodes IDNs through
the same codec, so importing this module loads it for dnspython too.
"""

from __future__ import annotations

import encodings.idna  # noqa: F401 - loaded before any privilege drop (see above)


class IdnError(ValueError):
    """A name that has no A-label form (an empty or over-long label, a
    prohibited character)."""


def to_ascii(name: str, *, suffix: bool = False) -> str:
    """`name` with each label as an A-label; an ASCII name is returned as it is.
    suffix: a leading "." (an esmtproutes domain suffix, `.example.com`) stays
    in front of the converted rest; otherwise it is an empty label, an error.
    IdnError when a label cannot be converted. The length is bounded by the
    callers (an SMTP path, a control file line)."""
    if name.isascii():
        return name
    lead = "." if suffix and name.startswith(".") else ""
    try:
        return lead + name[len(lead):].encode("idna").decode("ascii")
    except UnicodeError:
        raise IdnError(f"not a valid international domain name: {name[:60]!r}") from None


def address_to_ascii(address: str) -> str:
    """local@domain with the domain as A-labels (the local part is never
    converted: only the domain has an ASCII form). IdnError as to_ascii."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address
    return f"{local}@{to_ascii(domain)}"
