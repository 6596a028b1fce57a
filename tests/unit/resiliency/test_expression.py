"""The trip-condition language: CEL's comparisons and logic over a breaker's counts."""

from __future__ import annotations

import builtins
from typing import Any

import pytest

from fastproxy.config.errors import ConfigError
from fastproxy.resiliency.expression import MAX_DEPTH, VARIABLES, Counts, compile_trip

# requests=10, totalSuccesses=4, totalFailures=6, consecutiveSuccesses=0, consecutiveFailures=3
COUNTS = Counts(
    requests=10,
    total_successes=4,
    total_failures=6,
    consecutive_successes=0,
    consecutive_failures=3,
)


def trips(expression: str, counts: Counts = COUNTS) -> bool:
    return compile_trip(expression, "cb 'x'")(counts)


# --- each variable reads its own count -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("requests", 10, id="requests"),
        pytest.param("totalSuccesses", 4, id="totalSuccesses"),
        pytest.param("totalFailures", 6, id="totalFailures"),
        pytest.param("consecutiveSuccesses", 0, id="consecutiveSuccesses"),
        pytest.param("consecutiveFailures", 3, id="consecutiveFailures"),
    ],
)
def test_each_variable_reads_its_count(name: str, value: int) -> None:
    assert name in VARIABLES
    assert trips(f"{name} == {value}")
    assert not trips(f"{name} == {value + 1}")


# --- operators -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        pytest.param("consecutiveFailures > 2", True, id="gt-true"),
        pytest.param("consecutiveFailures > 3", False, id="gt-equal-false"),
        pytest.param("consecutiveFailures >= 3", True, id="ge-equal-true"),
        pytest.param("consecutiveFailures >= 4", False, id="ge-false"),
        pytest.param("consecutiveFailures < 4", True, id="lt-true"),
        pytest.param("consecutiveFailures < 3", False, id="lt-equal-false"),
        pytest.param("consecutiveFailures <= 3", True, id="le-equal-true"),
        pytest.param("consecutiveFailures <= 2", False, id="le-false"),
        pytest.param("consecutiveFailures == 3", True, id="eq-true"),
        pytest.param("consecutiveFailures == 2", False, id="eq-false"),
        pytest.param("consecutiveFailures != 2", True, id="ne-true"),
        pytest.param("consecutiveFailures != 3", False, id="ne-false"),
        pytest.param("5 < requests", True, id="literal-on-the-left"),
        pytest.param("totalFailures > totalSuccesses", True, id="variable-against-variable"),
        pytest.param("requests > 1 && totalFailures > 5", True, id="and-both-true"),
        pytest.param("requests > 1 && totalFailures > 6", False, id="and-right-false"),
        pytest.param("requests > 10 && totalFailures > 5", False, id="and-left-false"),
        pytest.param("requests > 10 || totalFailures > 5", True, id="or-right-true"),
        pytest.param("requests > 1 || totalFailures > 6", True, id="or-left-true"),
        pytest.param("requests > 10 || totalFailures > 6", False, id="or-both-false"),
        pytest.param("!(requests > 10)", True, id="not-false-is-true"),
        pytest.param("!(requests > 1)", False, id="not-true-is-false"),
        pytest.param("!!(requests > 1)", True, id="double-not"),
        pytest.param("true", True, id="literal-true"),
        pytest.param("false", False, id="literal-false"),
        pytest.param("-requests < 0", True, id="unary-minus"),
        pytest.param("requests > -1", True, id="negative-literal"),
        pytest.param("(requests > 1) == true", True, id="bool-equality"),
        pytest.param("(requests > 1) != (totalFailures > 1)", False, id="bool-inequality"),
        pytest.param("requests>1&&totalFailures>5", True, id="no-spaces"),
        pytest.param("requests >\n 1\t&& totalFailures > 5", True, id="newlines-and-tabs"),
        pytest.param("007 == 7", True, id="leading-zeros-decimal"),
        pytest.param(
            "requests > 1 && requests > 2 && requests > 3 && requests > 4", True, id="and-chain"
        ),
        pytest.param("false || false || false || requests == 10", True, id="or-chain"),
    ],
)
def test_operators(expression: str, expected: bool) -> None:
    assert trips(expression) is expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        # && binds tighter than ||: true || (false && false) is true; (true || false) && false
        # would be false.
        pytest.param("requests == 10 || requests == 0 && requests == 0", True, id="and-over-or"),
        pytest.param("requests == 0 && requests == 0 || requests == 10", True, id="and-first"),
        pytest.param("(requests == 10 || requests == 0) && requests == 0", False, id="parens"),
        pytest.param("requests == 0 && (requests == 0 || requests == 10)", False, id="parens-r"),
        pytest.param("!(requests == 10) || requests == 10", True, id="not-binds-to-operand"),
        pytest.param("!(requests == 10 || requests == 10)", False, id="not-over-parens"),
        pytest.param("((((requests == 10))))", True, id="redundant-parens"),
        pytest.param("requests > 5 == true", True, id="comparisons-left-to-right"),
    ],
)
def test_precedence_and_parentheses(expression: str, expected: bool) -> None:
    assert trips(expression) is expected


