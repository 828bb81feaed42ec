"""The single error type of the middle-end RPC wire format."""

from mtproxy.protocol.errors import ProtocolError


class RpcError(ProtocolError):
    """Bytes from a middle-end RPC peer did not follow the expected format.

    Raised for anything the peer could have caused: bad frame lengths, CRC or
    sequence mismatches, undecryptable data, malformed messages and failed
    handshakes. Mistakes by the caller (for example a payload that is not a
    multiple of 4 bytes) raise plain :class:`ValueError` instead.
    """
