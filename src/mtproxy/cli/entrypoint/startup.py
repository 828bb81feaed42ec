"""The official script's start-up steps, in its order, each printing its lines."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mtproxy.cli.entrypoint import (
    addresses,
    client_secrets,
    command,
    downloads,
    privileges,
    variables,
)
from mtproxy.cli.entrypoint.choices import Choices
from mtproxy.cli.entrypoint.contract import say
from mtproxy.config.settings import Settings, load_settings
from mtproxy.protocol.secret import ClientSecret, Mode


@dataclass
class Prepared:
    settings: Settings
    options: dict[str, Any]
    link_host: str
    link_port: int


class Startup(Choices):
    """Decides every option from the command line, the variables and /data."""

    def secrets(self, data_dir: Path) -> list[str]:
        return client_secrets.choose(self, data_dir)

    def prepare(self) -> Prepared:
        if self.req.no_effect:
            ignored = ", ".join(self.req.no_effect)
            say(f"[*] Accepted for compatibility, no effect here: {ignored}.")
        if self.req.user is not None:
            # The official server switches to this user after binding; we do not.
            severity = "[!]" if os.geteuid() == 0 and self.req.user != "root" else "[*]"
            say(f"{severity} -u {self.req.user}: mtproxy does not switch users with -u; the "
                "image switches from root to MTPROXY_USER (mtproxy, uid 10001): set that.")
        data_dir = variables.data_dir(self)
        privileges.settle(data_dir, self.var("MTPROXY_USER"))
        keys = self.secrets(data_dir)
        tag = variables.tag(self)
        middle = variables.middle_mode(self, tag)
        if middle:
            downloads.telegram_files(self, data_dir)
        elif self.req.proxy_config_file or self.req.proxy_secret_file:
            say("[*] No ad tag, so the proxy connects straight to Telegram's data centers: "
                "the proxy config and --aes-pwd files are not needed.")
        listen_port = variables.ports(self)
        variables.general(self)
        external = addresses.external_ip(self)
        internal = addresses.internal_ip(self)
        if middle:
            addresses.nat_info(self, internal, external)
        options = command.run_options(self.options)
        settings = load_settings(options, self.req.config_path)
        if not settings.secrets:
            settings = replace(
                settings, secrets=tuple(ClientSecret(bytes.fromhex(k), Mode.CLASSIC) for k in keys)
            )
        port = variables.link_port(self, listen_port)
        command.report(settings, keys, tag, external, internal, port,
                       command.command_line(options, self.req.config_path))
        return Prepared(settings, options, external, port)
