"""``mtproxy links``: links from the options or the data directory, QR codes that scan.

The printed half-block text is turned back into modules and compared with the encoder's
matrix (tests/test_qr.py checks the encoder itself), and it is also rasterised the way a
terminal shows it (ink on the terminal background, with background all around) and
decoded with zxing-cpp, an independent QR reader.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import zxingcpp
from fakes.web import ThreadedWeb

from mtproxy.app import format_links
from mtproxy.cli.links import qr_matrix, render_half_blocks
from mtproxy.config.settings import load_settings

KEY = "0123456789abcdef0123456789abcdef"
KEY2 = "fedcba9876543210fedcba9876543210"
UPPER = "\u2580"
LOWER = "\u2584"
FULL = "\u2588"
BLOCKS = {UPPER, LOWER, FULL}


def unrender(lines: list[str], *, invert: bool = False) -> list[list[bool]]:
    """Half-block text back to module rows (True = dark)."""
    rows: list[list[bool]] = []
    for line in lines:
        top = [ch in (UPPER, FULL) for ch in line]
        bottom = [ch in (LOWER, FULL) for ch in line]
        # Ink marks light modules on a dark terminal, dark modules when inverted.
        rows.append([ink == invert for ink in top])
        rows.append([ink == invert for ink in bottom])
    return rows


def decode_terminal(lines: list[str], *, invert: bool = False) -> list[str]:
    """Rasterise like a terminal (ink on background, background margin) and decode."""
    cell, margin = 3, 6
    width = (len(lines[0]) + 2 * margin) * cell
    height = (2 * len(lines) + 2 * margin) * cell
    background, ink = (255, 0) if invert else (0, 255)
    image = bytearray([background]) * (width * height)
    for r, line in enumerate(lines):
        for c, ch in enumerate(line):
            for half, on in ((0, ch in (UPPER, FULL)), (1, ch in (LOWER, FULL))):
                if not on:
                    continue
                y0 = (margin + 2 * r + half) * cell
                x0 = (margin + c) * cell
                for y in range(y0, y0 + cell):
                    image[y * width + x0 : y * width + x0 + cell] = bytes([ink]) * cell
    view = memoryview(bytes(image)).cast("B", (height, width))
    # try_invert=False: a code drawn with the wrong polarity must not pass.
    return [r.text for r in zxingcpp.read_barcodes(view, try_invert=False)]


LINKS = [
    f"https://t.me/proxy?server=203.0.113.7&port=443&secret={KEY}",
    f"tg://proxy?server=2001:db8::1&port=8443&secret=dd{KEY}",
    "https://t.me/proxy?server=proxy.example.com&port=443&secret=ee"
    + KEY
    + b"www.google.com".hex(),
]


@pytest.mark.parametrize("invert", [False, True])
@pytest.mark.parametrize("link", LINKS)
def test_half_blocks_round_trip_to_the_qr_matrix(link: str, invert: bool) -> None:
    matrix = qr_matrix(link)
    lines = render_half_blocks(matrix, invert=invert)
    assert len(lines) == (len(matrix) + 1) // 2
    assert {len(line) for line in lines} == {len(matrix[0])}
    back = unrender(lines, invert=invert)
    assert back[: len(matrix)] == matrix
    # An odd row count is padded with a light row, i.e. more quiet zone.
    assert all(not dark for row in back[len(matrix) :] for dark in row)


@pytest.mark.parametrize("invert", [False, True])
@pytest.mark.parametrize("link", LINKS)
def test_rendered_qr_decodes_to_the_link(link: str, invert: bool) -> None:
    assert decode_terminal(render_half_blocks(qr_matrix(link), invert=invert), invert=invert) == [
        link
    ]


def test_wrong_polarity_does_not_decode() -> None:
    """The decoder check is real: the dark-terminal drawing on a light screen fails."""
    lines = render_half_blocks(qr_matrix(LINKS[0]), invert=False)
    assert decode_terminal(lines, invert=True) == []


# --- the command -------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and not k.startswith("MTPROXY_")
    }
    env.update(extra)
    return env


def links(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mtproxy", "links", *args],
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def qr_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(the https link printed just before, the QR lines) for each QR in the output."""
    out: list[tuple[str, list[str]]] = []
    last_https = ""
    current: list[str] = []
    for line in text.splitlines():
        body = line.strip()
        if body and set(body) <= BLOCKS | {" "}:
            current.append(line[2:])
            continue
        if current:
            out.append((last_https, current))
            current = []
        if body.startswith("https://"):
            last_https = body
    if current:
        out.append((last_https, current))
    return out


def write_secret(data_dir: Path, text: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "secret").write_text(text)


