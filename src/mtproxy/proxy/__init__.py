"""The asyncio layer: listeners, client sessions, upstream connections and the relay.

It stays thin: every byte format is parsed and built by :mod:`mtproxy.protocol`.
"""
