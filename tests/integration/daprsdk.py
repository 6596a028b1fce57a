"""The real `dapr` SDK pointed at a sidecar under test, and cleaned up after.

Shared by the tests that drive fastproxy through the SDK's sync and async clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dapr.conf import settings

SettingsFactory = Callable[..., None]


@pytest.fixture(name="point_sdk")
def point_sdk_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[SettingsFactory]:
    """Point the SDK at a port; settings are restored afterwards.

    Both the environment and `dapr.conf.settings` are set: some SDK versions
    read the environment once at import, this one reads it on every access.
    """
    saved = dict(vars(settings))

    def configure(port: int, token: str | None = None) -> None:
        values: dict[str, Any] = {
            "DAPR_HTTP_PORT": port,
            "DAPR_RUNTIME_HOST": "127.0.0.1",
            "DAPR_HEALTH_TIMEOUT": 5,
            "DAPR_HTTP_TIMEOUT_SECONDS": 10,
            "DAPR_API_MAX_RETRIES": 0,
            "DAPR_API_METHOD_INVOCATION_PROTOCOL": "http",
            "DAPR_HTTP_ENDPOINT": None,
            "DAPR_API_TOKEN": token,
        }
        for name, value in values.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, str(value))
            setattr(settings, name, value)

    yield configure
    vars(settings).clear()
    vars(settings).update(saved)


def close_thread_loop() -> None:
    """Close the loop the sync client created and set for this thread (one per call)."""
    policy = asyncio.get_event_loop_policy()
    try:
        loop = policy.get_event_loop()
    except RuntimeError:
        return
    if not loop.is_closed():
        loop.run_until_complete(asyncio.sleep(0.01))
        loop.close()
    policy.set_event_loop(None)
