"""Running our maildirmake and Courier's own (Debian courier-base's
/usr/bin/maildirmake.courier) side by side, and comparing the trees they leave:
shared by the maildirmake-against-Courier tests."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

COURIER = Path(os.environ.get("COURIER_MAILDIRMAKE", "/usr/bin/maildirmake.courier"))
TIMEOUT = 60

needs_courier = pytest.mark.skipif(not os.access(COURIER, os.X_OK),
                                   reason=f"Courier's maildirmake is not at {COURIER} (courier-base)")


def ours(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "courier_deliver.maildirmake", *args],
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)


def theirs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(COURIER), *args], capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)


def tree(top: Path, mask_top: bool = False) -> list[tuple[str, str, bytes]]:
    """(relative name, mode string, contents) of everything under top, sorted; with
    mask_top, the path of top inside a file's contents reads TOP (the two tools made
    their trees in different directories)."""
    out = []
    for dirpath, dirs, files in os.walk(top):
        for n in [*dirs, *files]:
            p = Path(dirpath) / n
            st = os.lstat(p)
            data = p.read_bytes() if p.is_file() else b""
            if mask_top:
                data = data.replace(str(top).encode(), b"TOP")
            out.append((str(p.relative_to(top)), stat.filemode(st.st_mode), data))
    return sorted(out)