def test_compiled_condition_reads_counts_at_call_time() -> None:
    trip = compile_trip("consecutiveFailures > 5", "cb")
    counts = Counts()
    assert not trip(counts)
    counts.consecutive_failures = 6
    assert trip(counts)


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "fragments"),
    [
        pytest.param("", ["empty expression", "column 1"], id="empty"),
        pytest.param("   ", ["empty expression"], id="blank"),
        pytest.param("failures > 5", ["unknown name 'failures'", "column 1"], id="unknown-name"),
        pytest.param(
            "requests > 1 && ConsecutiveFailures > 1",
            ["unknown name 'ConsecutiveFailures'", "column 17"],
            id="names-are-case-sensitive",
        ),
        pytest.param("requests > 5 5", ["unexpected '5'", "column 14"], id="trailing-number"),
        pytest.param("requests > 5)", ["unexpected ')'", "column 13"], id="unbalanced-close"),
        pytest.param("(requests > 5", ["expected ')'", "end of expression"], id="unclosed"),
        pytest.param("requests >", ["end of expression", "column 11"], id="missing-operand"),
        pytest.param("> 5", ["found '>'", "column 1"], id="missing-left-operand"),
        pytest.param("requests = 5", ["unexpected character '='", "column 10"], id="single-eq"),
        pytest.param("a & b", ["unexpected character '&'"], id="single-ampersand"),
        pytest.param("requests > 5 | true", ["unexpected character '|'"], id="single-bar"),
        pytest.param("requests * 2 > 5", ["unexpected character '*'"], id="arithmetic"),
        pytest.param("requests > 5 and true", ["unexpected 'and'", "column 14"], id="word-and"),
        pytest.param("requests > 1.5", ["unexpected character '.'"], id="float-literal"),
        pytest.param("requests > '5'", ["unexpected character", "column 12"], id="string-lit"),
        pytest.param("requests", ["is a number, not a condition"], id="number-not-condition"),
        pytest.param("requests + 1", ["unexpected character '+'"], id="plus"),
        pytest.param("!requests > 1", ["'!' negates a condition"], id="not-on-a-number"),
        pytest.param("-true", ["'-' negates a number"], id="minus-on-a-condition"),
        pytest.param("requests && true", ["joins conditions", "column 10"], id="and-on-number"),
        pytest.param("true || requests", ["joins conditions", "column 6"], id="or-on-number"),
        pytest.param("true > false", ["compares numbers only"], id="ordering-conditions"),
        pytest.param("requests == true", ["number with a condition"], id="mixed-equality"),
        pytest.param(
            "requests < 5 < 10", ["compares numbers only", "column 14"], id="chained-ordering"
        ),
        pytest.param(
            "requests > 99999999999999999999", ["out of range"], id="beyond-int64-literal"
        ),
        pytest.param("requests > 5 &&", ["end of expression"], id="dangling-and"),
        pytest.param("()", ["found ')'", "column 2"], id="empty-parens"),
    ],
)
def test_errors_name_the_place_and_column(expression: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        compile_trip(expression, "res 'r': circuit breaker 'cb'")
    message = str(caught.value)
    assert message.startswith(f"res 'r': circuit breaker 'cb': trip {expression!r}: ")
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    "expression",
    [
        pytest.param("__import__('os').system('true')", id="import-call"),
        pytest.param("__import__", id="dunder-name"),
        pytest.param("requests.__class__", id="attribute-access"),
        pytest.param("open", id="builtin-name"),
        pytest.param("requests > 1 if True else 0", id="python-conditional"),
        pytest.param("lambda: 1", id="lambda"),
        pytest.param("requests > 1 or True", id="python-or"),
        pytest.param("not requests", id="python-not"),
        pytest.param("[requests]", id="python-list"),
    ],
)
def test_python_is_never_evaluated(expression: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Text that Python would run is refused, and compiling never reaches eval/exec/compile."""

    def forbidden(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the trip parser must not evaluate Python")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, forbidden)
    with pytest.raises(ConfigError):
        compile_trip(expression, "cb")
    # The same guard does not break a valid expression: it is compiled without them too.
    assert compile_trip("requests > 1", "cb")(COUNTS)


def test_nesting_is_bounded_so_neither_parsing_nor_evaluation_can_overflow() -> None:
    fits = "(" * (MAX_DEPTH - 1) + "requests > 1" + ")" * (MAX_DEPTH - 1)
    assert trips(fits)
    with pytest.raises(ConfigError, match="nested more than"):
        compile_trip("(" * 5000 + "true" + ")" * 5000, "cb")
    with pytest.raises(ConfigError, match="nested more than"):
        compile_trip("!" * 5000 + "true", "cb")
    with pytest.raises(ConfigError, match="nested more than"):
        compile_trip(" == ".join(["true"] * 5000), "cb")


def test_long_flat_chains_compile_and_evaluate() -> None:
    # A chain of || is one closure over a tuple, not 5000 nested ones.
    assert trips(" || ".join(["false"] * 4999 + ["requests == 10"]))
    assert not trips(" && ".join(["true"] * 4999 + ["requests == 11"]))


def test_trip_must_be_a_string() -> None:
    with pytest.raises(ConfigError, match="trip must be a string, not int"):
        compile_trip(5, "cb")  # type: ignore[arg-type]
