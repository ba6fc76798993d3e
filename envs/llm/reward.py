"""Outcome rewards for LLM reasoning tasks, computed on the host from decoded text.

The Countdown reward is the outcome reward of Qiu et al. 2025 ("Evolution Strategies at
Scale", arXiv 2509.24372): ``0.1 * format + answer``.

* ``format`` is 1.0 when the completion (surrounding whitespace ignored) is exactly
  ``<think>...</think>\\n<answer>...</answer>``; otherwise 0.1 if it holds a
  ``<think>...</think>`` block plus 0.5 if it holds an ``<answer>...</answer>`` block.
* ``answer`` is 1.0 when the last ``<answer>`` block holds an arithmetic expression over
  integer literals, ``+ - * /`` and parentheses that uses every given number exactly
  once and equals the target exactly (rational arithmetic; ``/`` is true division).

Expressions are never passed to ``eval``: a small recursive-descent parser accepts only
non-negative integer literals, the four binary operators and parentheses, and gives up
(answer 0) on anything longer than `MAX_ANSWER_CHARS`, nested deeper than `MAX_DEPTH`,
with a literal longer than `MAX_DIGITS` digits, dividing by zero or with an intermediate
value beyond `MAX_VALUE`. Every step is linear in the input, so any string scores in
well under a second.
"""

from __future__ import annotations

from fractions import Fraction

from esrl.checks import is_int

MAX_ANSWER_CHARS = 256
"""Longest answer expression (characters, after stripping) that is parsed at all."""
MAX_DEPTH = 16
"""Deepest parenthesis nesting accepted."""
MAX_DIGITS = 9
"""Longest integer literal accepted."""
MAX_VALUE = 10**12
"""Largest numerator or denominator of any intermediate value."""

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
_SEPARATOR = _THINK_CLOSE + "\n" + _ANSWER_OPEN


class _Reject(Exception):
    """Raised inside the parser for any expression that does not count."""


def _has_block(text: str, open_tag: str, close_tag: str) -> bool:
    start = text.find(open_tag)
    return start >= 0 and text.find(close_tag, start + len(open_tag)) >= 0


def format_score(completion: str) -> float:
    """1.0 for the full ``<think>..</think>\\n<answer>..</answer>``, else partial."""
    text = completion.strip()
    if text.startswith(_THINK_OPEN) and text.endswith(_ANSWER_CLOSE):
        lo, hi = len(_THINK_OPEN), len(text) - len(_ANSWER_CLOSE)
        if text.find(_SEPARATOR, lo, hi) >= 0:
            return 1.0
    score = 0.0
    if _has_block(text, _THINK_OPEN, _THINK_CLOSE):
        score += 0.1
    if _has_block(text, _ANSWER_OPEN, _ANSWER_CLOSE):
        score += 0.5
    return score


def extract_answer(completion: str) -> str | None:
    """The text inside the last complete ``<answer>...</answer>`` block, or None.

    A block closes at the first ``</answer>`` after its ``<answer>`` (innermost
    opening tag), so a stray closing tag after it does not leak into the answer.
    """
    answer, pos = None, 0
    while (start := completion.find(_ANSWER_OPEN, pos)) >= 0:
        close = completion.find(_ANSWER_CLOSE, start + len(_ANSWER_OPEN))
        if close < 0:
            break
        start = completion.rfind(_ANSWER_OPEN, start, close)
        answer = completion[start + len(_ANSWER_OPEN) : close]
        pos = close + len(_ANSWER_CLOSE)
    return answer


def _tokenize(expr: str) -> list[str | int]:
    tokens: list[str | int] = []
    i, n = 0, len(expr)
    while i < n:
        ch = expr[i]
        if ch in " \t\n":
            i += 1
        elif ch in "+-*/()":
            tokens.append(ch)
            i += 1
        elif "0" <= ch <= "9":
            j = i
            while j < n and "0" <= expr[j] <= "9":
                j += 1
            if j - i > MAX_DIGITS:
                raise _Reject
            tokens.append(int(expr[i:j]))
            i = j
        else:
            raise _Reject
    return tokens


def _check(value: Fraction) -> Fraction:
    if abs(value.numerator) > MAX_VALUE or value.denominator > MAX_VALUE:
        raise _Reject
    return value


class _Parser:
    """expr := term (+|- term)*; term := atom (*|/ atom)*; atom := int | ( expr )."""

    def __init__(self, tokens: list[str | int]):
        self.tokens = tokens
        self.pos = 0
        self.literals: list[int] = []

    def _peek(self) -> str | int | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def parse(self) -> Fraction:
        value = self._expr(0)
        if self.pos != len(self.tokens):
            raise _Reject
        return value

    def _expr(self, depth: int) -> Fraction:
        value = self._term(depth)
        while self._peek() in ("+", "-"):
            op = self.tokens[self.pos]
            self.pos += 1
            rhs = self._term(depth)
            value = _check(value + rhs if op == "+" else value - rhs)
        return value

    def _term(self, depth: int) -> Fraction:
        value = self._atom(depth)
        while self._peek() in ("*", "/"):
            op = self.tokens[self.pos]
            self.pos += 1
            rhs = self._atom(depth)
            if op == "/" and rhs == 0:
                raise _Reject
            value = _check(value * rhs if op == "*" else value / rhs)
        return value

    def _atom(self, depth: int) -> Fraction:
        token = self._peek()
        self.pos += 1
        if isinstance(token, int):
            self.literals.append(token)
            return Fraction(token)
        if token != "(" or depth >= MAX_DEPTH:
            raise _Reject
        value = self._expr(depth + 1)
        if self._peek() != ")":
            raise _Reject
        self.pos += 1
        return value


def evaluate_expression(expr: str) -> tuple[Fraction, list[int]] | None:
    """Exact value and integer literals of an expression, or None if rejected."""
    expr = expr.strip()
    if not expr or len(expr) > MAX_ANSWER_CHARS:
        return None
    try:
        parser = _Parser(_tokenize(expr))
        return parser.parse(), parser.literals
    except _Reject:
        return None


def countdown_answer_correct(answer: str, numbers: list[int], target: int) -> bool:
    """True if ``answer`` uses each of ``numbers`` once and equals ``target``."""
    result = evaluate_expression(answer)
    if result is None:
        return False
    value, literals = result
    return sorted(literals) == sorted(numbers) and value == target


def _validate(completion, numbers, target) -> None:
    if not isinstance(completion, str):
        raise TypeError(
            f"completion must be a str (decode token ids first), got {type(completion)}"
        )
    if not is_int(target):
        raise TypeError(f"target must be an int, got {target!r}")
    if not all(is_int(n) for n in numbers):
        raise TypeError(f"numbers must be a list of ints, got {numbers!r}")


def countdown_reward(completion: str, numbers: list[int], target: int) -> float:
    """Countdown outcome reward ``0.1 * format + answer`` (in [0, 1.1])."""
    numbers = list(numbers)
    _validate(completion, numbers, target)
    numbers, target = [int(n) for n in numbers], int(target)
    answer = extract_answer(completion)
    correct = answer is not None and countdown_answer_correct(answer, numbers, target)
    return 0.1 * format_score(completion) + float(correct)
