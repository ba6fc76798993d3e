"""Key-addressed noise and the one-contraction ES estimate against naive references."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from esrl import noise
from esrl.noise import LowRank, NoiseConfig

KEY = jax.random.key(7)
# jitted once per (config, shapes): eager vmaps over keys are slow to dispatch
member_perturbation = jax.jit(noise.member_perturbation, static_argnames="config")
population_perturbation = jax.jit(
    noise.population_perturbation, static_argnames=("config", "population")
)
gradient_estimate = jax.jit(noise.gradient_estimate, static_argnames="config")
pair_block = jax.jit(noise.pair_block, static_argnames=("config", "population"))


@pytest.fixture(autouse=True, scope="module")
def float64():
    """Exact comparisons in float64 (restored afterwards for other modules)."""
    with jax.enable_x64(True):
        yield


def make_params(m: int = 6, n: int = 5) -> dict:
    """A small tree: two matrices, a vector, a scalar and an integer leaf."""
    k = jax.random.split(jax.random.key(0), 4)
    return {
        "layer": {
            "kernel": jax.random.normal(k[0], (m, n)),
            "bias": jax.random.normal(k[1], (n,)),
        },
        "head": {"kernel": jax.random.normal(k[2], (n, 3))},
        "temperature": jnp.asarray(1.5),
        "steps": jnp.asarray(3, jnp.int32),
    }


def flat(tree) -> dict:
    return traverse_util.flatten_dict(tree)


def dense_eps(key, generation, member, params, config, sigma) -> dict:
    """Member's E_i / sigma materialised per perturbed leaf (the naive reference)."""
    tree = member_tree(key, generation, member, params, config, sigma)
    return {path: noise.materialize(p) / sigma for path, p in tree.items()}


def member_tree(key, generation, member, params, config, sigma=0.1) -> dict:
    """One member's perturbation as a flat dict (LowRank leaves stay whole)."""
    return flat(member_perturbation(key, generation, member, params, config, sigma))


def test_perturbed_paths_cover_float_leaves_in_sorted_order_minus_excluded():
    params = make_params()
    paths = noise.perturbed_paths(params, NoiseConfig())
    assert paths == sorted(paths)
    assert ("steps",) not in paths and len(paths) == 4
    excluded = noise.perturbed_paths(params, NoiseConfig(exclude=("head", "temp")))
    assert excluded == [("layer", "bias"), ("layer", "kernel")]


def test_matrices_get_low_rank_factors_and_vectors_full_rank_noise():
    params = make_params(6, 5)
    tree = member_tree(KEY, 0, 0, params, NoiseConfig(rank=3))
    assert isinstance(tree[("layer", "kernel")], LowRank)
    assert tree[("layer", "kernel")].a.shape == (3, 6)  # rank-major
    assert tree[("layer", "kernel")].b.shape == (3, 5)
    assert tree[("layer", "bias")].shape == (5,)
    assert tree[("temperature",)].shape == ()
    full = member_tree(KEY, 0, 0, params, NoiseConfig(rank=3, full_rank=True))
    assert full[("layer", "kernel")].shape == (6, 5)
    assert np.linalg.matrix_rank(np.asarray(full[("layer", "kernel")])) == 5


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_materialized_low_rank_matrix_has_the_requested_rank(rank):
    tree = member_tree(KEY, 3, 5, make_params(6, 5), NoiseConfig(rank=rank))
    dense = noise.materialize(tree[("layer", "kernel")])
    assert dense.shape == (6, 5)
    assert np.linalg.matrix_rank(np.asarray(dense)) == rank


def test_factors_are_reproducible_from_key_generation_and_member_alone():
    params, config = make_params(), NoiseConfig(rank=2)
    population = population_perturbation(KEY, 4, params, config, 0.1, population=8)
    for member in range(8):
        alone = member_perturbation(
            jax.random.key(7), jnp.asarray(4), jnp.asarray(member), params, config, 0.1
        )
        sliced = jax.tree.map(lambda x, i=member: x[i], population)
        # equal up to float rounding of the fused sigma * sign / sqrt(r) products
        assert_close = lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-14)
        jax.tree.map(assert_close, alone, sliced)
    # a different generation, member pair or key gives different noise
    base = dense_eps(KEY, 4, 0, params, config, 0.1)[("layer", "kernel")]
    for other in [
        dense_eps(KEY, 5, 0, params, config, 0.1),
        dense_eps(KEY, 4, 2, params, config, 0.1),
        dense_eps(jax.random.key(8), 4, 0, params, config, 0.1),
    ]:
        assert not np.allclose(base, other[("layer", "kernel")])


