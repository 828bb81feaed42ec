"""Numbers of the middle-end RPC protocol.

Values come from the official server (TelegramMessenger/MTProxy):
``net/net-tcp-rpc-common.h``, ``common/rpc-const.h``, ``mtproto/mtproto-common.h``
and ``mtproto/mtproto-proxy.c``. Opcodes are unsigned 32-bit values written
little-endian.
"""

from typing import Final

# --- transport-level messages (net-tcp-rpc-common.h, rpc-const.h) -------------
RPC_NONCE: Final = 0x7ACB87AA
RPC_HANDSHAKE: Final = 0x7682EEF5
RPC_HANDSHAKE_ERROR: Final = 0x6A27BEDA
RPC_PING: Final = 0x5730A2DF
RPC_PONG: Final = 0x8430EAA7

# --- proxy messages (mtproto-common.h) ------------------------------------------
RPC_PROXY_REQ: Final = 0x36CEF1EE
RPC_PROXY_ANS: Final = 0x4403DA0D
RPC_CLOSE_CONN: Final = 0x1FCF425D
RPC_CLOSE_EXT: Final = 0x5EB634A2
RPC_SIMPLE_ACK: Final = 0x3BAC409B

#: TL constructor of the ad-tag item in RPC_PROXY_REQ's extra block (mtproto-proxy.c:121).
TL_PROXY_TAG: Final = 0xDB1E26AE
#: TL constructor of the HTTP-transport info item (flag 4); never sent by this proxy.
TL_HTTP_QUERY_INFO: Final = 0xD45AB381

# --- RPC_NONCE crypto schemas ------------------------------------------------
RPC_CRYPTO_NONE: Final = 0
RPC_CRYPTO_AES: Final = 1
RPC_CRYPTO_AES_EXT: Final = 2
RPC_CRYPTO_AES_DH: Final = 3

#: RPC_HANDSHAKE flag asking for CRC32C instead of zlib CRC32 on frames with seq >= 0.
RPCF_USE_CRC32C: Final = 0x800

#: The nonce reply's crypto_ts may differ from ours by at most this many seconds
#: (net-tcp-rpc-client.c:204, net-tcp-rpc-server.c:209).
NONCE_TIME_SKEW_MAX: Final = 30

# --- RPC_PROXY_REQ flags (net-tcp-rpc-common.h, mtproto-proxy.c) ----------------
FLAG_NOT_ENCRYPTED: Final = 0x2
FLAG_HTTP_QUERY_INFO: Final = 0x4
FLAG_HAS_AD_TAG: Final = 0x8
FLAG_MAGIC: Final = 0x1000
FLAG_EXTMODE1: Final = 0x10000
FLAG_EXTMODE2: Final = 0x20000
FLAG_PAD: Final = 0x8000000
FLAG_DROPPED: Final = 0x10000000
FLAG_INTERMEDIATE: Final = 0x20000000
FLAG_ABRIDGED: Final = 0x40000000
FLAG_QUICKACK: Final = 0x80000000

#: Either of these flags means RPC_PROXY_REQ carries an extra block.
FLAGS_WITH_EXTRA: Final = FLAG_HTTP_QUERY_INFO | FLAG_HAS_AD_TAG

# --- RPC_PROXY_ANS flags (mtproto-common.h) -------------------------------------
ANS_FLAG_FLUSH: Final = 0x8
ANS_FLAG_SMALL_ERROR: Final = 0x10

# --- limits -------------------------------------------------------------------
#: Frame overhead: len (4) + seq (4) + crc (4).
FRAME_OVERHEAD: Final = 12
#: Smallest real frame: the overhead plus a 4-byte opcode. A length of 4 is a filler word.
MIN_FRAME_LEN: Final = 16
#: Default upper bound on one frame; the official client has none, TMT uses 16 MiB.
DEFAULT_MAX_FRAME_LEN: Final = 1 << 24
#: Largest MTProto packet the official proxy accepts from a client (mtproto-proxy.c:96).
MAX_CLIENT_PACKET: Final = 262144 * 4 - 4096
#: Upper bound of RPC_PROXY_REQ's extra block (mtproto-common.h).
MAX_PROXY_EXTRA_BYTES: Final = 16384
#: The 4-byte word (little-endian 4) that pads encrypted output to whole AES blocks.
PADDING_WORD: Final = b"\x04\x00\x00\x00"
#: Sequence number of the first frame in each direction (net-tcp-rpc-client.c:455).
FIRST_SEQ: Final = -2
