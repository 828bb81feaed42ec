"""Error types of the sans-I/O layer.

Each wire format raises only its own subclass of :class:`ProtocolError`, so the
asyncio layer can tell "the peer sent garbage" (mask or close) from a bug in us
(let it propagate).
"""


class ProtocolError(ValueError):
    """Bytes from the network did not follow the expected format."""


class HandshakeError(ProtocolError):
    """An obfuscated2 header did not decrypt to a valid handshake."""


class FramingError(ProtocolError):
    """An abridged / intermediate / padded-intermediate frame was malformed."""


class TlsError(ProtocolError):
    """A fake-TLS ClientHello or record was malformed or failed authentication."""


class SecretError(ProtocolError):
    """A proxy secret in one of its textual forms could not be parsed."""
