"""How this copy of fastproxy was built: which modules run compiled, and are any stale.

The hot-path modules are compiled to C extensions at install time (`setup.py`);
an extension shadows the `.py` beside it, so editing a source without
reinstalling would silently run the old code. `stale_extensions` finds that
case so the CLI can warn and the test suite can refuse to run.
"""

from __future__ import annotations

import importlib.machinery
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
_EXTENSION_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def _extensions() -> list[Path]:
    return [
        path
        for path in PACKAGE_DIR.rglob("*")
        if path.name.endswith(_EXTENSION_SUFFIXES) and path.suffix in {".so", ".pyd"}
    ]


def _source_of(extension: Path) -> Path:
    module = extension.name.split(".", 1)[0]
    return extension.with_name(module + ".py")


def compiled_modules() -> list[str]:
    """Dotted names of the package's modules that have a compiled extension."""
    names = []
    for extension in _extensions():
        relative = _source_of(extension).relative_to(PACKAGE_DIR.parent)
        names.append(".".join(relative.with_suffix("").parts))
    return sorted(names)


def stale_extensions() -> list[Path]:
    """Sources edited after their extension was built (the extension still runs)."""
    stale = []
    for extension in _extensions():
        source = _source_of(extension)
        if source.exists() and source.stat().st_mtime > extension.stat().st_mtime:
            stale.append(source)
    return sorted(stale)


def describe() -> str:
    """One line for logs and benchmark reports."""
    compiled = compiled_modules()
    if not compiled:
        return "pure Python"
    return f"{len(compiled)} hot-path modules compiled with mypyc"
