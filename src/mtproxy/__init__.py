"""mtproxy: a Telegram MTProto proxy server."""

__version__ = "0.1.0"
