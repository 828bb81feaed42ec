"""When a DC's clients go straight to the DC instead of through a middle-proxy.

Operators in censored countries often cannot reach Telegram's config URLs or its
middle-proxies from their server. Rather than failing every client, new clients of
a DC are served in direct mode (without the ad tag, which only middle-proxies can
show) while there is no proxy list at all, or while every middle-proxy of that DC has
been unreachable for ``after`` seconds. The pools keep trying in the background, and
the DC's next client goes through a middle-proxy again as soon as one answers.
Sessions already running stay where they are, in both directions.
"""

from __future__ import annotations

import logging
from collections import Counter

from mtproxy.middle.pool import MePools

log = logging.getLogger("mtproxy.middle")


class DirectFallback:
    """The per-DC choice between a middle-proxy and the DC itself."""

    def __init__(self, pools: MePools, *, enabled: bool, after: float) -> None:
        self.pools = pools
        self.enabled = enabled
        self.after = after
        #: DCs whose new clients go direct now, and clients served so per DC.
        self.direct: set[int] = set()
        self.served: Counter[int] = Counter()
        self._warned_no_config = False

    def bypass(self, dc: int) -> bool:
        """True if a new client of ``dc`` should be served directly now."""
        if not self.enabled:
            return False
        if self.pools.config is None:
            return True
        down = self.pools.dc_down_for(dc)
        if down is not None and down >= self.after:
            if dc not in self.direct:
                self.direct.add(dc)
                log.warning(
                    "DC %d: no middle-proxy answered for %.0f s; its new clients are served "
                    "directly, without the ad tag, until one answers again", dc, down,
                )
            return True
        if dc in self.direct:
            self.direct.discard(dc)
            log.info("DC %d: a middle-proxy answers again; new clients go through it", dc)
        return False

    def served_directly(self, dc: int) -> None:
        self.served[dc] += 1
        if self.pools.config is None and not self._warned_no_config:
            self._warned_no_config = True
            log.warning(
                "no Telegram proxy list yet: clients are served directly, without the ad "
                "tag, until it can be downloaded"
            )

    def health(self) -> dict[str, object]:
        """Plain data for /stats and /metrics."""
        return {
            "no_config": int(self.pools.config is None),
            "direct_dcs": sorted(self.direct),
            "served": {str(dc): n for dc, n in sorted(self.served.items())},
        }
