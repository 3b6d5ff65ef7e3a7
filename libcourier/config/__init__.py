"""Courier-style configuration: shell-style KEY=value files, control files, typed schemas."""

from libcourier.config.configdir import config_dir
from libcourier.config.control import read_control_file, read_control_lines
from libcourier.config.errors import ConfigError
from libcourier.config.rcfile import RcValue, parse_rc, read_rc_files
from libcourier.config.schema import Setting, load_settings

__all__ = [
    "ConfigError",
    "RcValue",
    "Setting",
    "config_dir",
    "load_settings",
    "parse_rc",
    "read_control_file",
    "read_control_lines",
    "read_rc_files",
]
