#!/usr/bin/env python3
"""Assemble the root filesystem of the final ``FROM scratch`` image stage.

Runs inside the builder stage (Debian bookworm, its python3.11) and copies into OUT only
what the proxy needs at run time: the interpreter, the shared libraries that ``ldd`` says it
and every kept extension module load, a trimmed standard library, the installed packages
without build-only files, CA certificates and a tiny /etc. The image's size budget
(<= 10 MB compressed, <= 30 MB unpacked) is met by what this leaves out and by how it
stores the standard library, so each choice below carries its reason.
"""

from __future__ import annotations

import _imp
import argparse
import ast
import io
import json
import marshal
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tokenize
import zipfile
from collections.abc import Iterable, Iterator
from importlib.util import MAGIC_NUMBER
from pathlib import Path, PurePosixPath

PYVER = f"{sys.version_info.major}.{sys.version_info.minor}"
PYTHON = Path(f"/usr/bin/python{PYVER}")
STDLIB = Path(f"/usr/lib/python{PYVER}")
DYNLOAD = STDLIB / "lib-dynload"
STDLIB_ZIP = Path(f"/usr/lib/python{PYVER.replace('.', '')}.zip")
# Debian's site.py puts this directory on sys.path; the image installs everything there.
SITE = Path("/usr/lib/python3/dist-packages")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# OpenSSL 3 providers that libcrypto dlopen()s by name: cryptography 38 loads "legacy" when
# its backend starts and refuses to work without it.
OSSL_MODULES = tuple(Path("/usr/lib").glob("*/ossl-modules/legacy.so"))
# Debian ships this module under two names (one a symlink); sysconfig imports this one.
SYSCONFIGDATA = sysconfig._get_sysconfigdata_name()  # type: ignore[attr-defined]

# Standard-library modules and packages a proxy server never imports: tests and demos, GUI
# and terminal UIs, developer tools, databases, mail and other protocols' clients, legacy
# and media formats, packaging tools, decimal and zoneinfo (their extensions are dropped
# too; the image has no time zone data), and the parts of ctypes for other systems (ctypes
# itself stays: the entrypoint calls prctl and capset through it to drop root).
# Also submodules nothing here uses (cookie jars, asyncio's Windows event loop) and the
# sources of modules frozen into the interpreter (see is_frozen). Everything else stays, and
# costs little because it is stored as compressed source. Whatever the proxy imports at
# module level is kept regardless (see stdlib_files).
STDLIB_DROP = frozenset(
    {
        "__phello__", "_aix_support", "_osx_support", "_pydecimal", "_pyio", "aifc",
        "asynchat", "asyncore", "audioop", "bdb", "cgi", "cgitb", "chunk", "cmd", "code",
        "codeop", "compileall", "cProfile", "crypt", "ctypes/macholib", "ctypes/util",
        "ctypes/wintypes", "ctypes/_aix", "curses", "dbm", "decimal",
        "difflib", "distutils", "doctest", "ensurepip", "filecmp", "fileinput", "ftplib",
        "idlelib", "imaplib", "imghdr", "imp", "lib2to3", "mailbox", "mailcap",
        "modulefinder", "msilib", "multiprocessing", "netrc", "nis", "nntplib",
        "ossaudiodev", "pdb",
        "pickletools", "pipes", "plistlib", "poplib", "profile", "pstats", "pty", "py_compile",
        "pyclbr", "pydoc", "pydoc_data", "rlcompleter", "sched", "shelve", "smtpd", "smtplib",
        "sndhdr", "sqlite3", "sunau", "tabnanny", "telnetlib", "test", "timeit", "tkinter",
        "trace", "tty", "turtle", "turtledemo", "unittest", "uu", "venv", "wave", "webbrowser",
        "xdrlib", "xml", "xmlrpc", "zipapp", "zoneinfo", "lib-dynload", "site-packages",
        "dist-packages", "tarfile", "optparse", "statistics", "fractions", "graphlib",
        "symtable", "http/cookiejar", "http/cookies", "asyncio/windows_events",
        "asyncio/windows_utils", "asyncio/proactor_events", "importlib/_bootstrap",
        "importlib/_bootstrap_external",
    }
)
# Codecs kept: the UTF family, ASCII/Latin-1, IDNA and punycode for host names, the escape
# and binary-to-text codecs. The ~90 legacy charmaps and the East-Asian codecs (whose
# extensions are dropped anyway) made up a sixth of the compressed stdlib.
ENCODINGS_KEEP = frozenset(
    {
        "__init__", "aliases", "ascii", "base64_codec", "charmap", "hex_codec", "idna",
        "latin_1", "punycode", "quopri_codec", "raw_unicode_escape", "rot_13", "undefined",
        "unicode_escape", "utf_16", "utf_16_be", "utf_16_le", "utf_32", "utf_32_be",
        "utf_32_le", "utf_7", "utf_8", "utf_8_sig", "uu_codec", "zlib_codec",
    }
)
# Extension modules kept from lib-dynload; the rest (test modules, curses, dbm, sqlite,
# readline, multiprocessing's, lzma, bz2, decimal, CJK codecs, audio, zoneinfo) go with the
# code that uses them, and _uuid with its libuuid: the uuid module works without it.
# _ctypes costs no library: libffi is loaded for cryptography's _cffi_backend anyway.
DYNLOAD_KEEP = frozenset(
    {
        "_asyncio", "_contextvars", "_ctypes", "_hashlib", "_json", "_queue", "_ssl",
        "_typing", "mmap", "resource", "termios",
    }
)
# Imported at build time, with every module of the proxy's own package (--probe-package),
# to learn which modules a start loads: those are stored precompiled, everything else as
# source. The proxy's package brings in what it uses; these are loaded lazily by it (uvloop
# when installed, the IDNA codec for host names) and would otherwise be missed. Missing
# top-level packages (uvloop in an image without the `fast` extra) are skipped.
PROBE_MODULES = ("encodings.idna", "uvloop")
# Files in site-packages that only serve compilers, type checkers and test runners.
SITE_DROP_SUFFIXES = (".pyx", ".pxd", ".pxi", ".pyi", ".c", ".h", ".typed", ".pth")
SITE_DROP_DIRS = frozenset({"__pycache__", "tests", "bin"})
# Test helpers and command-line extras of dependencies that a server never imports.
SITE_DROP_FILES = frozenset({"_testbase.py", "_cli.py", "benchmark.py"})
# cryptography needs the _cffi_backend extension at run time, but not cffi's Python code
# (which only generates bindings) nor its C parser.
SITE_DROP_PACKAGES = frozenset({"cffi", "pycparser", "_distutils_hack"})

