"""docs/protocol.md stays citable: every ``docs/protocol.md §N`` in the code names a section
that exists, and the document's own links land on its anchors."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "docs" / "protocol.md"

_HEADING = re.compile(r"^(#{2,3}) (\d+(?:\.\d+)?)\.? \S", re.M)
_ANCHOR = re.compile(r'^<a id="(s[\d-]+)"></a>\n(#{2,3}) (\d+(?:\.\d+)?)\.? ', re.M)
_CITED_LINE = re.compile(r"docs/protocol\.md\b.*$", re.M)
_SECTION = re.compile(r"§(\d+(?:\.\d+)?)")


def anchor_of(number: str) -> str:
    return "s" + number.replace(".", "-")


def heading_numbers() -> list[str]:
    return [number for _, number in _HEADING.findall(PROTOCOL.read_text())]


def citations() -> list[tuple[str, str]]:
    """(file:line, section number) for every § after a mention of docs/protocol.md."""
    found = []
    for tree in ("src", "tests", "bench"):
        for path in sorted((ROOT / tree).rglob("*.py")):
            text = path.read_text()
            for match in _CITED_LINE.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                where = f"{path.relative_to(ROOT)}:{line}"
                found += [(where, number) for number in _SECTION.findall(match.group())]
    return found


def test_every_heading_is_numbered_in_order_and_anchored() -> None:
    text = PROTOCOL.read_text()
    numbers = heading_numbers()
    assert numbers, "no numbered sections"
    anchored = {number: (anchor, level) for anchor, level, number in _ANCHOR.findall(text)}
    for number in numbers:
        assert number in anchored, f"§{number} has no <a id> line right above its heading"
        anchor, level = anchored[number]
        assert anchor == anchor_of(number)
        assert len(level) == (2 if "." not in number else 3)
    tops = [int(n) for n in numbers if "." not in n]
    assert tops == list(range(1, len(tops) + 1))
    for top in tops:
        subs = [int(n.split(".")[1]) for n in numbers if n.startswith(f"{top}.")]
        assert subs == list(range(1, len(subs) + 1)), f"§{top} subsections out of order"


def test_internal_links_land_on_anchors() -> None:
    text = PROTOCOL.read_text()
    anchors = {anchor for anchor, _, _ in _ANCHOR.findall(text)}
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert links
    assert sorted(set(links) - anchors) == []


def test_code_cites_existing_sections() -> None:
    cited = citations()
    # The modules that carry the protocol cite it; an empty list means the scan broke.
    assert len({where.split(":")[0] for where, _ in cited}) >= 10
    known = set(heading_numbers())
    missing = [f"{where}: §{number}" for where, number in cited if number not in known]
    assert missing == []


def test_readme_links_the_notes() -> None:
    assert "(docs/protocol.md)" in (ROOT / "README.md").read_text()