@pytest.mark.parametrize("full_rank", [False, True])
def test_antithetic_pairs_are_exact_negatives(full_rank):
    params, config = make_params(), NoiseConfig(rank=2, full_rank=full_rank)
    for pair in range(3):
        plus = dense_eps(KEY, 1, 2 * pair, params, config, 0.3)
        minus = dense_eps(KEY, 1, 2 * pair + 1, params, config, 0.3)
        for path in plus:
            np.testing.assert_array_equal(plus[path], -minus[path])
    config = NoiseConfig(rank=2, full_rank=full_rank, antithetic=False)
    one = dense_eps(KEY, 1, 0, params, config, 0.3)[("layer", "kernel")]
    two = dense_eps(KEY, 1, 1, params, config, 0.3)[("layer", "kernel")]
    assert not np.allclose(one, -two) and not np.allclose(one, two)


def test_noise_reuse_shares_noise_for_k_generations():
    params, config = make_params(), NoiseConfig(rank=2, noise_reuse=3)
    gens = [
        dense_eps(KEY, g, 4, params, config, 0.1)[("layer", "kernel")] for g in range(7)
    ]
    for g in (1, 2):
        np.testing.assert_array_equal(gens[0], gens[g])
    np.testing.assert_array_equal(gens[3], gens[5])
    assert not np.allclose(gens[2], gens[3]) and not np.allclose(gens[5], gens[6])


def test_noise_reuse_must_be_positive():
    with pytest.raises(ValueError, match="noise_reuse"):
        NoiseConfig(noise_reuse=0)
    with pytest.raises(ValueError, match="rank"):
        NoiseConfig(rank=0)


@pytest.mark.parametrize("rank,full_rank", [(1, False), (4, False), (1, True)])
def test_entries_of_e_have_variance_sigma_squared(rank, full_rank):
    """Diagonal entries of a square matrix are independent across i and across k.

    With 1024 pairs x 64 diagonal entries the relative standard error of the
    variance estimate is <= sqrt(8 / 65536) ~ 1.1% (kurtosis 9 at rank 1), so a 6%
    tolerance is > 5 standard errors, while forgetting 1/sqrt(r), doubling sigma or
    the antithetic sign would be off by >= 25%.
    """
    sigma, pairs = 0.3, 1024
    params = {"w": jnp.zeros((64, 64)), "v": jnp.zeros((64,))}
    config = NoiseConfig(rank=rank, full_rank=full_rank)
    pert = population_perturbation(KEY, 0, params, config, sigma, population=2 * pairs)
    dense = jax.vmap(noise.materialize)(pert["w"]) if not full_rank else pert["w"]
    entries = jnp.diagonal(dense[0::2], axis1=1, axis2=2).ravel()
    np.testing.assert_allclose(float(jnp.mean(entries**2)), sigma**2, rtol=0.06)
    np.testing.assert_allclose(float(jnp.mean(entries)), 0.0, atol=0.02 * sigma)
    bias = pert["v"][0::2].ravel()
    np.testing.assert_allclose(float(jnp.mean(bias**2)), sigma**2, rtol=0.05)


def naive_estimate(key, generation, params, fitness, config) -> dict:
    """(1/N) sum_i f_i eps_i by an explicit loop over materialised members."""
    sigma = 0.5
    pert = flat(
        population_perturbation(
            key, generation, params, config, sigma, population=len(fitness)
        )
    )
    total = {path: np.zeros(leaf.shape) for path, leaf in flat(params).items()}
    for i, f in enumerate(np.asarray(fitness)):
        for path, p in pert.items():
            member = jax.tree.map(lambda x, i=i: np.asarray(x[i]), p)
            if isinstance(member, LowRank):
                member = member.a.T @ member.b
            total[path] += f * member / sigma
    return {path: t / len(fitness) for path, t in total.items()}


@pytest.mark.parametrize(
    "config",
    [
        NoiseConfig(rank=1),
        NoiseConfig(rank=3),
        NoiseConfig(rank=2, antithetic=False),
        NoiseConfig(full_rank=True),
        NoiseConfig(rank=2, exclude=("head",), noise_reuse=2),
    ],
    ids=["r1", "r3", "r2-plain", "full", "exclude-reuse"],
)
def test_one_contraction_estimate_equals_explicit_sum_over_members(config):
    params = make_params(6, 5)
    fitness = jax.random.normal(jax.random.key(3), (10,))
    got = flat(gradient_estimate(KEY, 5, params, fitness, config))
    want = naive_estimate(KEY, 5, params, fitness, config)
    assert set(got) == set(want)
    for path in want:
        np.testing.assert_allclose(got[path], want[path], rtol=1e-10, atol=1e-12)
        assert got[path].dtype == flat(params)[path].dtype
    if config.exclude:
        np.testing.assert_array_equal(got[("head", "kernel")], 0.0)
    assert np.abs(got[("layer", "kernel")]).max() > 0