# The probe itself needs only importlib, json and os: os and importlib are loaded by any
# start, and json (small) is merely stored as bytecode when the proxy does not use it.
PROBE_CODE = """
import importlib, json, os, sys
sites, modules, packages = json.loads(sys.argv[1])
sys.path[:0] = sites
for name in modules:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name.split(".")[0]:
            raise
# What every client connection does: AES-CTR. cryptography loads its OpenSSL backend (and
# with it _cffi_backend) only on first use.
try:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
except ModuleNotFoundError as exc:
    if exc.name != "cryptography":
        raise
else:
    Cipher(algorithms.AES(bytes(32)), modes.CTR(bytes(16))).encryptor().update(bytes(16))
for name in packages:
    for root in importlib.import_module(name).__path__:
        for dirpath, dirnames, filenames in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            parts = [name] + ([] if rel == "." else rel.split(os.sep))
            dirnames[:] = [d for d in dirnames
                           if os.path.isfile(os.path.join(dirpath, d, "__init__.py"))]
            for filename in filenames:
                stem, ext = os.path.splitext(filename)
                if ext == ".py" and stem != "__main__":
                    module = parts if stem == "__init__" else [*parts, stem]
                    importlib.import_module(".".join(module))
# Frozen modules (os, site, codecs...) report "frozen": their copy in the binary is used.
specs = [getattr(m, "__spec__", None) for m in list(sys.modules.values())]
origins = [getattr(spec, "origin", None) for spec in specs]
print(json.dumps(sorted(o for o in origins if o and o.startswith("/"))))
"""


def log(message: str) -> None:
    print(f"make-rootfs: {message}", file=sys.stderr, flush=True)


