"""Middle-proxy mode: clients relayed over Telegram's RPC link to its middle-proxies.

- :mod:`.config_source` -- the proxy list and secret: download or file, checks, cache.
- :mod:`.link` -- one RPC connection shared by many clients.
- :mod:`.pool` -- connections per middle-proxy address, reconnects, routing by DC.
- :mod:`.upstream` -- the per-client upstream and the server's strategy object.
- :mod:`.addresses` -- the address middle-proxies see (``--nat-info``, detection).
"""

from mtproxy.middle.config_source import ConfigSource, MiddleConfig, MiddleConfigError
from mtproxy.middle.options import MiddleOptions
from mtproxy.middle.upstream import MiddleUpstream, MiddleUpstreams

__all__ = [
    "ConfigSource",
    "MiddleConfig",
    "MiddleConfigError",
    "MiddleOptions",
    "MiddleUpstream",
    "MiddleUpstreams",
]
