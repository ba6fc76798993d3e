"""Countdown reward: known answers, format credit, hostile input, hypothesis fuzzing."""

import time
from fractions import Fraction

import pytest
from esrl.envs.llm import countdown_reward
from esrl.envs.llm.reward import (
    MAX_VALUE,
    evaluate_expression,
    extract_answer,
    format_score,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

NUMS, TARGET = [3, 5, 2], 16


def wrap(answer: str, think: str = "3+5=8 8*2=16") -> str:
    return f"<think>{think}</think>\n<answer>{answer}</answer>"


@pytest.mark.parametrize(
    "answer",
    ["(3+5)*2", "2*(5+3)", " ( 3 + 5 ) * 2 ", "(5+3)*2", "((3+5))*2", "2*(3+5)"],
)
def test_right_answers_score_full(answer):
    assert countdown_reward(wrap(answer), NUMS, TARGET) == pytest.approx(1.1)


def test_division_is_exact_rational():
    # 8 / 3 * 6 = 16 only with exact fractions; 7 / 2 * 4 = 14.
    assert countdown_reward(wrap("8/3*6"), [8, 3, 6], 16) == pytest.approx(1.1)
    assert countdown_reward(wrap("7/2*4"), [7, 2, 4], 14) == pytest.approx(1.1)
    assert countdown_reward(wrap("7/2"), [7, 2], 3) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "answer, why",
    [
        ("(3+5)*2+0", "extra number"),
        ("(3+4)*2", "wrong number"),
        ("3*5+1", "wrong numbers, right value"),
        ("(3+5)*(2)*1", "extra literal 1"),
        ("3*5", "unused number"),
        ("(3+3)*2+4", "reused number"),
        ("3+5+2", "wrong value"),
        ("(3+5)*2=16", "an equation, not an expression"),
        ("(3+5)*2)", "unbalanced parenthesis"),
        ("((3+5)*2", "unclosed parenthesis"),
        ("-(3+5)*-2", "unary minus"),
        ("(3+5)**2", "power"),
        ("16", "the target itself"),
        ("", "empty"),
        ("3 5 2", "no operators"),
        ("(3+5)x2", "letter"),
        ("2.0*(3+5)", "decimal"),
    ],
)
def test_wrong_answers_get_format_credit_only(answer, why):
    assert countdown_reward(wrap(answer), NUMS, TARGET) == pytest.approx(0.1), why


def test_format_partial_credit():
    assert format_score(wrap("x")) == 1.0
    assert format_score("  " + wrap("x") + "\n ") == 1.0
    assert format_score("<think>a</think><answer>b</answer>") == pytest.approx(0.6)
    assert format_score("<think>a</think>\n\n<answer>b</answer>") == pytest.approx(0.6)
    assert format_score("<think>a</think> junk") == pytest.approx(0.1)
    assert format_score("<answer>b</answer>") == pytest.approx(0.5)
    assert format_score(
        "<think>a</think>\n<answer>b</answer> trailing"
    ) == pytest.approx(0.6)
    assert format_score("<think></think>") == pytest.approx(0.1)
    assert format_score("</think><think>") == 0.0
    assert format_score("<think>a") == 0.0
    assert format_score("") == 0.0


def test_missing_tags():
    assert countdown_reward("(3+5)*2", NUMS, TARGET) == 0.0
    assert countdown_reward("<answer>(3+5)*2", NUMS, TARGET) == 0.0
    assert countdown_reward("<answer>(3+5)*2</answer>", NUMS, TARGET) == pytest.approx(
        1.05
    )
    assert countdown_reward("<think>x</think>(3+5)*2", NUMS, TARGET) == pytest.approx(
        0.01
    )


def test_last_answer_block_counts():
    text = "<answer>(3+5)*2</answer> no wait <answer>3+5+2</answer>"
    assert extract_answer(text) == "3+5+2"
    assert countdown_reward(text, NUMS, TARGET) == pytest.approx(0.05)
    text = "<answer>3+5+2</answer><answer>(3+5)*2</answer>"
    assert countdown_reward(text, NUMS, TARGET) == pytest.approx(1.05)
    assert extract_answer("<answer>a<answer>b</answer>") == "b"
    assert extract_answer("</answer><answer>") is None


def test_stray_closing_tag_keeps_the_last_complete_block():
    # was: the text from the last <answer> to the last </answer>, "(3+5)*2</answer>"
    assert extract_answer("<answer>(3+5)*2</answer></answer>") == "(3+5)*2"
    text = wrap("3+5+2") + "<answer>(3+5)*2</answer>\n</answer>"
    assert extract_answer(text) == "(3+5)*2"
    assert countdown_reward(text, NUMS, TARGET) == pytest.approx(1.1)
    assert extract_answer("<answer>a</answer><answer>b") == "a"  # b is not closed


def test_evaluator_exact_values():
    assert evaluate_expression("1+2*3") == (Fraction(7), [1, 2, 3])
    assert evaluate_expression("(1+2)*3") == (Fraction(9), [1, 2, 3])
    assert evaluate_expression("8-3-2") == (Fraction(3), [8, 3, 2])
    assert evaluate_expression("8/4/2") == (Fraction(1), [8, 4, 2])
    assert evaluate_expression("1/0") is None
    assert evaluate_expression("5/(3-3)") is None


