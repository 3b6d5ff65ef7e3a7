"""Our maildirmake / deliverquota against Courier's own (Debian's courier-base
installs them as maildirmake.courier / deliverquota.courier; maildrop's are
the same code): the same files byte for byte, and one Maildir shared by both
tools keeps one quota."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from libcourier.maildir import quota


def _courier_tool(name: str) -> str | None:
    for cand in (f"{name}.courier", f"{name}.maildrop"):
        path = shutil.which(cand)
        if path:
            return path
    return None


MAILDIRMAKE = _courier_tool("maildirmake")
DELIVERQUOTA = _courier_tool("deliverquota")
pytestmark = pytest.mark.skipif(
    MAILDIRMAKE is None or DELIVERQUOTA is None,
    reason="Courier's maildirmake/deliverquota not installed (Debian courier-base or maildrop)")
MSG = b"Subject: compat\n\nhello\n"


def ours(tool: str, *args: str, stdin=None, data: bytes | None = None):
    return subprocess.run([sys.executable, "-m", f"courier_deliver.{tool}", *args],
                          stdin=stdin, input=data, capture_output=True, timeout=60)


def theirs(path: str, *args: str, stdin=None, data: bytes | None = None):
    return subprocess.run([path, *args], stdin=stdin, input=data, capture_output=True,
                          timeout=60)


def tree(root: Path) -> list[tuple[str, int, bytes]]:
    out = []
    for dirpath, dirs, files in os.walk(root):
        for n in sorted(dirs + files):
            p = Path(dirpath) / n
            st = p.lstat()
            data = p.read_bytes() if stat.S_ISREG(st.st_mode) else b""
            out.append((str(p.relative_to(root)), stat.S_IMODE(st.st_mode), data))
    return sorted(out)


def test_maildirmake_makes_the_same_files(tmp_path):
    a, b = tmp_path / "courier", tmp_path / "ours"
    assert theirs(MAILDIRMAKE, "-q", "1000S,10C", str(a)).returncode == 0
    assert ours("maildirmake", "-q", "1000S,10C", str(b)).returncode == 0
    assert theirs(MAILDIRMAKE, "-f", "Sent.2024", str(a)).returncode == 0
    assert ours("maildirmake", "-f", "Sent.2024", str(b)).returncode == 0
    assert tree(a) == tree(b)
    assert (a / "maildirsize").read_bytes() == b"1000S,10C\n" + quota.line(0, 0)


def test_one_maildir_one_quota_across_both_deliverquotas(tmp_path):
    md = tmp_path / "Maildir"
    assert theirs(MAILDIRMAKE, "-q", "3C", str(md)).returncode == 0
    msg = tmp_path / "msg"
    msg.write_bytes(MSG)
    assert ours("deliverquota", str(md), data=MSG).returncode == 0
    with open(msg, "rb") as f:
        assert theirs(DELIVERQUOTA, str(md), stdin=f).returncode == 0
    assert ours("deliverquota", str(md), data=MSG).returncode == 0
    # Full at 3 messages, whoever counts: 77 from a file, 75 from a pipe (ours).
    with open(msg, "rb") as f:
        r = theirs(DELIVERQUOTA, str(md), stdin=f)
    assert r.returncode == 77 and b"quota" in r.stdout
    with open(msg, "rb") as f:
        assert ours("deliverquota", str(md), stdin=f).returncode == 77
    assert ours("deliverquota", str(md), data=MSG).returncode == 75
    assert len(os.listdir(md / "new")) == 3
    usage = quota.parse((md / "maildirsize").read_bytes())
    assert usage is not None and (usage.bytes, usage.count) == quota.measure(md)
    # Our names have Courier's shape and sizes, so Courier's recount agrees too.
    for name in os.listdir(md / "new"):
        assert quota.message_size(name) == (md / "new" / name).stat().st_size


def test_warning_message_has_courier_shape(tmp_path):
    warn = tmp_path / "warn"
    warn.write_bytes(b"Subject: quota warning\n\nfull\n")
    makers = {"courier": lambda *a: theirs(MAILDIRMAKE, *a),
              "ours": lambda *a: ours("maildirmake", *a)}
    deliverers = {"courier": lambda *a: theirs(DELIVERQUOTA, *a, data=MSG),
                  "ours": lambda *a: ours("deliverquota", *a, data=MSG)}
    for who in ("courier", "ours"):
        md = tmp_path / who
        assert makers[who]("-q", "300S", str(md)).returncode == 0
        for _ in range(3):
            r = deliverers[who]("-w", "10", "-W", str(warn), str(md))
            assert r.returncode == 0, r.stderr
        texts = [(md / "new" / n).read_bytes() for n in os.listdir(md / "new")]
        warnings = [t for t in texts if b"quota warning" in t]
        assert len(warnings) == 1, who                       # once, not per delivery
        assert (md / quota.WARN_FILE).exists()
        lines = warnings[0].split(b"\n")
        assert lines[0].startswith(b"Date: ")
        assert re.fullmatch(rb"Message-Id: <\d+\.overquota@[^>]+>", lines[1]), lines[1]
        assert b"\n".join(lines[2:]) == warn.read_bytes()
