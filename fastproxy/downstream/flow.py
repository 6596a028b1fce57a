"""Read-side flow control: pause a transport while any reason to pause holds.

Several independent parties (pipelining, a busy upstream, a broken stream)
may ask for a pause; reading resumes only when none of them still does.
"""

from __future__ import annotations

import asyncio


class ReadGate:
    __slots__ = ("_reasons", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._reasons = 0

    def __repr__(self) -> str:
        return f"<ReadGate reasons={self._reasons:#x}>"

    @property
    def paused(self) -> bool:
        return self._reasons != 0

    def pause(self, reason: int) -> None:
        if not self._reasons and not self._transport.is_closing():
            self._transport.pause_reading()
        self._reasons |= reason

    def resume(self, reason: int) -> None:
        if not self._reasons & reason:
            return
        self._reasons &= ~reason
        if not self._reasons and not self._transport.is_closing():
            self._transport.resume_reading()

    def resume_all(self) -> None:
        if self._reasons:
            self._reasons = 0
            if not self._transport.is_closing():
                self._transport.resume_reading()
