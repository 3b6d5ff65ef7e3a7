"""Where the configuration lives: -C DIR, else $COURIER_CONFIG_DIR, else /etc/courier."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CONFIG_DIR = "/etc/courier"


def config_dir(cli_value: str | os.PathLike[str] | None = None) -> Path:
    if cli_value:
        return Path(cli_value).absolute()
    env = os.environ.get("COURIER_CONFIG_DIR")
    if env:
        return Path(env).absolute()
    return Path(DEFAULT_CONFIG_DIR)
