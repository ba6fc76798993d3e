"""Fitness shaping: exact values against naive references, ties, non-finite fitness."""

import jax.numpy as jnp
import numpy as np
import pytest

from esrl.fitness import SHAPERS, centered_ranks, group_normalize, sanitize, z_score

NAN, INF = float("nan"), float("inf")


def naive_centered_ranks(f: np.ndarray) -> np.ndarray:
    """Mean rank among ties, non-finite as the worst, mapped to [-0.5, 0.5]."""
    f = np.where(np.isfinite(f), f, -np.inf)
    ranks = np.array([np.sum(f < v) + (np.sum(f == v) - 1) / 2 for v in f])
    return ranks / (len(f) - 1) - 0.5


def test_centered_ranks_of_distinct_values():
    f = jnp.array([0.3, -2.0, 10.0, 1.0, 0.0])
    np.testing.assert_allclose(centered_ranks(f), [0.0, -0.5, 0.5, 0.25, -0.25])


@pytest.mark.parametrize("seed", range(5))
def test_centered_ranks_match_naive_reference_with_ties_and_nonfinite(seed):
    rng = np.random.default_rng(seed)
    f = rng.integers(0, 6, size=33).astype(np.float32)  # many ties
    f[rng.choice(33, 4, replace=False)] = [NAN, INF, -INF, NAN]
    np.testing.assert_allclose(centered_ranks(jnp.asarray(f)), naive_centered_ranks(f))


def test_centered_ranks_give_tied_members_equal_weight():
    shaped = centered_ranks(jnp.array([500.0, 500.0, 20.0, 500.0, 7.0, 7.0]))
    assert shaped[0] == shaped[1] == shaped[3]
    assert shaped[4] == shaped[5] < shaped[2]
    np.testing.assert_allclose(float(shaped.sum()), 0.0, atol=1e-6)


def test_nonfinite_fitness_ranks_below_every_finite_value():
    shaped = centered_ranks(jnp.array([NAN, -1e30, INF, 0.0, -INF]))
    assert float(shaped[1]) > float(jnp.max(shaped[jnp.array([0, 2, 4])]))
    assert np.all(np.isfinite(shaped))


def test_sanitize_replaces_nonfinite_by_the_worst_finite_value():
    out = sanitize(jnp.array([2.0, NAN, -3.0, INF, -INF, 5.0]))
    np.testing.assert_array_equal(out, [2.0, -3.0, -3.0, -3.0, -3.0, 5.0])
    np.testing.assert_array_equal(sanitize(jnp.array([NAN, INF])), [0.0, 0.0])


def test_z_score_is_standardised_and_sanitized():
    rng = np.random.default_rng(0)
    f = rng.normal(3.0, 7.0, size=64)
    out = np.asarray(z_score(jnp.asarray(f)))
    np.testing.assert_allclose(out, (f - f.mean()) / (f.std() + 1e-8), rtol=1e-5)
    g = jnp.array([1.0, NAN, 3.0, 2.0])
    expected = np.array([1.0, 1.0, 3.0, 2.0])
    expected = (expected - expected.mean()) / (expected.std() + 1e-8)
    np.testing.assert_allclose(z_score(g), expected, rtol=1e-6)
    np.testing.assert_array_equal(z_score(jnp.full(5, 4.0)), np.zeros(5))


@pytest.mark.parametrize("value", [0.1, 1 / 3, 123.456, -7.7])
def test_equal_fitness_gets_zero_weight_under_z_scores(value):
    # 0.1 * n is inexact in float32: the mean is off by an ulp, and dividing that
    # rounding error by a std of the same size used to give weights of ~1
    f = jnp.full(7, value, jnp.float32)
    np.testing.assert_array_equal(z_score(f), np.zeros(7))
    groups = jnp.stack([f, jnp.arange(7.0)], axis=1)  # one flat group, one ranked
    np.testing.assert_allclose(
        group_normalize(groups), z_score(jnp.arange(7.0)) / 2, rtol=1e-6
    )


def test_group_normalize_matches_naive_reference():
    rng = np.random.default_rng(1)
    rewards = rng.normal(size=(16, 3)) * np.array([1.0, 10.0, 0.1]) + [0.0, 5.0, -2.0]
    rewards[2, 1] = NAN
    out = np.asarray(group_normalize(jnp.asarray(rewards, jnp.float32)))
    columns = []
    for g in range(3):
        r = rewards[:, g].copy()
        r[~np.isfinite(r)] = np.nanmin(r)
        columns.append((r - r.mean()) / (r.std() + 1e-8))
    np.testing.assert_allclose(out, np.mean(columns, axis=0), rtol=1e-4, atol=1e-5)


def test_group_normalize_weighs_easy_and_hard_groups_equally():
    easy = np.array([1.0, 1.0, 0.0, 1.0])  # a prompt most members solve
    hard = 100.0 * np.array([0.0, 1.0, 0.0, 0.0])  # large rewards, rarely earned
    out = np.asarray(group_normalize(jnp.asarray(np.stack([easy, hard], axis=1))))
    z = lambda r: (r - r.mean()) / r.std()
    np.testing.assert_allclose(out, (z(easy) + z(hard)) / 2, rtol=1e-5, atol=1e-6)


def test_shapers_registry_names_the_functions():
    assert SHAPERS == {
        "centered_ranks": centered_ranks,
        "z_score": z_score,
        "raw": sanitize,
    }


@pytest.mark.parametrize("f", [[1e20, 0.0, 1.0, 2.0], [3e38, -3e38, 0.0, 1.0]])
def test_z_scores_of_a_huge_finite_spread(f):
    # float32 std squares the spread: beyond ~1e19 it overflowed to inf and every
    # weight was 0 (no update); at 3e38 the shift overflowed and NaN reached the
    # parameters
    f = np.array(f, np.float32)
    want = (f.astype(np.float64) - f.mean(dtype=np.float64)) / f.std(dtype=np.float64)
    np.testing.assert_allclose(z_score(jnp.asarray(f)), want, rtol=1e-5, atol=1e-6)
    groups = jnp.asarray(np.stack([f, np.zeros(4, np.float32)], axis=1))
    np.testing.assert_allclose(group_normalize(groups), want / 2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e8])
def test_z_score_is_bit_identical_to_the_plain_formula_in_ordinary_ranges(scale):
    # its power-of-two rescaling must not change the weights of ordinary fitness
    f = jnp.asarray(np.random.default_rng(2).normal(3.0, 1.0, 50) * scale, jnp.float32)
    g = f - f.min()
    np.testing.assert_array_equal(z_score(f), (g - g.mean()) / (g.std() + 1e-8))
    rewards = jnp.stack([f, f[::-1]], axis=1)
    r = rewards - rewards.min(axis=0)
    r = (r - r.mean(axis=0)) / (r.std(axis=0) + 1e-8)
    np.testing.assert_array_equal(group_normalize(rewards), r.mean(axis=1))


def test_group_normalize_of_one_reward_per_member_says_what_to_use():
    # was "vmap was requested to map its argument along axis 1, which implies that
    # its rank should be at least 2"
    with pytest.raises(ValueError, match=r"\[members, groups\].*\(6,\).*z_score"):
        group_normalize(jnp.arange(6.0))
    # a whole group of NaN counts as equal worst rewards: that group adds nothing
    rewards = jnp.stack([jnp.arange(6.0), jnp.full(6, NAN)], axis=1)
    np.testing.assert_allclose(
        group_normalize(rewards), z_score(jnp.arange(6.0)) / 2, rtol=1e-6
    )
