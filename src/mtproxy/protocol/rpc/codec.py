"""The "full" RPC transport of one middle-end connection, without I/O.

Each frame is ``len:i32 | seq:i32 | payload | crc:u32`` (all little-endian), where
``len`` counts the whole frame and ``crc`` covers everything before it
(net-tcp-rpc-common.c:42-60, 159-170). Sequence numbers start at -2 in each direction:
-2 is the plaintext RPC_NONCE, -1 the RPC_HANDSHAKE, then 0, 1, 2, ...

Everything after the nonce frame is AES-256-CBC, one chain per direction for the
connection's lifetime (net-crypto-aes.c). Because CBC works on 16-byte blocks,
every flush pads the output with 4-byte words ``04 00 00 00``; a reader skips
any frame length of exactly 4 (net-tcp-rpc-common.c:218-232, net-tcp-rpc-client.c:353).

The codec is symmetric: the client and the server side both use it, the only
difference is which derived keys they pass to :meth:`RpcCodec.start_encryption`.
Typical order on either side::

    codec = RpcCodec()
    wire = codec.encode(our_nonce.encode())          # plaintext
    [peer_nonce] = codec.feed(received)              # plaintext; later bytes wait
    codec.start_encryption(keys)                     # from both nonces
    wire = codec.encode_flush(handshake.encode())    # encrypted, padded
    payloads = codec.feed(more_received)             # decrypted frames in order

Frame layout, sequence numbers and checksums: docs/protocol.md §8.2.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from mtproxy.protocol.bufferpool import BufferPool
from mtproxy.protocol.crc32c import crc32c
from mtproxy.protocol.rpc.constants import (
    DEFAULT_MAX_FRAME_LEN,
    FIRST_SEQ,
    FRAME_OVERHEAD,
    MIN_FRAME_LEN,
    PADDING_WORD,
)
from mtproxy.protocol.rpc.errors import RpcError
from mtproxy.protocol.rpc.keys import RpcKeys

_HEAD: Final = struct.Struct("<ii")
_U32: Final = struct.Struct("<I")
_I32: Final = struct.Struct("<i")
#: Room a decryption output needs beyond its input (``update_into``'s rule for CBC).
DECRYPT_SLACK: Final = 15
_PADDING = (b"", PADDING_WORD * 3, PADDING_WORD * 2, PADDING_WORD)
#: Spare bytes a batch keeps past its messages: up to 12 of padding plus the slack.
_BATCH_ROOM: Final = 12 + DECRYPT_SLACK


def _next_seq(seq: int) -> int:
    """Increment as a C ``int`` would (wrapping at 2**31)."""
    return (seq + 1 + (1 << 31)) % (1 << 32) - (1 << 31)


class RpcCodec:
    """Frames, checksums, encrypts and pads one RPC connection's byte streams.

    Receive side: :meth:`feed` takes bytes in any split and returns the payloads of
    all complete frames. After the peer's plaintext nonce frame (seq -2) it stops
    parsing until :meth:`start_encryption` is called, because what follows is
    ciphertext; call ``feed(b"")`` afterwards to process bytes that were held back.

    Send side: :meth:`encode` frames a payload and returns what may be written now
    (with encryption on, whole AES blocks only; the remainder stays inside the
    cipher); :meth:`flush` pads to a block boundary and returns the rest. Write
    the results of both, in order. :meth:`encode_flush` does both at once.

    CRC32C (negotiated in RPC_HANDSHAKE) applies only to frames with seq >= 0 in
    both directions, which matches when the official peers switch (right after
    the handshake frames): enable it with :meth:`set_crc32c` as soon as it is
    agreed, before or after the handshake reply. A side that asked for it calls
    :meth:`hold_after_handshake` first: :meth:`feed` then returns nothing past the
    peer's handshake frame, so frames that arrived with it are checked only after
    the caller's ``set_crc32c``, at its next ``feed(b"")``.

    Any :class:`RpcError` leaves the codec failed; every later call raises again.
    """

    def __init__(
        self, *, max_frame_len: int = DEFAULT_MAX_FRAME_LEN, pool: BufferPool | None = None
    ) -> None:
        if max_frame_len < MIN_FRAME_LEN:
            raise ValueError(f"max_frame_len must be at least {MIN_FRAME_LEN}")
        self._max_frame_len = max_frame_len
        self._out_seq = FIRST_SEQ
        self._in_seq = FIRST_SEQ
        self._encryptor: CipherContext | None = None
        self._decryptor: CipherContext | None = None
        self._out_partial = 0  # bytes handed to the encryptor since the last block boundary
        self._plain = bytearray()  # received plaintext not yet parsed into frames
        self._held = bytearray()  # received ciphertext that arrived before the keys
        # feed_views: a split frame being assembled, and the buffers of frames whose
        # views were handed out by the last call (back to the pool on release()).
        self._pool = pool
        self._frame: bytearray | None = None
        self._frame_len = 0
        self._frame_filled = 0
        self._handed_out: list[bytearray] = []
        self._awaiting_keys = False
        self._crc32c = False
        self._hold_after_handshake = False
        self._failure: str | None = None

    # --- state --------------------------------------------------------------

    @property
    def encrypted(self) -> bool:
        """True once :meth:`start_encryption` was called."""
        return self._encryptor is not None

    @property
    def unpadded(self) -> bool:
        """True when :meth:`encode` left a partial AES block that :meth:`flush` pads."""
        return self._encryptor is not None and self._out_partial != 0

    @property
    def crc32c(self) -> bool:
        """True when frames with seq >= 0 use CRC32C."""
        return self._crc32c

    @property
    def out_seq(self) -> int:
        """Sequence number the next encoded frame will carry."""
        return self._out_seq

    @property
    def in_seq(self) -> int:
        """Sequence number the next received frame must carry."""
        return self._in_seq

    @property
    def awaiting_keys(self) -> bool:
        """True after the peer's nonce frame arrived and before the keys are set."""
        return self._awaiting_keys

    @property
    def buffered(self) -> int:
        """Received bytes not yet returned as payloads (partial frames, held ciphertext)."""
        return len(self._plain) + len(self._held) + self._frame_filled

    def hold_after_handshake(self) -> None:
        """Stop :meth:`feed` after the peer's handshake frame, once (see the class doc)."""
        self._hold_after_handshake = True

    def set_crc32c(self, enabled: bool = True) -> None:
        """Use CRC32C instead of CRC32 for frames with seq >= 0, both directions."""
        self._crc32c = enabled

    def start_encryption(self, keys: RpcKeys) -> None:
        """Switch both directions to AES-256-CBC; call once, after both nonces."""
        self._check_alive()
        if self._encryptor is not None:
            raise ValueError("encryption already started")
        for name, value, size in (
            ("write_key", keys.write_key, 32),
            ("write_iv", keys.write_iv, 16),
            ("read_key", keys.read_key, 32),
            ("read_iv", keys.read_iv, 16),
        ):
            if len(value) != size:
                raise ValueError(f"{name} must be {size} bytes")
        if self._plain and not self._awaiting_keys:
            raise ValueError("unparsed plaintext is pending; keys must follow the nonce frame")
        self._encryptor = Cipher(
            algorithms.AES(keys.write_key), modes.CBC(keys.write_iv)
        ).encryptor()
        self._decryptor = Cipher(algorithms.AES(keys.read_key), modes.CBC(keys.read_iv)).decryptor()
        self._out_partial = 0
        self._awaiting_keys = False
        held, self._held = bytes(self._held), bytearray()
        if held:
            self._plain += self._decryptor.update(held)

    # --- sending -------------------------------------------------------------

    def encode(self, payload: bytes) -> bytes:
        """Frame ``payload`` (a non-empty multiple of 4 bytes) and return the bytes ready now."""
        self._check_alive()
        size = len(payload)
        if size < 4 or size % 4:
            raise ValueError(f"RPC payload must be a non-empty multiple of 4 bytes, got {size}")
        length = size + FRAME_OVERHEAD
        if length > self._max_frame_len:
            raise ValueError(f"frame of {length} bytes exceeds the limit {self._max_frame_len}")
        seq = self._out_seq
        self._out_seq = _next_seq(seq)
        frame = bytearray(_HEAD.pack(length, seq))
        frame += payload
        frame += _U32.pack(self._checksum(seq, frame))
        if self._encryptor is None:
            return bytes(frame)
        self._out_partial = (self._out_partial + length) % 16
        return self._encryptor.update(bytes(frame))

    def encode_parts(self, parts: Sequence[bytes | bytearray | memoryview]) -> list[bytes]:
        """Like :meth:`encode` for a payload given in pieces, without joining them first.

        Returns the output as several byte strings (write them in order); the pieces
        are consumed before this returns, so they may be views of a reused buffer.
        """
        self._check_alive()
        size = sum(len(part) for part in parts)
        if size < 4 or size % 4:
            raise ValueError(f"RPC payload must be a non-empty multiple of 4 bytes, got {size}")
        length = size + FRAME_OVERHEAD
        if length > self._max_frame_len:
            raise ValueError(f"frame of {length} bytes exceeds the limit {self._max_frame_len}")
        seq = self._out_seq
        self._out_seq = _next_seq(seq)
        head = _HEAD.pack(length, seq)
        if self._crc32c and seq >= 0:
            crc = crc32c(head)
            for part in parts:
                crc = crc32c(part, crc)
        else:
            crc = zlib.crc32(head)
            for part in parts:
                crc = zlib.crc32(part, crc)
        tail = _U32.pack(crc)
        encryptor = self._encryptor
        if encryptor is None:
            return [head, *(bytes(part) for part in parts), tail]
        self._out_partial = (self._out_partial + length) % 16
        update = encryptor.update
        out = [update(head)]
        out += [update(part) for part in parts]
        out.append(update(tail))
        return out

    def flush(self) -> bytes:
        """Pad the encrypted stream to a block boundary and return the remaining bytes."""
        self._check_alive()
        if self._encryptor is None or self._out_partial == 0:
            return b""
        padding = PADDING_WORD * ((16 - self._out_partial) // 4)
        self._out_partial = 0
        return self._encryptor.update(padding)

    def encode_flush(self, *payloads: bytes) -> bytes:
        """Encode every payload, then flush: one write's worth of bytes."""
        parts = [self.encode(payload) for payload in payloads]
        parts.append(self.flush())
        return b"".join(parts)

    # A batch is the relay's way to send: messages are framed as plaintext into one
    # buffer as they come (a copy, which costs far less than an allocation per piece),
    # and the whole batch is padded and encrypted in place with one call when it is
    # written. Nothing may be encoded with encode() between append() and seal().

    def append(self, batch: bytearray, fill: int, parts: Sequence[bytes | bytearray | memoryview]
               ) -> int:
        """Frame one message given in pieces into ``batch`` from offset ``fill``, growing
        it as needed; returns the new fill. Encrypted by :meth:`seal`."""
        if self._failure is not None:
            self._check_alive()
        size = 0
        for part in parts:
            size += len(part)
        length = size + FRAME_OVERHEAD
        if size < 4 or size & 3 or length > self._max_frame_len:
            if size < 4 or size % 4:
                raise ValueError(
                    f"RPC payload must be a non-empty multiple of 4 bytes, got {size}"
                )
            raise ValueError(f"frame of {length} bytes exceeds the limit {self._max_frame_len}")
        end = fill + length
        if len(batch) < end + _BATCH_ROOM:
            batch.extend(bytes(max(end + _BATCH_ROOM - len(batch), len(batch))))
        seq = self._out_seq
        self._out_seq = seq + 1 if seq < 0x7FFFFFFF else -0x80000000
        _HEAD.pack_into(batch, fill, length, seq)
        crc_fn = crc32c if self._crc32c and seq >= 0 else zlib.crc32
        crc = crc_fn(_HEAD.pack(length, seq), 0)
        pos = fill + 8
        for part in parts:
            n = len(part)
            batch[pos : pos + n] = part
            crc = crc_fn(part, crc)
            pos += n
        _U32.pack_into(batch, pos, crc)
        return end

    def seal(self, batch: bytearray, fill: int) -> int:
        """Pad ``batch[:fill]`` to whole AES blocks and encrypt it in place (``batch``
        has the room past ``fill`` that :meth:`append` leaves); returns its length.

        Call :meth:`flush` first if :meth:`encode` was used since the last flush."""
        self._check_alive()
        encryptor = self._encryptor
        if encryptor is None or fill == 0:
            return fill
        if self._out_partial:
            raise ValueError("flush() the frames encode() left unpadded before seal()")
        pad = _PADDING[fill % 16 // 4]
        end = fill + len(pad)
        batch[fill:end] = pad
        view = memoryview(batch)
        try:
            encryptor.update_into(view[:end], view[: end + DECRYPT_SLACK])
        finally:
            view.release()
        return end

    # --- receiving -------------------------------------------------------------

    def feed(self, data: bytes) -> list[bytes]:
        """Take received bytes; return the payloads of the frames they completed."""
        self._check_alive()
        if self._frame is not None:
            raise ValueError("feed() after feed_views() left a split frame; keep to feed_views()")
        if self._awaiting_keys:
            self._held += data
            return []
        if self._decryptor is not None:
            if data:
                self._plain += self._decryptor.update(bytes(data))
        else:
            self._plain += data
        try:
            return self._parse()
        except RpcError as exc:
            self._failure = str(exc)
            raise

    def feed_views(self, data: bytes) -> list[memoryview]:
        """Like :meth:`feed`, but payloads are views instead of copies.

        Once encryption is on, a frame that arrived whole is a view of the decrypted
        chunk (the decryption's copy is the only one); a frame split across reads is
        assembled once, in a buffer from ``pool`` that goes back on :meth:`release`
        or the next call. So the views are valid only until then: use or copy them
        first. Before encryption it falls back to :meth:`feed`.
        """
        return [frame[8:-4] for frame in self.feed_frames(data)]

    def feed_frames(
        self, data: bytes | bytearray | memoryview, scratch: bytearray | None = None
    ) -> list[memoryview]:
        """Like :meth:`feed_views`, but each view is a whole frame (length, seq, payload,
        CRC), and writable once encryption is on: a consumer may reuse the frame's own
        header and CRC bytes around the payload.

        ``scratch`` (at least ``len(data) + DECRYPT_SLACK`` bytes) receives the
        decrypted bytes instead of a new buffer per call; one scratch can serve every
        connection of a thread, since views into it are used before the next call.
        """
        self._check_alive()
        self.release()
        decryptor = self._decryptor
        if decryptor is None or self._awaiting_keys:
            out = []
            for payload in self.feed(bytes(data)):
                frame = bytearray(8) + payload + bytearray(4)
                out.append(memoryview(frame))
            return out
        try:
            if not data:
                chunk = memoryview(bytearray())
            elif scratch is not None and len(scratch) >= len(data) + DECRYPT_SLACK:
                chunk = memoryview(scratch)[: decryptor.update_into(data, scratch)]
            else:
                chunk = memoryview(bytearray(decryptor.update(data)))
            out = []
            if self._frame is not None or self._plain:
                chunk = self._complete_pending(chunk, out)
                if self._frame is not None or self._plain:
                    return out
            pos = self._parse_views(chunk, out)
            if pos < len(chunk):
                self._keep(chunk[pos:])
            return out
        except RpcError as exc:
            self._failure = str(exc)
            raise

    def release(self) -> None:
        """The caller is done with the views :meth:`feed_views` returned last.

        Frames that were split across reads were assembled in pooled buffers; this
        gives them back (the next :meth:`feed_views` call does it anyway).
        """
        if self._handed_out:
            if self._pool is not None:
                for buf in self._handed_out:
                    self._pool.give(buf)
            self._handed_out.clear()

    def _keep(self, rest: memoryview) -> None:
        """Hold the start of an incomplete frame (its length, if present, was checked)."""
        if len(rest) < 4:
            self._plain += rest
            return
        (length,) = _I32.unpack_from(rest)
        self._begin_frame(length, rest)

    def _begin_frame(self, length: int, start: bytes | bytearray | memoryview) -> None:
        frame = self._pool.take(length) if self._pool is not None else bytearray(length)
        frame[: len(start)] = start
        self._frame, self._frame_len, self._frame_filled = frame, length, len(start)

    def _complete_pending(self, chunk: memoryview, out: list[memoryview]) -> memoryview:
        """Move the rest of the frame begun earlier out of ``chunk``; return the rest."""
        if self._frame is None:
            plain = self._plain
            need = 4 - len(plain)
            if need > 0:
                plain += chunk[:need]
                chunk = chunk[need:]
                if len(plain) < 4:
                    return chunk
            (length,) = _I32.unpack_from(plain)
            if length == 4 or not MIN_FRAME_LEN <= length <= self._max_frame_len or length % 4:
                # Filler words and bad lengths: let the general parser decide.
                joined = memoryview(bytearray(plain) + chunk)
                plain.clear()
                pos = self._parse_views(joined, out)
                return joined[pos:]
            if len(plain) >= length:  # left over by feed(): whole frames already
                joined = memoryview(bytearray(plain) + chunk)
                plain.clear()
                pos = self._parse_views(joined, out)
                return joined[pos:]
            self._begin_frame(length, plain)
            plain.clear()
        frame, length, filled = self._frame, self._frame_len, self._frame_filled
        assert frame is not None
        add = min(length - filled, len(chunk))
        frame[filled : filled + add] = chunk[:add]
        filled += add
        if filled < length:
            self._frame_filled = filled
            return chunk[add:]
        self._frame, self._frame_filled = None, 0
        self._handed_out.append(frame)
        self._parse_views(memoryview(frame)[:length], out)
        return chunk[add:]

    def _parse_views(self, buf: memoryview, out: list[memoryview]) -> int:
        """Append the whole frames in ``buf``; return the bytes used."""
        pos, end = 0, len(buf)
        max_len = self._max_frame_len
        unpack_i32, unpack_u32 = _I32.unpack_from, _U32.unpack_from
        use_crc32c = self._crc32c
        seq = self._in_seq
        try:
            while end - pos >= 4:
                (length,) = unpack_i32(buf, pos)
                if length <= 0 or length % 4 or length > max_len:
                    raise RpcError(f"bad RPC frame length {length}")
                if length == 4:
                    pos += 4
                    continue
                if length < MIN_FRAME_LEN:
                    raise RpcError(
                        f"RPC frame length {length} below the minimum {MIN_FRAME_LEN}"
                    )
                if end - pos < length:
                    break
                crc_end = pos + length - 4
                (crc,) = unpack_u32(buf, crc_end)
                if use_crc32c and seq >= 0:
                    actual = crc32c(buf[pos:crc_end], 0)
                else:
                    actual = zlib.crc32(buf[pos:crc_end])
                if crc != actual:
                    raise RpcError(
                        f"RPC frame CRC mismatch: got {crc:08x}, computed {actual:08x}"
                    )
                (got,) = unpack_i32(buf, pos + 4)
                if got != seq:
                    raise RpcError(f"RPC frame seq {got}, expected {seq}")
                seq = seq + 1 if seq < 0x7FFFFFFF else -0x80000000
                out.append(buf[pos : pos + length])
                pos += length
        finally:
            self._in_seq = seq
        return pos

    def _parse(self) -> list[bytes]:
        buf = self._plain
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (length,) = _I32.unpack_from(buf, pos)
            if length <= 0 or length % 4 or length > self._max_frame_len:
                raise RpcError(f"bad RPC frame length {length}")
            if length == 4:  # filler word from the peer's padding
                pos += 4
                continue
            if length < MIN_FRAME_LEN:
                raise RpcError(f"RPC frame length {length} below the minimum {MIN_FRAME_LEN}")
            if end - pos < length:
                break
            frame = memoryview(buf)[pos : pos + length]
            try:
                expected_seq = self._in_seq
                (crc,) = _U32.unpack_from(frame, length - 4)
                actual = self._checksum(expected_seq, frame[: length - 4])
                (seq,) = _I32.unpack_from(frame, 4)
                payload = bytes(frame[8 : length - 4])
            finally:
                frame.release()
            if crc != actual:
                raise RpcError(f"RPC frame CRC mismatch: got {crc:08x}, computed {actual:08x}")
            if seq != expected_seq:
                raise RpcError(f"RPC frame seq {seq}, expected {expected_seq}")
            self._in_seq = _next_seq(seq)
            out.append(payload)
            pos += length
            if self._decryptor is None and seq == FIRST_SEQ:
                # Whatever follows the peer's nonce frame is already encrypted.
                self._awaiting_keys = True
                self._held += buf[pos:]
                pos = end
                break
            if seq == FIRST_SEQ + 1 and self._hold_after_handshake:
                # The handshake frame may switch the checksum of the frames after it
                # (set_crc32c): leave them for the next call.
                self._hold_after_handshake = False
                break
        del buf[:pos]
        return out

    # --- helpers --------------------------------------------------------------------

    def _checksum(self, seq: int, data: bytes | bytearray | memoryview) -> int:
        if self._crc32c and seq >= 0:
            return crc32c(data)
        return zlib.crc32(data)

    def _check_alive(self) -> None:
        if self._failure is not None:
            raise RpcError(f"RPC connection already failed: {self._failure}")
