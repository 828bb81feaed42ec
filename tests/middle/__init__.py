"""Middle-proxy mode over loopback: the proxy in-process, fake middle-ends, fake Telegram."""