HOSTILE = [
    "9**9**9**9**9",
    "9" * 100_000,
    "(" * 50_000 + "1" + ")" * 50_000,
    "(" * 17 + "3+5" + ")" * 17 + "*2",
    "__import__('os').system('echo hi')",
    "().__class__.__mro__[1].__subclasses__()",
    "3\x00+5\x00*2",
    "999999999*999999999*999999999*999999999",
    "1/" + "/".join(["999999999"] * 100),
    "<answer>" * 100_000,
    "</think>\n<answer>" * 50_000,
    "1+" * 100_000 + "1",
    "\udcff\ufffe\U0001f600",
]


@pytest.mark.parametrize("payload", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_inputs_fast_and_wrong(payload):
    for text in (wrap(payload), payload, "<think>" + payload):
        start = time.perf_counter()
        reward = countdown_reward(text, NUMS, TARGET)
        assert time.perf_counter() - start < 0.5
        assert reward < 1.0  # never a correct answer


def test_value_and_depth_caps():
    big = "*".join(["999999"] * 3)  # 1e18 > MAX_VALUE
    assert evaluate_expression(big) is None
    assert evaluate_expression("999999*999999") == (
        Fraction(999999 * 999999),
        [999999, 999999],
    )
    assert 999999 * 999999 <= MAX_VALUE
    assert evaluate_expression("(" * 16 + "1" + ")" * 16) == (Fraction(1), [1])
    assert evaluate_expression("(" * 17 + "1" + ")" * 17) is None
    assert evaluate_expression("1234567890+1") is None  # 10-digit literal


def test_numpy_integers_are_ints():
    # was: TypeError "numbers must be a list of ints, got [np.int64(3), ...]"
    import numpy as np

    numbers, target = np.array(NUMS), np.int64(TARGET)
    assert countdown_reward(wrap("(3+5)*2"), numbers, target) == pytest.approx(1.1)
    with pytest.raises(TypeError, match="target"):
        countdown_reward("x", NUMS, np.float32(16))
    with pytest.raises(TypeError, match="numbers"):
        countdown_reward("x", [3, np.True_, 2], 16)


def test_bad_argument_types_explain():
    with pytest.raises(TypeError, match="decode"):
        countdown_reward([1, 2, 3], NUMS, TARGET)
    with pytest.raises(TypeError, match="target"):
        countdown_reward("x", NUMS, 16.0)
    with pytest.raises(TypeError, match="numbers"):
        countdown_reward("x", [3, "5"], 16)


_alphabet = st.sampled_from(
    list("0123456789+-*/() \n\x00x_.=<>")
    + ["<think>", "</think>", "<answer>", "</answer>"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_alphabet, max_size=300).map("".join), st.text(max_size=200))
def test_fuzz_never_raises_and_is_bounded(tokens, noise):
    for text in (tokens, noise + tokens, wrap(tokens)):
        start = time.perf_counter()
        reward = countdown_reward(text, NUMS, TARGET)
        assert time.perf_counter() - start < 0.5
        assert 0.0 <= reward <= 1.1 + 1e-9
        fmt = format_score(text)
        assert reward == pytest.approx(0.1 * fmt) or reward == pytest.approx(
            0.1 * fmt + 1.0
        )


@st.composite
def _expression(draw, depth=0):
    """(text, value, literals, whether every intermediate stays within MAX_VALUE)."""
    if depth >= 3 or draw(st.booleans()):
        n = draw(st.integers(1, 50))
        return str(n), Fraction(n), [n], True
    left, lv, ln, lok = draw(_expression(depth + 1))
    right, rv, rn, rok = draw(_expression(depth + 1))
    op = draw(st.sampled_from("+-*/"))
    if op == "/" and rv == 0:
        op = "+"
    value = {"+": lv + rv, "-": lv - rv, "*": lv * rv, "/": lv / rv if rv else lv}[op]
    fits = max(abs(value.numerator), value.denominator) <= MAX_VALUE
    return f"({left}{op}{right})", value, ln + rn, lok and rok and fits


_OVER_CAP = "(((22*26)*(38*46))*((23*25)*(38*46)))"  # 1004955265600


@settings(max_examples=100, deadline=None)
@given(_expression())
@example((_OVER_CAP, Fraction(1004955265600), [22, 26, 38, 46, 23, 25, 38, 46], False))
def test_fuzz_matches_reference_on_valid_expressions(case):
    # was flaky: products of eight literals up to 50 can pass the value cap
    expr, value, numbers, within_cap = case
    if not within_cap:
        assert evaluate_expression(expr) is None
        return
    assert evaluate_expression(expr) == (value, numbers)
    if value.denominator == 1:
        reward = countdown_reward(wrap(expr), numbers[::-1], int(value))
        assert reward == pytest.approx(1.1)
        reward = countdown_reward(wrap(expr), numbers, int(value) + 1)
        assert reward == pytest.approx(0.1)


def test_style_breakdown_separates_equation_answers_from_wrong_ones():
    from esrl.envs.llm.evaluate import style_breakdown
    from esrl.envs.llm.tasks import Problem, countdown_task

    task = countdown_task(3)
    problem = Problem("", "", {"numbers": NUMS, "target": TARGET})
    completions = [
        wrap("(3+5)*2"),  # right
        wrap("(3+5)*2=16"),  # right once the "=16" is cut
        wrap("3+5+2=10"),  # equation style and wrong either way
        wrap("3*5+2"),  # wrong
    ]
    b = style_breakdown(task, [problem] * 4, completions)
    assert b == (0.25, 0.5, 0.5)
    with pytest.raises(ValueError, match="one completion per problem"):
        style_breakdown(task, [problem], completions)
