"""Self-tests of the fakes in tests/fakes: they talk to each other and to Telethon."""
