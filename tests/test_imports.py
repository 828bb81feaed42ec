"""Every module imports on its own, first, in a fresh interpreter.

Import cycles only show up for some import orders (the container build imports the
modules one by one and caught one); this checks every order that starts anywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mtproxy

PACKAGE = Path(mtproxy.__file__).parent


def module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_imports_first() -> None:
    names = module_names()
    assert len(names) > 30
    script = (
        "import importlib, subprocess, sys\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    r = subprocess.run([sys.executable, '-c', f'import {name}'], capture_output=True,"
        " text=True)\n"
        "    if r.returncode:\n"
        "        failed.append(name + ': ' + r.stderr.strip().splitlines()[-1])\n"
        "print('\\n'.join(failed))\n"
    )
    # Sixty fresh interpreters: under `make test`'s coverage each would measure itself
    # for nothing (about 7 s), so they run without its variables.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE")}
    out = subprocess.run(
        [sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", out.stdout
