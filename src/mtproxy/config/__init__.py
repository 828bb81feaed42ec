"""Configuration: one table of options feeds the TOML loader, the CLI and the docs."""

from mtproxy.config.errors import ConfigError
from mtproxy.config.settings import Settings, load_settings

__all__ = ["ConfigError", "Settings", "load_settings"]
