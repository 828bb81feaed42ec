"""Sans-I/O wire formats: pure functions and small state machines over bytes.

Nothing in this package touches sockets, files or asyncio, so every format can be
tested in isolation (including with hypothesis) and reused by tests as a peer.
"""