@pytest.mark.parametrize("rank,cases", [(1, [(2, 2), (16, 8)]), (2, [(3, 6), (4, 8)])])
def test_estimate_is_full_rank_once_population_times_rank_covers_the_matrix(
    rank, cases
):
    params, config = {"w": jnp.zeros((8, 12))}, NoiseConfig(rank=rank)
    for pairs, expected in cases:
        # pairs beyond `pairs` have equal fitness, so they contribute nothing
        fitness = jnp.zeros(32).at[: 2 * pairs : 2].set(jnp.arange(1.0, pairs + 1))
        g = gradient_estimate(KEY, 0, params, fitness, config)["w"]
        assert np.linalg.matrix_rank(np.asarray(g)) == expected


@pytest.mark.parametrize("full_rank", [False, True])
def test_antithetic_pairs_with_equal_fitness_give_a_zero_update(full_rank):
    params, config = make_params(), NoiseConfig(rank=2, full_rank=full_rank)
    fitness = jnp.repeat(jax.random.normal(jax.random.key(1), (6,)), 2)
    grads = gradient_estimate(KEY, 2, params, fitness, config)
    for leaf in jax.tree.leaves(grads):
        np.testing.assert_array_equal(leaf, 0.0)


def test_check_rank_rejects_a_rank_larger_than_a_matrix_allows():
    params = make_params(6, 5)
    noise.check_rank(params, NoiseConfig(rank=3))
    with pytest.raises(ValueError, match=r"rank 4 exceeds .*head/kernel.*<= 3"):
        noise.check_rank(params, NoiseConfig(rank=4))
    noise.check_rank(params, NoiseConfig(rank=4, exclude=("head",)))
    noise.check_rank(params, NoiseConfig(rank=9, full_rank=True))


@pytest.mark.parametrize("full_rank", [False, True])
def test_chunked_estimate_equals_the_single_contraction(monkeypatch, full_rank):
    params, config = make_params(6, 5), NoiseConfig(rank=2, full_rank=full_rank)
    fitness = jax.random.normal(jax.random.key(4), (14,))
    whole = gradient_estimate(KEY, 1, params, fitness, config)
    monkeypatch.setattr(noise, "ESTIMATE_CHUNK_FLOATS", 150)  # 2-3 pairs per chunk
    # a fresh function: jax.jit(noise.gradient_estimate) again reused the trace made
    # above with the unpatched chunk size, so nothing was ever chunked here
    chunked = jax.jit(lambda k, f: noise.gradient_estimate(k, 1, params, f, config))(
        KEY, fitness
    )
    assert_close = lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-12)
    jax.tree.map(assert_close, chunked, whole)


@pytest.mark.parametrize("full_rank", [False, True])
def test_chunked_estimate_takes_float32_fitness_under_x64(monkeypatch, full_rank):
    # A rollout's returns are float32 under x64 too (z_score and raw keep them so),
    # while the noise is float64: the chunks' scan failed on its carry's dtype.
    params, config = make_params(6, 5), NoiseConfig(rank=2, full_rank=full_rank)
    fitness = jax.random.normal(jax.random.key(4), (14,), jnp.float32)
    whole = gradient_estimate(KEY, 1, params, fitness, config)
    monkeypatch.setattr(noise, "ESTIMATE_CHUNK_FLOATS", 150)  # 2-3 pairs per chunk
    chunked = noise.gradient_estimate(KEY, 1, params, fitness, config)
    assert_close = lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-12)
    jax.tree.map(assert_close, chunked, whole)


@pytest.mark.parametrize("rank", [1, 3])
def test_estimate_from_the_rollouts_kept_noise_equals_the_explicit_sum(rank):
    params, config = make_params(6, 5), NoiseConfig(rank=rank)
    fitness = jax.random.normal(jax.random.key(5), (10,))
    block = noise.population_perturbation(KEY, 4, params, config, 0.1, 10, compact=True)
    got = flat(gradient_estimate(KEY, 4, params, fitness, config, block.unit))
    want = naive_estimate(KEY, 4, params, fitness, config)
    for path in want:
        np.testing.assert_allclose(got[path], want[path], rtol=1e-10, atol=1e-12)
    # the noise is taken, not regenerated: other noise gives another estimate
    other = noise.population_perturbation(KEY, 5, params, config, 0.1, 10, compact=True)
    moved = flat(gradient_estimate(KEY, 4, params, fitness, config, other.unit))
    assert not np.allclose(moved[("layer", "kernel")], want[("layer", "kernel")])