class RootFS:
    """A directory that mirrors chosen paths of the builder's filesystem."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def target(self, path: PurePosixPath | Path) -> Path:
        return self.out / str(path).lstrip("/")

    def replicate(self, path: Path) -> Path:
        """Copy PATH, recreating every symlink on the way (e.g. /lib64 -> usr/lib64).

        Returns the real file's path. The dynamic loader and the libraries are reached
        through such links (PT_INTERP is /lib64/ld-linux-x86-64.so.2), so they must exist in
        the image exactly as here.
        """
        current = Path("/")
        parts = list(path.parts[1:])
        hops = 0
        while parts:
            current = current / parts.pop(0)
            if current.is_symlink():
                hops += 1
                if hops > 40:
                    raise RuntimeError(f"symlink loop at {path}")
                link = os.readlink(current)
                dest = self.target(current)
                if not dest.is_symlink():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.symlink_to(link)
                resolved = Path(os.path.normpath(current.parent / link))
                parts = list(resolved.parts[1:]) + parts
                current = Path("/")
        dest = self.target(current)
        if current.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
        elif not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(current, dest)
        return current

    def write(self, path: PurePosixPath | Path, data: bytes, mode: int = 0o644) -> None:
        dest = self.target(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        dest.chmod(mode)


def needed_libraries(binaries: Iterable[Path]) -> set[Path]:
    """Every shared object (and the dynamic loader) that ldd resolves for BINARIES."""
    libs: set[Path] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", str(binary)], check=True, capture_output=True, text=True)
        for line in out.stdout.splitlines():
            if "not found" in line:
                raise RuntimeError(f"{binary}: {line.strip()}")
            match = re.search(r"(/\S+)\s+\(0x", line)
            if match:
                libs.add(Path(match.group(1)))
    return libs


def probe(sites: list[Path], packages: list[str]) -> set[Path]:
    """Files of the modules that importing PROBE_MODULES and all of PACKAGES loads."""
    arg = json.dumps([[str(s) for s in sites], list(PROBE_MODULES), packages])
    out = subprocess.run([str(PYTHON), "-I", "-c", PROBE_CODE, arg],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"importing the probe modules failed:\n{out.stderr}")
    return {Path(f) for f in json.loads(out.stdout)}


class _DropDocstrings(ast.NodeTransformer):
    """Removes docstrings, as -OO does, but keeps asserts (which -O and -OO remove)."""

    def _strip(self, node: ast.AST) -> ast.AST:
        self.generic_visit(node)
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            body[0] = ast.copy_location(ast.Pass(), body[0])
        return node

    visit_Module = visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _strip


def pyc_bytes(source: Path, display_name: str) -> bytes:
    """A sourceless .pyc without docstrings (only its magic number is checked on import).

    Docstrings are a fifth of the stdlib's bytecode and nothing at run time reads them.
    This interpreter runs with -X no_debug_ranges (see main), so the code objects carry
    line numbers but not the column table that 3.11 adds for its ``^^^`` traceback marks:
    that table made up 30 % of the compressed bytecode (1.41 -> 0.99 MB for the stdlib).
    """
    tree = _DropDocstrings().visit(ast.parse(source.read_bytes(), display_name))
    code = compile(tree, display_name, "exec", dont_inherit=True)
    return MAGIC_NUMBER + bytes(12) + marshal.dumps(code)


def blank_source(data: bytes, name: str) -> bytes:
    """Python source with comments and docstrings blanked out, every line kept in place.

    Modules stored as source are the ones a start does not load, and the proxy's own
    (for tracebacks); a traceback shows code lines, which stay as they are, so the
    comments and docstrings are only bytes to pull: a third of the compressed source.
    A docstring becomes '' (still a docstring, so ``from __future__`` may follow it).
    The result must compile to the same line numbers, or the build fails.
    """
    tokens = list(tokenize.tokenize(io.BytesIO(data).readline))
    text = data.decode(tokens[0].string if tokens[0].type == tokenize.ENCODING else "utf-8")
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    cuts: list[tuple[tuple[int, int], tuple[int, int], str]] = []
    significant = [t for t in tokens
                   if t.type not in (tokenize.NL, tokenize.COMMENT, tokenize.ENCODING)]
    starts = (tokenize.INDENT, tokenize.NEWLINE, tokenize.DEDENT)
    for index, tok in enumerate(significant):
        # A statement that is a lone string literal: a docstring, or a comment in quotes.
        if (tok.type == tokenize.STRING and (index == 0 or significant[index - 1].type in starts)
                and index + 1 < len(significant)
                and significant[index + 1].type == tokenize.NEWLINE):
            cuts.append((tok.start, tok.end, "''"))
    cuts += [(t.start, t.end, "") for t in tokens if t.type == tokenize.COMMENT]
    for (row, col), (end_row, end_col), replacement in sorted(cuts, reverse=True):
        head, tail = lines[row - 1][:col] + replacement, lines[end_row - 1][end_col:]
        if row == end_row:
            lines[row - 1] = head + tail
        else:
            lines[row - 1:end_row] = [head + "\n", *["\n"] * (end_row - row - 1), tail]
    out = "\n".join(line.rstrip() for line in "".join(lines).split("\n")).encode()
    before = compile(data, name, "exec", dont_inherit=True)
    after = compile(out, name, "exec", dont_inherit=True)
    if _lines(before) != _lines(after):
        raise RuntimeError(f"{name}: blanking comments moved its code lines")
    return out


def _lines(code: object) -> list[int]:
    """Every line number a code object (and those nested in it) points at."""
    assert hasattr(code, "co_lines") and hasattr(code, "co_consts")
    found = sorted({line for _, _, line in code.co_lines() if line is not None})
    for const in code.co_consts:
        if hasattr(const, "co_lines"):
            found += _lines(const)
    return found


def is_frozen(rel: PurePosixPath) -> bool:
    """Whether the interpreter runs its built-in frozen copy of this module (os, site...)."""
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return bool(parts) and _imp.is_frozen(".".join(parts))


def stdlib_files(hot: set[Path]) -> Iterator[tuple[Path, PurePosixPath]]:
    """(source, path relative to the stdlib) for every kept .py file of the stdlib.

    A module the probe loaded is kept even when a drop list names it: what the proxy
    imports at module level can never go missing from the image.
    """
    rescued = []
    for source in sorted(STDLIB.rglob("*.py")):
        rel = PurePosixPath(source.relative_to(STDLIB))
        top = rel.parts[0].removesuffix(".py")
        if is_frozen(rel):
            continue
        dropped = (
            top in STDLIB_DROP or str(rel.with_suffix("")) in STDLIB_DROP
            or top.startswith("config-")
            or any(part in ("__pycache__", "test", "tests") for part in rel.parts[:-1])
            or (top.startswith("_sysconfigdata_") and top != SYSCONFIGDATA)
            or (top == "encodings" and rel.stem not in ENCODINGS_KEEP)
        )
        if dropped and source not in hot:
            continue
        if dropped:
            rescued.append(str(rel))
        yield source, rel
    if rescued:
        log(f"kept because the proxy imports them: {', '.join(rescued)}")


def build_stdlib(fs: RootFS, layout: str, hot: set[Path]) -> tuple[int, int]:
    """Store the kept stdlib in pythonXY.zip, which is on the default sys.path.

    zip-mixed: modules a start loads (HOT) as sourceless .pyc, the rest as source. Source
               compresses about twice as well as bytecode, and bytecode spares the start
               the compile (about 0.75 s here for the proxy's imports).
    zip-py / zip-pyc: everything as source / as bytecode, for comparison.
    os.py also stays a plain file: it is the landmark from which Python finds its prefix.
    Returns (modules stored as bytecode, modules stored as source).
    """
    counts = [0, 0]
    buffer = io.BytesIO()
    # Stored, not deflated: the image layer is gzip-compressed as a whole, and across its
    # 32 kB window similar modules compress better together than each one alone (70 kB
    # less to pull); zipimport reads stored members without inflating them.
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for source, rel in stdlib_files(hot):
            compiled = layout == "zip-pyc" or (layout == "zip-mixed" and source in hot)
            if compiled:
                name, data = rel.with_suffix(".pyc"), pyc_bytes(source, str(source))
            else:
                name, data = rel, blank_source(source.read_bytes(), str(source))
            counts[0 if compiled else 1] += 1
            info = zipfile.ZipInfo(str(name), (1980, 1, 1, 0, 0, 0))
            zf.writestr(info, data)
    fs.write(STDLIB_ZIP, buffer.getvalue())
    fs.write(STDLIB / "os.py", (STDLIB / "os.py").read_bytes())
    return counts[0], counts[1]


def build_dynload(fs: RootFS) -> list[Path]:
    """Only the listed extensions: the probe also loads optional ones that the stdlib
    imports inside try/except (shutil's _bz2 and _lzma, with their libraries), and a
    missing one the proxy does need fails the build in verify()."""
    kept = []
    for ext in sorted(DYNLOAD.glob("*.so")):
        if ext.name.split(".")[0] in DYNLOAD_KEEP:
            fs.replicate(ext)
            kept.append(ext)
    return kept


def top_level_name(entry: str) -> str:
    """'cryptography-38.0.4.dist-info', '_cffi_backend.cpython-311-...so' -> the name."""
    return re.split(r"[-.]", entry, maxsplit=1)[0]


def metadata_headers(data: bytes) -> bytes:
    """A distribution's METADATA without its long description (the body after the first
    blank line, usually the whole README): name, version and requirements stay, which is
    all importlib.metadata reads at run time."""
    head, _, _ = data.partition(b"\n\n")
    return head + b"\n"


def build_site(fs: RootFS, sources: list[tuple[Path, frozenset[str] | None]],
               hot: set[Path], own: frozenset[str]) -> list[Path]:
    """Copy installed packages into SITE without build-only files.

    SOURCES pairs a site-packages directory with the top-level names to take from it (None:
    all). The proxy's own packages (OWN) are stored as source only, so tracebacks show
    lines: their bytecode compresses worse than the source (0.32 against 0.12 MB gzipped)
    and compiling all of it takes about 0.1 s at start. Dependencies are stored like the
    stdlib: what a start loads as sourceless bytecode without docstrings, the rest as
    source. Returns the
    extension modules copied.
    """
    dest_root = fs.target(SITE)
    extensions = []
    for site, only in sources:
        for entry in sorted(site.iterdir()):
            name = top_level_name(entry.name)
            if (entry.name in SITE_DROP_DIRS or name in SITE_DROP_PACKAGES
                    or entry.name.endswith(SITE_DROP_SUFFIXES)
                    or (only is not None and name not in only)):
                continue
            walk: Iterable[tuple[str, list[str], list[str]]]
            walk = os.walk(entry) if entry.is_dir() else [(str(site), [], [entry.name])]
            for dirpath, dirnames, filenames in walk:
                dirnames[:] = [d for d in dirnames if d not in SITE_DROP_DIRS]
                rel_dir = Path(dirpath).relative_to(site)
                for filename in filenames:
                    if (filename.endswith(SITE_DROP_SUFFIXES) or filename == "RECORD"
                            or filename in SITE_DROP_FILES):
                        continue
                    source = Path(dirpath) / filename
                    dest = dest_root / rel_dir / filename
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    display = str(SITE / rel_dir / filename)
                    if filename == "METADATA" and rel_dir.name.endswith(".dist-info"):
                        dest.write_bytes(metadata_headers(source.read_bytes()))
                        continue
                    if filename.endswith(".py") and source in hot and name not in own:
                        dest.with_suffix(".pyc").write_bytes(pyc_bytes(source, display))
                        continue
                    if filename.endswith(".py"):
                        dest.write_bytes(blank_source(source.read_bytes(), display))
                        continue
                    shutil.copy2(source, dest)
                    if filename.endswith(".so"):
                        extensions.append(dest)
    return extensions


def verify(fs: RootFS, packages: list[str], commands: list[str]) -> None:
    """Run the probe, and COMMANDS, with the image's own tree (chroot): every module and
    library they need must be there, or the build fails here rather than the container at
    its first start."""
    arg = json.dumps([[], list(PROBE_MODULES), packages])
    runs = [["-I", "-c", PROBE_CODE, arg], *(shlex.split(c) for c in commands)]
    for argv in runs:
        # -B: importing must not leave __pycache__ directories behind in the image.
        out = subprocess.run(["chroot", str(fs.out), str(PYTHON), "-B", *argv],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"the assembled image fails to run python {argv[:3]}:\n"
                               f"{out.stderr}")
    log(f"verified in the image: the probe and {len(commands)} command(s) run")


def build_etc(fs: RootFS, uid: int) -> None:
    fs.write(PurePosixPath("/etc/passwd"), (
        "root:x:0:0:root:/root:/sbin/nologin\n"
        f"mtproxy:x:{uid}:{uid}:mtproxy:/data:/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
    ).encode())
    fs.write(PurePosixPath("/etc/group"),
             f"root:x:0:\nmtproxy:x:{uid}:\nnogroup:x:65534:\n".encode())
    # glibc assumes this without the file; written out so nobody has to know that.
    fs.write(PurePosixPath("/etc/nsswitch.conf"),
             b"passwd: files\ngroup: files\nhosts: files dns\n")
    # Python's ssl finds the CA bundle through OpenSSL's default paths
    # (/usr/lib/ssl/cert.pem and certs/ are links into /etc/ssl).
    fs.replicate(CA_BUNDLE)
    for link in (Path("/usr/lib/ssl/cert.pem"), Path("/usr/lib/ssl/certs")):
        if link.is_symlink():
            fs.replicate(link)
    tmp = fs.target(PurePosixPath("/tmp"))
    tmp.mkdir(parents=True, exist_ok=True)
    tmp.chmod(0o1777)
    # A named volume starts as a copy of this directory: the proxy user's, and writable by
    # any user with the sticky bit (as /tmp), so that `docker run --user N` with a new
    # volume keeps its secret too. Files in it are written mode 600.
    data = fs.target(PurePosixPath("/data"))
    data.mkdir(parents=True, exist_ok=True)
    os.chown(data, uid, uid)
    data.chmod(0o1777)


def write_commands(fs: RootFS) -> None:
    """`mtproxy` for `docker exec`, and the usual names of the interpreter."""
    fs.write(PurePosixPath("/usr/bin/mtproxy"),
             f"#!/usr/bin/python{PYVER}\nimport sys\n\nfrom mtproxy.cli import main\n\n"
             "sys.exit(main())\n".encode(), mode=0o755)
    for name in ("python3", "python"):
        link = fs.target(PurePosixPath(f"/usr/bin/{name}"))
        if not link.is_symlink():
            link.symlink_to(f"python{PYVER}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--site", type=Path, action="append", default=[],
                        help="a site-packages directory to copy whole (repeatable)")
    parser.add_argument("--system-package", action="append", default=[],
                        help="a top-level package to take from Debian's dist-packages; those "
                             "that the probe imports from there are taken anyway")
    parser.add_argument("--probe-package", action="append", default=[],
                        help="a package whose every module a start may import")
    parser.add_argument("--verify", action="append", default=[],
                        help="interpreter arguments that must run in the image, e.g. "
                             "'-m mtproxy --version' (repeatable)")
    parser.add_argument("--uid", type=int, default=10001)
    parser.add_argument("--stdlib", choices=("zip-mixed", "zip-py", "zip-pyc"),
                        default="zip-mixed")
    args = parser.parse_args()
    if "no_debug_ranges" not in sys._xoptions:
        # compile() follows this interpreter's setting; see pyc_bytes.
        os.execv(sys.executable, [sys.executable, "-X", "no_debug_ranges", *sys.argv])

    fs = RootFS(args.out)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    args.out.chmod(0o755)

    hot = probe(args.site, args.probe_package)
    fs.replicate(PYTHON)
    write_commands(fs)
    compiled, plain = build_stdlib(fs, args.stdlib, hot)
    dynload = build_dynload(fs)
    sources: list[tuple[Path, frozenset[str] | None]] = [(site, None) for site in args.site]
    # Dependencies that Debian provides (cryptography, linked against the libcrypto that
    # Python's ssl loads anyway) are whatever the probe imported from its dist-packages.
    system = set(args.system_package)
    system.update(top_level_name(p.relative_to(SITE).parts[0]) for p in hot
                  if p.is_relative_to(SITE))
    system -= SITE_DROP_PACKAGES
    if system:
        log(f"from Debian's dist-packages: {', '.join(sorted(system))}")
        sources.append((SITE, frozenset(system)))
    extensions = build_site(fs, sources, hot, frozenset(args.probe_package))
    providers = [fs.replicate(p) for p in OSSL_MODULES]
    # Wheels ship their extensions with symbols (uvloop: 13.6 MB, 1.6 MB stripped).
    if extensions:
        subprocess.run(["strip", "--strip-unneeded", *map(str, extensions)], check=True)
    libs = needed_libraries([PYTHON, *dynload, *extensions, *providers])
    for lib in sorted(libs):
        fs.replicate(lib)
    # No file capability on the interpreter: the kernel refuses to run such a file when
    # the container's bounding set lacks the capability (--cap-drop ALL). The entrypoint
    # starts as root and keeps CAP_NET_BIND_SERVICE itself when it drops to the user.
    build_etc(fs, args.uid)
    verify(fs, args.probe_package, args.verify)
    total = sum(p.lstat().st_size for p in args.out.rglob("*") if not p.is_dir())
    log(f"{total / 1e6:.1f} MB in {args.out}; stdlib: {compiled} modules as bytecode, "
        f"{plain} as source; libraries: {', '.join(sorted(p.name for p in libs))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
