"""A censor's probes against nginx and the proxy in front of it (see lab.py)."""
