"""Shared by every test folder: say who runs the tests (root changes what the
integration tests check) and make sure the suite is importable as installed."""

from __future__ import annotations

import os
import pwd


def pytest_report_header(config):  # noqa: ARG001 - pytest's hook signature
    uid = os.geteuid()
    return f"courier-py tests running as {pwd.getpwuid(uid).pw_name} (uid {uid})"
