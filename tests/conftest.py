"""Suite-wide set-up: every async test runs on uvloop and on the default loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop

from fastproxy import build


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test an old compiled build of sources that have since changed."""
    stale = build.stale_extensions()
    if stale:
        names = ", ".join(str(path.relative_to(build.PACKAGE_DIR.parent)) for path in stale)
        pytest.exit(f"compiled modules are older than {names}: run `make install`", returncode=3)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


@pytest.fixture(autouse=True)
def private_registry(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sidecars register in a per-test registry file, never in the user's own."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