def test_only_small_low_rank_antithetic_noise_is_kept(monkeypatch):
    params = make_params(6, 5)  # 11 + 8 + 5 + 1 = 25 floats per pair at rank 1
    assert noise.keeps_noise(params, NoiseConfig(), 1000)
    assert not noise.keeps_noise(params, NoiseConfig(full_rank=True), 10)
    assert not noise.keeps_noise(params, NoiseConfig(antithetic=False), 10)
    monkeypatch.setattr(noise, "ESTIMATE_CHUNK_FLOATS", 25 * 4)
    assert noise.keeps_noise(params, NoiseConfig(), 8)
    assert not noise.keeps_noise(params, NoiseConfig(), 10)


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("x64", [False, True])
def test_kept_and_regenerated_noise_give_bit_identical_estimates(rank, x64):
    # A rollout in blocks of odd size keeps no noise (esrl.train), so the same
    # generation's estimate must not depend on whether the noise was kept.
    with jax.enable_x64(x64):
        # (4, 12): a shape where XLA moved the 1/sqrt(r) of regenerated noise
        params, config = make_params(4, 12), NoiseConfig(rank=rank)
        fitness = jax.random.normal(jax.random.key(5), (12,))
        block = pair_block(KEY, 3, params, config, 0.1, 12)
        kept = gradient_estimate(KEY, 3, params, fitness, config, block.unit)
        regenerated = gradient_estimate(KEY, 3, params, fitness, config)
        jax.tree.map(np.testing.assert_array_equal, kept, regenerated)


def test_pair_block_refuses_an_odd_concrete_first_member():
    # An odd first would pair members of two different antithetic pairs.
    params, config = make_params(), NoiseConfig(rank=2)
    for first in (3, np.int64(3), jnp.asarray(3)):
        with pytest.raises(ValueError, match="first member 3 must be even"):
            noise.pair_block(KEY, 0, params, config, 0.1, 4, first)
    block = jax.jit(
        lambda first: noise.pair_block(KEY, 0, params, config, 0.1, 4, first).members()
    )
    members = jax.vmap(
        lambda i: noise.member_perturbation(KEY, 0, i, params, config, 0.1)
    )(2 + jnp.arange(4))
    # bit for bit on the CPU; a GPU's fused multiply-adds differ in the last bit
    same = partial(np.testing.assert_allclose, rtol=1e-12, atol=1e-15)
    jax.tree.map(same, block(2), members)


def test_params_that_are_not_a_dict_of_arrays_are_a_clear_error():
    # were an AssertionError ('expected (frozen)dict') or AttributeError ('dtype')
    from esrl.agents.eggroll import EggrollConfig

    es = EggrollConfig(population=4).strategy()
    with pytest.raises(TypeError, match="dict of arrays, as flax's init .* got list"):
        es.init(KEY, [jnp.zeros((3, 2))])
    with pytest.raises(TypeError, match="got ArrayImpl"):
        noise.perturbed_paths(jnp.zeros(5), NoiseConfig())
    with pytest.raises(TypeError, match="dict of arrays.*; layer/w is a tuple"):
        es.init(KEY, {"layer": {"w": (jnp.zeros((3, 2)),)}})


@pytest.mark.parametrize("rank,reuse", [(1, 1), (2, 3)])
def test_member_noise_is_the_documented_draw_of_its_pair(rank, reuse):
    """E_i = sign * sigma * A B^T / sqrt(r), vectors sign * sigma * eps, from one draw.

    The draw of pair i // 2 is normal(fold_in(fold_in(key, g // reuse), i // 2)),
    sliced into the perturbed leaves in sorted path order: for a matrix (m, n), m * r
    floats of A rank-major, then n * r of B; for any other leaf, its size.
    Pinning the stream keeps runs (and the README's results) reproducible.
    """
    params, config = make_params(6, 5), NoiseConfig(rank=rank, noise_reuse=reuse)
    g, sigma = 7, 0.3
    shapes = {path: leaf.shape for path, leaf in flat(params).items()}
    sizes = {
        p: (s[0] + s[1]) * rank if len(s) == 2 else int(np.prod(s))
        for p, s in shapes.items()
        if p != ("steps",)
    }
    for member in range(4):
        k = jax.random.fold_in(jax.random.fold_in(KEY, g // reuse), member // 2)
        draw = np.asarray(jax.random.normal(k, (sum(sizes.values()),)))
        sign = sigma if member % 2 == 0 else -sigma
        tree = member_tree(KEY, g, member, params, config, sigma)
        got = {path: noise.materialize(e) for path, e in tree.items()}
        offset = 0
        for path in sorted(sizes):
            x, offset = draw[offset : offset + sizes[path]], offset + sizes[path]
            if len(shapes[path]) == 2:
                m, n = shapes[path]
                a = x[: m * rank].reshape(rank, m).T  # A: (m, r)
                b = x[m * rank :].reshape(rank, n).T  # B: (n, r)
                want = sign * a @ b.T / np.sqrt(rank)
            else:
                want = sign * x.reshape(shapes[path])
            np.testing.assert_allclose(got[path], want, rtol=1e-12, atol=1e-14)
