"""ReadGate: one pause for any number of reasons, one resume when the last is gone."""

from __future__ import annotations

from typing import Any

import pytest

from fastproxy.downstream.flow import ReadGate

A, B, C = 1, 2, 4


class Transport:
    def __init__(self, closing: bool = False) -> None:
        self.calls: list[str] = []
        self.closing = closing

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


def _gate(transport: Transport) -> ReadGate:
    return ReadGate(transport)  # type: ignore[arg-type]


def _run(gate: ReadGate, ops: list[tuple[str, int]]) -> None:
    for op, reason in ops:
        if op == "pause":
            gate.pause(reason)
        elif op == "resume":
            gate.resume(reason)
        else:
            gate.resume_all()


# operations, transport calls, paused after
SEQUENCES: list[Any] = [
    pytest.param([("pause", A)], ["pause"], True, id="one-reason-pauses"),
    pytest.param([("pause", A), ("pause", B)], ["pause"], True, id="second-reason-no-second-pause"),
    pytest.param([("pause", A), ("pause", A)], ["pause"], True, id="same-reason-twice"),
    pytest.param([("pause", A | B)], ["pause"], True, id="two-reasons-at-once"),
    pytest.param(
        [("pause", A), ("pause", B), ("resume", A)], ["pause"], True, id="one-of-two-gone"
    ),
    pytest.param(
        [("pause", A), ("pause", B), ("resume", A), ("resume", B)],
        ["pause", "resume"],
        False,
        id="all-gone-resumes",
    ),
    pytest.param(
        [("pause", A), ("resume", A), ("resume", A)],
        ["pause", "resume"],
        False,
        id="resume-twice-resumes-once",
    ),
    pytest.param([("resume", A)], [], False, id="resume-never-paused"),
    pytest.param([("pause", A), ("resume", B)], ["pause"], True, id="resume-other-reason"),
    pytest.param(
        [("pause", A), ("resume", A), ("pause", B)],
        ["pause", "resume", "pause"],
        True,
        id="pause-again-after-resume",
    ),
    pytest.param(
        [("pause", A), ("pause", B), ("pause", C), ("all", 0)],
        ["pause", "resume"],
        False,
        id="resume-all",
    ),
    pytest.param(
        [("pause", A), ("all", 0), ("all", 0)], ["pause", "resume"], False, id="resume-all-twice"
    ),
    pytest.param([("all", 0)], [], False, id="resume-all-never-paused"),
]


@pytest.mark.parametrize(("ops", "calls", "paused"), SEQUENCES)
def test_read_gate_sequence(ops: list[tuple[str, int]], calls: list[str], paused: bool) -> None:
    transport = Transport()
    gate = _gate(transport)
    _run(gate, ops)
    assert transport.calls == calls
    assert gate.paused is paused


@pytest.mark.parametrize(
    "ops",
    [
        pytest.param([("pause", A)], id="pause"),
        pytest.param([("pause", A), ("resume", A)], id="pause-resume"),
        pytest.param([("pause", A), ("all", 0)], id="pause-resume-all"),
    ],
)
def test_read_gate_makes_no_calls_on_closing_transport(ops: list[tuple[str, int]]) -> None:
    transport = Transport(closing=True)
    _run(_gate(transport), ops)
    assert transport.calls == []


def test_read_gate_keeps_reasons_while_transport_is_closing() -> None:
    transport = Transport(closing=True)
    gate = _gate(transport)
    gate.pause(A)
    assert gate.paused
    gate.resume(A)
    assert not gate.paused


def test_read_gate_no_resume_once_transport_started_closing() -> None:
    transport = Transport()
    gate = _gate(transport)
    gate.pause(A)
    transport.closing = True
    gate.resume(A)
    assert transport.calls == ["pause"]
    assert not gate.paused


def test_read_gate_repr_shows_reasons() -> None:
    gate = _gate(Transport())
    gate.pause(A | C)
    assert repr(gate) == "<ReadGate reasons=0x5>"
