"""The circuit-breaker `trip` condition: the small part of CEL that Dapr's examples use.

Compiled once at start-up into plain closures over `Counts`, by a hand-written tokenizer and
recursive-descent parser: no eval, no exec, no Python code built from the text. A mistake in
the text is a ConfigError naming the column; a compiled condition cannot raise.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from fastproxy.config.errors import ConfigError


@dataclass(slots=True)
class Counts:
    """A breaker's request counts for its current generation (gobreaker's Counts)."""

    requests: int = 0
    total_successes: int = 0
    total_failures: int = 0
    consecutive_successes: int = 0
    consecutive_failures: int = 0


Trip = Callable[[Counts], bool]

# The names a trip expression may use, as CEL sees them, and the Counts field behind each.
VARIABLES: Final[dict[str, str]] = {
    "requests": "requests",
    "totalSuccesses": "total_successes",
    "totalFailures": "total_failures",
    "consecutiveSuccesses": "consecutive_successes",
    "consecutiveFailures": "consecutive_failures",
}

# --- grammar ---------------------------------------------------------------------------------
#
# Theory of operation. The grammar is CEL's, cut down to what a trip condition needs:
#
#   expression := and ( "||" and )*
#   and        := relation ( "&&" relation )*
#   relation   := unary ( ("<" | "<=" | ">" | ">=" | "==" | "!=") unary )*
#   unary      := "!" unary | "-" unary | primary
#   primary    := INTEGER | "true" | "false" | IDENTIFIER | "(" expression ")"
#
# so "&&" binds tighter than "||", comparisons tighter than both, and "!" applies to the
# operand right after it: "!(a > 1)", as in CEL, where "!a > 1" is a type error.
# Every node has a static type, int or bool, checked while parsing: ordering needs two ints,
# "==" and "!=" two operands of one type, "&&", "||" and "!" bools, and the whole expression
# must be a bool. Dapr declares the variables as CEL `dyn`, so there such mistakes only show
# at evaluation, where they mean "never trip"; here they stop start-up instead.
# Chains of "&&" / "||" become one flat closure over a tuple, and nesting is capped, so the
# compiled closure never recurses deeply however long the text is.

MAX_DEPTH: Final = 32  # nesting of parentheses, operators and chains, each counted
_INT64_MAX: Final = 2**63 - 1

_Type = Literal["int", "bool"]
_Evaluate = Callable[[Counts], Any]
_TOKEN: Final = re.compile(
    r"(?P<space>\s+)"
    r"|(?P<number>[0-9]+)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>&&|\|\||==|!=|<=|>=|<|>|!|-|\(|\))"
)
_COMPARISONS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_ORDERINGS: Final = frozenset(("<", "<=", ">", ">="))


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "number", "name", "op" or "end"
    text: str
    column: int  # 1-based

    def describe(self) -> str:
        return "end of expression" if self.kind == "end" else repr(self.text)

    def is_op(self, *texts: str) -> bool:
        return self.kind == "op" and self.text in texts


@dataclass(frozen=True, slots=True)
class _Node:
    """A compiled sub-expression: its evaluator, static type, and closure nesting depth."""

    evaluate: _Evaluate
    type: _Type
    depth: int = 0


def compile_trip(expression: str, where: str) -> Trip:
    """Compile `expression` to a predicate over Counts; ConfigError names `where` and column."""
    if not isinstance(expression, str):
        raise ConfigError(f"{where}: trip must be a string, not {type(expression).__name__}")
    evaluate = _Parser(expression, where).parse().evaluate

    def trip(counts: Counts) -> bool:
        return evaluate(counts) is True

    return trip


class _Parser:
    """One pass over the tokens; each grammar rule returns a compiled, type-checked _Node."""

    __slots__ = ("_index", "_text", "_tokens", "_where")

    def __init__(self, text: str, where: str) -> None:
        self._text = text
        self._where = where
        self._tokens = self._tokenize(text)
        self._index = 0

    # --- tokens ----------------------------------------------------------------------------

    def _tokenize(self, text: str) -> list[_Token]:
        tokens: list[_Token] = []
        position = 0
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None:
                raise self._error(f"unexpected character {text[position]!r}", position + 1)
            group = match.lastgroup
            if group is not None and group != "space":
                tokens.append(_Token(group, match.group(), position + 1))
            position = match.end()
        tokens.append(_Token("end", "", len(text) + 1))
        return tokens

    def _peek(self) -> _Token:
        return self._tokens[self._index]

    def _take(self) -> _Token:
        token = self._tokens[self._index]
        if token.kind != "end":
            self._index += 1
        return token

    # --- errors ----------------------------------------------------------------------------

    def _error(self, problem: str, column: int) -> ConfigError:
        return ConfigError(f"{self._where}: trip {self._text!r}: {problem} at column {column}")

    def _node(self, evaluate: _Evaluate, type_: _Type, children: int, token: _Token) -> _Node:
        """A node one level above children `children` deep; too deep a tree is refused."""
        depth = children + 1
        if depth > MAX_DEPTH:
            raise self._error(f"expression nested more than {MAX_DEPTH} levels", token.column)
        return _Node(evaluate, type_, depth)

    # --- grammar ---------------------------------------------------------------------------

    def parse(self) -> _Node:
        if self._peek().kind == "end":
            raise self._error("empty expression", 1)
        node = self._or(0)
        end = self._peek()
        if end.kind != "end":
            raise self._error(
                f"unexpected {end.describe()} after a complete expression", end.column
            )
        if node.type != "bool":
            raise self._error("the expression is a number, not a condition", 1)
        return node

    def _or(self, depth: int) -> _Node:
        return self._chain(depth, "||", self._and)

    def _and(self, depth: int) -> _Node:
        return self._chain(depth, "&&", self._relation)

    def _chain(self, depth: int, symbol: str, operand: Callable[[int], _Node]) -> _Node:
        """`operand (symbol operand)*` as one flat closure, short-circuiting like CEL."""
        nodes = [operand(depth)]
        token = self._peek()
        while self._peek().is_op(symbol):
            token = self._take()
            nodes.append(operand(depth))
            for side in nodes[-2:]:
                if side.type != "bool":
                    raise self._error(f"{symbol!r} joins conditions, not numbers", token.column)
        if len(nodes) == 1:
            return nodes[0]
        evaluators = tuple(node.evaluate for node in nodes)
        children = max(node.depth for node in nodes)
        if symbol == "||":

            def any_true(counts: Counts) -> bool:
                return any(evaluate(counts) is True for evaluate in evaluators)

            return self._node(any_true, "bool", children, token)

        def all_true(counts: Counts) -> bool:
            return all(evaluate(counts) is True for evaluate in evaluators)

        return self._node(all_true, "bool", children, token)

    def _relation(self, depth: int) -> _Node:
        left = self._unary(depth)
        while self._peek().is_op(*_COMPARISONS):
            token = self._take()
            right = self._unary(depth)
            if token.text in _ORDERINGS:
                if left.type != "int" or right.type != "int":
                    raise self._error(f"{token.text!r} compares numbers only", token.column)
            elif left.type != right.type:
                raise self._error(
                    f"{token.text!r} compares a number with a condition", token.column
                )
            left = self._compare(token, left, right)
        return left

    def _compare(self, token: _Token, left: _Node, right: _Node) -> _Node:
        compare = _COMPARISONS[token.text]
        first, second = left.evaluate, right.evaluate

        def relation(counts: Counts) -> bool:
            return compare(first(counts), second(counts))

        return self._node(relation, "bool", max(left.depth, right.depth), token)

    def _unary(self, depth: int) -> _Node:
        token = self._peek()
        if not token.is_op("!", "-"):
            return self._primary(depth)
        self._take()
        operand = self._unary(self._nested(depth, token))
        inner = operand.evaluate
        if token.text == "!":
            if operand.type != "bool":
                raise self._error("'!' negates a condition, not a number", token.column)

            def negate(counts: Counts) -> bool:
                return inner(counts) is not True

            return self._node(negate, "bool", operand.depth, token)
        if operand.type != "int":
            raise self._error("'-' negates a number, not a condition", token.column)

        def minus(counts: Counts) -> int:
            return -int(inner(counts))

        return self._node(minus, "int", operand.depth, token)

    def _primary(self, depth: int) -> _Node:
        token = self._take()
        if token.kind == "number":
            value = int(token.text)
            if value > _INT64_MAX:
                raise self._error(f"integer {token.text} is out of range", token.column)
            return _Node(lambda _counts: value, "int")
        if token.kind == "name":
            if token.text in ("true", "false"):
                constant = token.text == "true"
                return _Node(lambda _counts: constant, "bool")
            field = VARIABLES.get(token.text)
            if field is None:
                known = ", ".join(VARIABLES)
                raise self._error(f"unknown name {token.text!r} (known: {known})", token.column)
            return _Node(operator.attrgetter(field), "int")
        if token.is_op("("):
            inner = self._or(self._nested(depth, token))
            closing = self._take()
            if not closing.is_op(")"):
                raise self._error(
                    f"expected ')' to close the '(' at column {token.column}, "
                    f"found {closing.describe()}",
                    closing.column,
                )
            return inner
        raise self._error(
            f"expected a number, a name or '(', found {token.describe()}", token.column
        )

    def _nested(self, depth: int, token: _Token) -> int:
        """One more level of parsing recursion; bounded so the parser cannot overflow."""
        if depth >= MAX_DEPTH:
            raise self._error(f"expression nested more than {MAX_DEPTH} levels", token.column)
        return depth + 1
