"""Running the proxy for real: workers, stats, per-user limits, reload, load balancers,
the management API, ``mtproxy doctor``'s checks.

Everything here sits around the core (:mod:`mtproxy.proxy`) through its hooks; the
core runs unchanged with one process and no users.
"""