def test_links_from_the_data_directory_with_qr_codes(tmp_path: Path) -> None:
    write_secret(tmp_path, f"{KEY.upper()},{KEY2}\n")
    result = links("--data-dir", str(tmp_path), "--public-host", "203.0.113.7", "--port", "8443",
                   "--modes", "classic,secure,tls")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"secret 1: {KEY}" in out and f"secret 2: {KEY2}" in out
    domain_hex = b"www.google.com".hex()
    for key in (KEY, KEY2):
        for secret in (key, "dd" + key, "ee" + key + domain_hex):
            query = f"server=203.0.113.7&port=8443&secret={secret}"
            assert f"tg://proxy?{query}" in out
            assert f"https://t.me/proxy?{query}" in out
    blocks = qr_blocks(out)
    assert len(blocks) == 6  # 2 secrets x 3 modes
    for https, lines in blocks:
        assert decode_terminal(lines) == [https]


def test_no_qr_prints_exactly_the_run_links(tmp_path: Path) -> None:
    write_secret(tmp_path, KEY)
    result = links("--data-dir", str(tmp_path), "--public-host", "198.51.100.2", "--no-qr")
    assert result.returncode == 0, result.stderr
    settings = load_settings({"secrets": [KEY]})
    assert result.stdout == format_links(settings, "198.51.100.2", 443) + "\n"
    assert not set(result.stdout) & BLOCKS


def test_qr_invert_for_light_terminals(tmp_path: Path) -> None:
    write_secret(tmp_path, KEY)
    result = links("--data-dir", str(tmp_path), "--public-host", "198.51.100.2",
                   "--modes", "classic", "--qr-invert")
    assert result.returncode == 0, result.stderr
    ((https, lines),) = qr_blocks(result.stdout)
    assert https == f"https://t.me/proxy?server=198.51.100.2&port=443&secret={KEY}"
    assert decode_terminal(lines, invert=True) == [https]
    assert decode_terminal(lines, invert=False) == []


def test_secret_option_wins_and_nothing_is_created(tmp_path: Path) -> None:
    data_dir = tmp_path / "never"
    result = links("--data-dir", str(data_dir), "--secret", f"dd{KEY2}", "--modes", "secure",
                   "--public-host", "proxy.example.com", "--listen", "0.0.0.0:993", "--no-qr")
    assert result.returncode == 0, result.stderr
    assert f"tg://proxy?server=proxy.example.com&port=993&secret=dd{KEY2}" in result.stdout
    assert f"secret={KEY2}" not in result.stdout  # classic is off
    assert not data_dir.exists()


def test_config_file_secrets_and_modes(tmp_path: Path) -> None:
    config = tmp_path / "mtproxy.toml"
    config.write_text(
        f'secrets = ["{KEY}"]\nmodes = "tls"\ntls_domains = ["cdn.example.org"]\n'
        'listen = ["[::]:8443"]\npublic_host = "203.0.113.9"\n'
    )
    result = links("--config", str(config), "--no-qr")
    assert result.returncode == 0, result.stderr
    ee = "ee" + KEY + b"cdn.example.org".hex()
    assert result.stdout.splitlines() == [
        f"secret 1: {KEY}",
        f"  tls     tg://proxy?server=203.0.113.9&port=8443&secret={ee}",
        f"          https://t.me/proxy?server=203.0.113.9&port=8443&secret={ee}",
    ]


def test_no_secret_anywhere_is_an_error(tmp_path: Path) -> None:
    result = links("--data-dir", str(tmp_path / "empty"), "--public-host", "203.0.113.7")
    assert result.returncode == 1
    assert "no secrets" in result.stderr and "secret" in result.stderr
    assert not (tmp_path / "empty").exists()


def test_corrupt_secret_file_is_an_error(tmp_path: Path) -> None:
    write_secret(tmp_path, "not-a-secret")
    result = links("--data-dir", str(tmp_path), "--public-host", "203.0.113.7")
    assert result.returncode == 1
    assert "corrupt" in result.stderr


def test_bad_port(tmp_path: Path) -> None:
    write_secret(tmp_path, KEY)
    result = links("--data-dir", str(tmp_path), "--public-host", "203.0.113.7", "--port", "0")
    assert result.returncode == 2
    assert "--port" in result.stderr


@pytest.fixture
def ip_service() -> Iterator[str]:
    with ThreadedWeb({"/ip": (200, b"203.0.113.55\n")}).running() as web:
        yield web.url("/ip")


def test_host_is_detected_without_public_host(tmp_path: Path, ip_service: str) -> None:
    write_secret(tmp_path, KEY)
    result = links("--data-dir", str(tmp_path), "--ip-service", ip_service, "--no-qr",
                   "--modes", "classic")
    assert result.returncode == 0, result.stderr
    assert f"tg://proxy?server=203.0.113.55&port=443&secret={KEY}" in result.stdout


def test_entrypoint_passes_links_through_with_the_container_defaults(tmp_path: Path) -> None:
    write_secret(tmp_path, KEY)
    env = clean_env(DATA_DIR=str(tmp_path), EXTERNAL_IP="203.0.113.8", PORT="8443")
    result = subprocess.run(
        [sys.executable, "-m", "mtproxy", "entrypoint", "links", "--no-qr", "--modes", "classic"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"tg://proxy?server=203.0.113.8&port=8443&secret={KEY}" in result.stdout
