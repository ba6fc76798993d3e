"""The ES step: gradient direction, update convention, optimizers, options and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from esrl.agents.eggroll import EggrollConfig
from esrl.agents.openai_es import OpenAIESConfig

from esrl import noise
from esrl.es import ES, ESConfig
from esrl.noise import NoiseConfig, PairNoise, pair_block

KEY = jax.random.key(11)


@pytest.fixture(autouse=True, scope="module")
def float64():
    """Exact comparisons in float64 (restored afterwards for other modules)."""
    with jax.enable_x64(True):
        yield


def make_params() -> dict:
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"w": jax.random.normal(k1, (8, 6)), "b": jax.random.normal(k2, (6,))}


TARGET = jax.tree.map(lambda x: x + 1.0, make_params())


def quadratic(params) -> jax.Array:
    """-||params - TARGET||^2: the gradient at params is 2 (TARGET - params)."""
    return -sum(
        jnp.sum((p - t) ** 2)
        for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(TARGET))
    )


def population_fitness(es: ES, state, objective) -> jax.Array:
    """Fitness of every member with its perturbation materialised (no shortcuts)."""
    perts = es.ask(state)

    def one(pert):
        dense = {k: noise.materialize(pert[k]) for k in pert}
        full = {k: state.params[k] + dense.get(k, 0.0) for k in state.params}
        return objective(full)

    return jax.vmap(one)(perts)


def flat(tree) -> jax.Array:
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def cosine(a, b) -> float:
    a, b = flat(a), flat(b)
    return float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


@jax.jit
def linear(params) -> jax.Array:
    return jnp.sum(params["w"] * TARGET["w"]) - 2.0 * jnp.sum(params["b"])


@pytest.mark.parametrize(
    "config",
    [EggrollConfig(population=2048, rank=1), EggrollConfig(population=2048, rank=4),
     OpenAIESConfig(population=2048)],
    ids=["eggroll-r1", "eggroll-r4", "openai_es"],
)  # fmt: skip
@pytest.mark.parametrize("objective", ["linear", "quadratic"])
def test_estimate_points_along_the_true_gradient(config, objective):
    fn = {"linear": linear, "quadratic": quadratic}[objective]
    es = config.strategy()
    state = es.init(KEY, make_params())
    fitness = jax.jit(lambda s: population_fitness(es, s, fn))(state)
    true_grad = jax.grad(fn)(state.params)
    raw = noise.gradient_estimate(
        state.key, state.generation, state.params, fitness, es.config.noise
    )
    assert cosine(raw, true_grad) > 0.9
    # centered ranks are monotone in fitness: still a clear ascent direction
    shaped = noise.gradient_estimate(
        state.key,
        state.generation,
        state.params,
        es_shaped(es, fitness),
        es.config.noise,
    )
    assert cosine(shaped, true_grad) > 0.8


def es_shaped(es: ES, fitness):
    from esrl.fitness import SHAPERS

    return SHAPERS[es.config.fitness_shaping](fitness)


def test_sgd_update_is_params_plus_lr_times_the_estimate():
    """The sign convention: optax minimises, so ES hands it -g and params move along g."""
    es = EggrollConfig(population=16, rank=2, optimizer="sgd", lr=0.3).strategy()
    state = es.init(KEY, make_params())
    fitness = jax.random.normal(jax.random.key(1), (16,))
    new, metrics = jax.jit(es.tell)(state, fitness)
    shaped = es_shaped(es, fitness)
    g = noise.gradient_estimate(state.key, 0, state.params, shaped, es.config.noise)
    for k in state.params:
        np.testing.assert_allclose(
            new.params[k], state.params[k] + 0.3 * g[k], rtol=1e-12
        )
    assert int(new.generation) == 1
    np.testing.assert_allclose(
        metrics["grad_norm"], jnp.linalg.norm(flat(g)), rtol=1e-6
    )


def run(es: ES, generations: int, objective=quadratic):
    """ask -> materialised fitness -> tell for ``generations`` (one jitted scan)."""

    def step(state, _):
        fitness = population_fitness(es, state, objective)
        state, metrics = es.tell(state, fitness)
        return state, metrics["fitness_mean"]

    state = es.init(KEY, make_params())
    return jax.jit(lambda s: jax.lax.scan(step, s, None, length=generations))(state)


@pytest.mark.parametrize(
    "agent,optimizer",
    [
        ("eggroll", "adam"),
        ("eggroll", "adamw"),
        ("eggroll", "sgd"),
        ("openai_es", "adam"),
    ],
)
def test_every_optimizer_climbs_a_quadratic(agent, optimizer):
    cls = EggrollConfig if agent == "eggroll" else OpenAIESConfig
    lr = {"adam": 0.1, "adamw": 0.1, "sgd": 1.0}[optimizer]
    es = cls(population=64, sigma=0.1, lr=lr, optimizer=optimizer).strategy()
    state, curve = run(es, 60)
    start = float(quadratic(make_params()))
    assert float(quadratic(state.params)) > 0.1 * start  # 90% of the distance closed
    assert float(curve[-1]) > float(curve[0])
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


def test_a_custom_optax_optimizer_is_used():
    es = ES(ESConfig(population=16), optimizer=optax.sgd(0.0))
    state = es.init(KEY, make_params())
    new, _ = es.tell(state, jnp.arange(16.0))
    for k in state.params:
        np.testing.assert_array_equal(new.params[k], state.params[k])


@pytest.mark.parametrize("shaping", ["centered_ranks", "z_score", "raw"])
def test_nan_fitness_never_reaches_the_parameters(shaping):
    es = EggrollConfig(population=12, fitness_shaping=shaping).strategy()
    state = es.init(KEY, make_params())
    fitness = (
        jnp.arange(12.0)
        .at[jnp.array([1, 4, 7])]
        .set(jnp.array([jnp.nan, jnp.inf, -jnp.inf]))
    )
    new, metrics = jax.jit(es.tell)(state, fitness)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(new.params))
    assert int(metrics["nonfinite_members"]) == 3
    assert float(metrics["fitness_max"]) == 11.0
    assert np.isfinite(float(metrics["fitness_mean"]))
    # a non-finite member counts as the worst one: the same update as if it had
    # the lowest fitness (any lower value for ranks; the worst finite one otherwise)
    low = -100.0 if shaping == "centered_ranks" else 0.0
    worst = jnp.arange(12.0).at[jnp.array([1, 4, 7])].set(low)
    same, _ = jax.jit(es.tell)(state, worst)
    for k in state.params:
        np.testing.assert_allclose(new.params[k], same.params[k], rtol=1e-6)


def test_all_nonfinite_fitness_leaves_parameters_unchanged():
    es = EggrollConfig(population=8, optimizer="sgd").strategy()
    state = es.init(KEY, make_params())
    for shaping_fitness in [jnp.full(8, jnp.nan), jnp.full(8, jnp.inf)]:
        new, _ = es.tell(state, shaping_fitness)
        for k in state.params:
            np.testing.assert_array_equal(new.params[k], state.params[k])


def test_a_nonfinite_update_is_skipped_and_reported():
    # was: a custom schedule (or an optimizer) giving NaN put NaN in every parameter
    def nan_after_one(count):
        return jnp.where(count >= 1, jnp.nan, 0.1)

    es = ES(ESConfig(population=8), optax.sgd(nan_after_one))
    state = es.init(KEY, make_params())
    tell = jax.jit(es.tell)
    first, metrics = tell(state, jnp.arange(8.0))
    assert int(metrics["skipped_update"]) == 0
    assert not np.array_equal(first.params["w"], state.params["w"])
    second, metrics = tell(first, jnp.arange(8.0))
    assert int(metrics["skipped_update"]) == 1
    for new, old in zip(jax.tree.leaves(second), jax.tree.leaves(first)):
        if new.dtype == jnp.float64:  # params, optimizer state, sigma: as they were
            np.testing.assert_array_equal(new, old)
    assert int(second.generation) == 2  # the generation still counts


@pytest.mark.parametrize("shaping", ["centered_ranks", "z_score"])
def test_equal_fitness_leaves_parameters_unchanged_without_pairs(shaping):
    # without antithetic pairs only the shaped weights cancel the noise
    es = EggrollConfig(
        population=7, antithetic=False, fitness_shaping=shaping, optimizer="sgd"
    ).strategy()
    state = es.init(KEY, make_params())
    new, metrics = es.tell(state, jnp.full(7, 0.1))
    assert float(metrics["grad_norm"]) == 0.0
    for k in state.params:
        np.testing.assert_array_equal(new.params[k], state.params[k])


def test_odd_population_with_antithetic_sampling_is_a_clear_error():
    with pytest.raises(
        ValueError, match="population 7 must be even for antithetic pairs; use 8"
    ):
        EggrollConfig(population=7).strategy()
    with pytest.raises(ValueError, match="even"):
        OpenAIESConfig(population=5).strategy()
    es = EggrollConfig(population=7, antithetic=False).strategy()  # fine without pairs
    assert jax.tree.leaves(es.ask(es.init(KEY, make_params())))[0].shape[0] == 7


def test_rank_too_large_is_a_clear_error():
    es = EggrollConfig(population=8, rank=7).strategy()
    with pytest.raises(ValueError, match=r"rank 7 exceeds min\(8, 6\) of parameter w"):
        es.init(KEY, make_params())
    EggrollConfig(population=8, rank=6).strategy().init(KEY, make_params())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"optimizer": "rmsprop"}, "optimizer must be one of"),
        ({"fitness_shaping": "ranks"}, "fitness_shaping must be one of"),
        ({"sigma": 0.0}, "sigma must be > 0"),
        ({"lr": -0.01}, "lr must be > 0"),
        ({"sigma_decay": 0.0}, r"sigma_decay must be in \(0, 1\], got 0.0"),
        # above 1: lr 0.01 * 1.01 ** 1000 is 210, and sigma or lr grows to inf
        ({"sigma_decay": 1.01}, r"sigma_decay must be in \(0, 1\], got 1.01"),
        ({"weight_decay": -1e-4}, "weight_decay must be >= 0"),
        ({"population": 1}, "population must be >= 2"),
        ({"sigma": 0.05, "sigma_min": 0.1}, "sigma_min 0.1 exceeds sigma 0.05"),
        ({"lr": float("inf")}, "lr must be finite, got inf"),
        ({"sigma": float("inf")}, "sigma must be finite, got inf"),
        ({"lr_decay": float("inf")}, r"lr_decay must be in \(0, 1\], got inf"),
    ],
)
def test_bad_configuration_is_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ESConfig(**kwargs)


def test_member_equals_the_slice_of_ask():
    es = EggrollConfig(population=8, rank=2).strategy()
    state = es.init(KEY, make_params())
    perts = es.ask(state)
    for i in (0, 5):
        one = es.member(state, i)
        jax.tree.map(
            lambda a, b, i=i: np.testing.assert_allclose(a, b[i], rtol=1e-14),
            one,
            perts,
        )


def test_ask_of_a_block_equals_those_members():
    es = EggrollConfig(population=12, rank=2).strategy()
    state = es.init(KEY, make_params())
    block = es.ask(state, first=4, count=6)
    odd = es.ask(state, first=3, count=5)  # not whole pairs: member by member
    for i in range(6):
        jax.tree.map(
            lambda a, b, i=i: np.testing.assert_allclose(a, b[i], rtol=1e-14),
            es.member(state, 4 + i),
            block,
        )
    for i in range(5):
        jax.tree.map(
            lambda a, b, i=i: np.testing.assert_allclose(a, b[i], rtol=1e-14),
            es.member(state, 3 + i),
            odd,
        )
    with pytest.raises(ValueError, match="first member 3 must be even"):
        es.ask(state, first=3, count=4)


def test_compact_ask_holds_each_pair_once_and_expands_to_the_members():
    es = EggrollConfig(population=12, rank=2).strategy()
    state = es.init(KEY, make_params())
    compact = es.ask(state, first=4, count=6, compact=True)
    assert isinstance(compact, PairNoise)
    assert compact.scale.shape == (6,)
    assert jax.tree.leaves(compact.unit)[0].shape[0] == 3  # pairs, not members
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(a, b),
        compact.members(),
        es.ask(state, first=4, count=6),
    )
    # not whole pairs: the member-by-member tree, as without compact
    odd = es.ask(state, first=3, count=5, compact=True)
    assert not isinstance(odd, PairNoise)
    with pytest.raises(ValueError, match="antithetic noise and an even population"):
        pair_block(KEY, 0, make_params(), NoiseConfig(antithetic=False), 0.1, 4)


def test_noise_reuse_keeps_noise_across_generations():
    es = EggrollConfig(population=8, rank=2, noise_reuse=2).strategy()
    state = es.init(KEY, make_params())
    asks = []
    for _ in range(3):
        asks.append(es.ask(state)["w"].b)
        state, _ = es.tell(state, jnp.arange(8.0))
    np.testing.assert_array_equal(asks[0], asks[1])
    assert not np.allclose(asks[1], asks[2])


def test_excluded_parameters_are_never_perturbed_nor_updated():
    es = EggrollConfig(population=8, exclude=("b",)).strategy()
    state = es.init(KEY, make_params())
    assert set(es.ask(state)) == {"w"}
    new, _ = es.tell(state, jnp.arange(8.0))
    np.testing.assert_array_equal(new.params["b"], state.params["b"])
    assert not np.allclose(new.params["w"], state.params["w"])


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_weight_decay_never_reaches_excluded_parameters(optimizer):
    es = EggrollConfig(
        population=8, exclude=("b",), optimizer=optimizer, weight_decay=0.1
    ).strategy()
    state = es.init(KEY, make_params())
    for _ in range(2):
        state, _ = es.tell(state, jnp.arange(8.0))
    np.testing.assert_array_equal(state.params["b"], make_params()["b"])
    # the perturbed leaves decay: flat fitness shrinks them
    flat_state, _ = es.tell(es.init(KEY, make_params()), jnp.ones(8))
    w = make_params()["w"]
    assert np.all(np.abs(flat_state.params["w"]) < np.abs(w))


def test_sigma_and_learning_rate_schedules():
    es = EggrollConfig(population=8, sigma=0.1, sigma_decay=0.5, sigma_min=0.03,
                       optimizer="sgd", lr=1.0, lr_decay=0.5).strategy()  # fmt: skip
    state = es.init(KEY, make_params())
    sigmas, steps = [], []
    fitness = jnp.arange(8.0)
    for _ in range(4):
        sigmas.append(float(state.sigma))
        shaped = es_shaped(es, fitness)
        g = noise.gradient_estimate(
            state.key, state.generation, state.params, shaped, es.config.noise
        )
        new, _ = es.tell(state, fitness)
        steps.append(
            float(
                jnp.linalg.norm(flat(new.params) - flat(state.params))
                / jnp.linalg.norm(flat(g))
            )
        )
        state = new
    np.testing.assert_allclose(sigmas, [0.1, 0.05, 0.03, 0.03], rtol=1e-6)
    np.testing.assert_allclose(steps, [1.0, 0.5, 0.25, 0.125], rtol=1e-6)


def test_weight_decay_shrinks_parameters_when_fitness_is_flat():
    es = EggrollConfig(
        population=8, optimizer="sgd", lr=0.1, weight_decay=0.5
    ).strategy()
    state = es.init(KEY, make_params())
    new, _ = es.tell(state, jnp.ones(8))
    for k in state.params:
        np.testing.assert_allclose(
            new.params[k], state.params[k] * (1 - 0.1 * 0.5), rtol=1e-12
        )


def test_agent_configs_describe_their_algorithms():
    egg = EggrollConfig(population=32, rank=3, exclude=("head",)).strategy().config
    assert egg.noise == NoiseConfig(rank=3, exclude=("head",))
    oes = OpenAIESConfig().strategy().config
    assert oes.noise.full_rank and oes.noise.antithetic
    assert (oes.optimizer, oes.fitness_shaping) == ("adam", "centered_ranks")


@pytest.mark.parametrize(
    "optimizer,weight_decay", [("adam", 0.0), ("adamw", 0.1), ("sgd", 0.1)]
)
def test_frozen_dict_params_update_as_plain_dicts_do(optimizer, weight_decay):
    # noise accepts a FrozenDict (flax's older init output); tell crashed on it with
    # a pytree structure error (a plain-dict estimate and decay mask)
    from flax.core import freeze

    es = EggrollConfig(
        population=8, optimizer=optimizer, weight_decay=weight_decay
    ).strategy()
    fitness = jnp.arange(8.0)
    plain, _ = es.tell(es.init(KEY, make_params()), fitness)
    frozen, _ = es.tell(es.init(KEY, freeze(make_params())), fitness)
    assert type(frozen.params) is type(freeze({}))
    for k in plain.params:
        np.testing.assert_array_equal(frozen.params[k], plain.params[k])


def test_float64_runs_keep_sigma_and_its_schedule_in_float64():
    # sigma was always stored as float32: under jax_enable_x64 every perturbation
    # was scaled by 0.05000000074505806 instead of 0.05, and decayed in float32
    es = EggrollConfig(population=8, rank=2, sigma=0.05, sigma_decay=0.9).strategy()
    state = es.init(KEY, make_params())
    for _ in range(3):
        state, _ = es.tell(state, jnp.arange(8.0))
    sigma = 0.05 * 0.9 * 0.9 * 0.9
    assert float(state.sigma) == sigma
    want = noise.member_perturbation(
        state.key, state.generation, 3, state.params, es.config.noise, sigma
    )
    got = es.member(state, 3)
    assert_close = lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-15)
    jax.tree.map(assert_close, got, want)
    with jax.enable_x64(False):  # float32 runs are unchanged
        assert es.init(KEY, make_params()).sigma.dtype == jnp.float32


def naive_adam(params, grads, lr, decay, decoupled, steps, mask):
    """Adam ascending the ES estimates ``grads`` (one per step), NumPy reference."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    mu = {k: np.zeros_like(v) for k, v in p.items()}
    nu = {k: np.zeros_like(v) for k, v in p.items()}
    for t in range(1, steps + 1):
        rate = lr[t - 1]
        for k, x in p.items():
            g = -np.asarray(grads[t - 1][k])  # optax minimises
            if mask[k] and not decoupled:
                g = g + decay * x  # L2: added before adam's rescaling
            mu[k] = b1 * mu[k] + (1 - b1) * g
            nu[k] = b2 * nu[k] + (1 - b2) * g * g
            step = (mu[k] / (1 - b1**t)) / (np.sqrt(nu[k] / (1 - b2**t)) + eps)
            if mask[k] and decoupled:
                step = step + decay * x
            p[k] = x - rate * step
    return p


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_and_adamw_weight_decay_equal_a_naive_reference(optimizer):
    # b is excluded: no noise, no estimate and no decay. (No lr_decay here: optax
    # computes its schedule in float32 even under x64, so it is exact to 1e-7 only.)
    es = EggrollConfig(
        population=8, rank=2, optimizer=optimizer, lr=0.1, weight_decay=0.3,
        exclude=("b",),
    ).strategy()  # fmt: skip
    state = es.init(KEY, make_params())
    grads = []
    for g in range(3):
        fitness = jax.random.normal(jax.random.key(g), (8,))
        shaped = es_shaped(es, fitness)
        grads.append(
            noise.gradient_estimate(state.key, g, state.params, shaped, es.config.noise)
        )
        state, _ = es.tell(state, fitness)
    want = naive_adam(
        make_params(), grads, [0.1] * 3, 0.3, optimizer == "adamw", 3,
        {"w": True, "b": False},
    )  # fmt: skip
    np.testing.assert_array_equal(state.params["b"], make_params()["b"])
    np.testing.assert_allclose(state.params["w"], want["w"], rtol=1e-12)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_integer_leaves_are_never_updated(optimizer):
    # adamw's decay mask is evaluated on adam's outputs, which are float for an
    # integer leaf too: a counter of 3 in params became 2, then 1 (decay, truncated)
    es = EggrollConfig(
        population=8, optimizer=optimizer, weight_decay=0.5, lr=0.5
    ).strategy()
    params = {**make_params(), "steps": jnp.asarray(3, jnp.int32)}
    state = es.init(KEY, params)
    for _ in range(2):
        state, _ = es.tell(state, jnp.arange(8.0))
    assert state.params["steps"] == 3 and state.params["steps"].dtype == jnp.int32
    assert not np.allclose(state.params["w"], params["w"])


def test_a_custom_optimizer_never_moves_excluded_leaves():
    # no estimate for them, and a decay that is not masked must not reach them either
    es = ES(
        ESConfig(population=8, noise=NoiseConfig(exclude=("b",))),
        optimizer=optax.adamw(0.1, weight_decay=0.5),
    )
    state = es.init(KEY, make_params())
    new, _ = es.tell(state, jnp.arange(8.0))
    np.testing.assert_array_equal(new.params["b"], state.params["b"])
    assert not np.allclose(new.params["w"], state.params["w"])
