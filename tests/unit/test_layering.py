"""STYLE.md's two rules, checked by walking every module's imports.

1. Protocol cores (core.py, and libcourier modules declared sans-I/O) import no I/O module.
2. No courier_* package imports another; libcourier imports no daemon package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "libcourier": ROOT / "libcourier",
    "courier_smtpd": ROOT / "courier-smtpd",
    "courier_imapd": ROOT / "courier-imapd",
    "courier_pop3d": ROOT / "courier-pop3d",
    "courier_authd": ROOT / "courier-authd",
    "courier_deliver": ROOT / "courier-deliver",
}
IO_MODULES = {"socket", "ssl", "os", "time", "selectors", "asyncio", "logging", "subprocess",
              "signal", "select", "threading", "multiprocessing"}
# Modules that hold a protocol core besides each daemon's core.py.
SANS_IO = {
    ROOT / "libcourier" / "proto" / "buffer.py",
    ROOT / "libcourier" / "proto" / "errors.py",
    ROOT / "libcourier" / "authproto.py",
    ROOT / "libcourier" / "sasl" / "__init__.py",
    ROOT / "libcourier" / "smtp" / "server.py",
    ROOT / "courier-deliver" / "stdiosmtp.py",
    ROOT / "courier-deliver" / "localsubmit.py",
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def all_modules():
    for pkg, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            yield pkg, path


@pytest.mark.parametrize("pkg, path", list(all_modules()), ids=lambda x: str(x))
def test_daemons_share_only_through_libcourier(pkg, path):
    for name in imports(path):
        top = name.split(".")[0]
        if top.startswith("courier_"):
            assert top == pkg, f"{path.relative_to(ROOT)} imports {name}"


def core_modules():
    for _pkg, path in all_modules():
        if path.name == "core.py" or path in SANS_IO:
            yield path


@pytest.mark.parametrize("path", list(core_modules()), ids=lambda p: str(p.relative_to(ROOT)))
def test_cores_do_no_io(path):
    bad = {n for n in imports(path) if n.split(".")[0] in IO_MODULES}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
