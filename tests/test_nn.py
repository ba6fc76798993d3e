"""Perturbable layers: low-rank forward == dense forward with W + E_i materialised."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from esrl import noise
from esrl.nn import (
    Dense,
    GRUCell,
    LSTMCell,
    MinGRUCell,
    RMSNorm,
    initial_carry,
    reset_carry,
    unread_perturbations,
)
from esrl.noise import NoiseConfig
from esrl.policy import Policy

KEY = jax.random.key(3)
MEMBERS = 6
population = jax.jit(
    noise.population_perturbation, static_argnames=("config", "population")
)


@pytest.fixture(autouse=True, scope="module")
def float64():
    """Exact comparisons in float64 (restored afterwards for other modules)."""
    with jax.enable_x64(True):
        yield


def materialised(params, pert_i) -> dict:
    """params + E_i with every perturbation made dense (the naive reference)."""
    flat = traverse_util.flatten_dict(params)
    for path, p in traverse_util.flatten_dict(pert_i).items():
        flat[path] = flat[path] + noise.materialize(p)
    return traverse_util.unflatten_dict(flat)


def assert_members_match_dense(module, params, args, config, sigma=0.3):
    """vmapped low-rank apply == per-member apply with materialised W + E_i."""
    perts = population(KEY, 2, params, config, sigma, population=MEMBERS)

    @jax.jit
    def both(params, perts):
        def fast(p):
            return module.apply({"params": params, "perturb": p}, *args)

        def dense(p):  # the reference: member i's own dense W + E_i, no "perturb"
            return module.apply({"params": materialised(params, p)}, *args)

        plain = module.apply({"params": params}, *args)
        return jax.vmap(fast)(perts), jax.vmap(dense)(perts), plain

    got, want, plain = both(params, perts)
    jax.tree.map(
        lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-12), got, want
    )
    # every member's perturbation really changes the output
    change = jax.tree.map(
        lambda g, p: np.abs(g - p).reshape(MEMBERS, -1).max(1), got, plain
    )
    assert np.all(np.max(np.stack(jax.tree.leaves(change)), axis=0) > 1e-4)


@pytest.mark.parametrize("shape,rank", [((5, 7), 1), ((16, 4), 4), ((3, 9), 2)])
def test_dense_low_rank_forward_equals_materialised_dense(shape, rank):
    fan_in, features = shape
    module = Dense(features)
    x = jax.random.normal(jax.random.key(0), (fan_in,))
    params = jax.jit(module.init)(jax.random.key(1), x)["params"]
    params["bias"] = jax.random.normal(jax.random.key(2), (features,))
    assert_members_match_dense(module, params, (x,), NoiseConfig(rank=rank))


def test_dense_full_rank_forward_equals_materialised_dense():
    module = Dense(6)
    x = jax.random.normal(jax.random.key(0), (2, 5))  # leading axes work too
    params = jax.jit(module.init)(jax.random.key(1), x)["params"]
    assert_members_match_dense(module, params, (x,), NoiseConfig(full_rank=True))


def test_rmsnorm_perturbed_scale_equals_materialised():
    module = RMSNorm()
    x = jax.random.normal(jax.random.key(0), (7,))
    params = jax.jit(module.init)(jax.random.key(1), x)["params"]
    assert_members_match_dense(module, params, (x,), NoiseConfig(rank=1))
    ms = jnp.mean(x * x)
    np.testing.assert_allclose(
        module.apply({"params": params}, x), x / jnp.sqrt(ms + 1e-6)
    )


@pytest.mark.parametrize(
    "cell,hidden,inputs,rank",
    [
        (GRUCell, 6, 5, 3),
        (MinGRUCell, 5, 3, 2),
        (LSTMCell, 5, 6, 4),
    ],
)
def test_recurrent_cell_low_rank_step_equals_materialised(cell, hidden, inputs, rank):
    module = cell(hidden)
    kind = {GRUCell: "gru", MinGRUCell: "mingru", LSTMCell: "lstm"}[cell]
    carry = jax.tree.map(
        lambda z: jax.random.normal(jax.random.key(5), z.shape),
        initial_carry(kind, hidden, jnp.float64),
    )
    x = jax.random.normal(jax.random.key(0), (inputs,))
    params = jax.jit(module.init)(jax.random.key(1), carry, x)["params"]
    if kind != "mingru":  # both matrices of GRU and LSTM are perturbed
        perts = population(KEY, 0, params, NoiseConfig(rank=rank), 0.1, population=2)
        biases = {"candidate_bias"} if kind == "gru" else set()
        assert set(perts) == {"input", "recurrent"} | biases
    assert_members_match_dense(module, params, (carry, x), NoiseConfig(rank=rank))


def test_gru_cell_matches_the_textbook_equations():
    module = GRUCell(3)
    h, x = jnp.array([0.1, -0.2, 0.3]), jnp.array([1.0, -1.0])
    p = module.init(jax.random.key(0), h, x)["params"]
    assert "bias" not in p["recurrent"]  # the gates' biases are the input's alone
    p = {**p, "candidate_bias": jnp.array([0.5, -1.0, 2.0])}
    gi = x @ p["input"]["kernel"] + p["input"]["bias"]
    gh = h @ p["recurrent"]["kernel"]
    r = jax.nn.sigmoid(gi[:3] + gh[:3])
    z = jax.nn.sigmoid(gi[3:6] + gh[3:6])
    n = jnp.tanh(gi[6:] + r * (gh[6:] + p["candidate_bias"]))
    new, out = module.apply({"params": p}, h, x)
    np.testing.assert_allclose(new, (1 - z) * n + z * h, rtol=1e-12)
    np.testing.assert_array_equal(new, out)


@pytest.mark.parametrize(
    "kind,full_rank", [("mlp", False), ("gru", False), ("lstm", True)]
)
def test_policy_members_equal_materialised_policy(kind, full_rank):
    policy = Policy(action_dim=3, discrete=False, hidden=8, cell=kind, critic=True)
    carry = policy.initial_carry()
    obs = jax.random.normal(jax.random.key(0), (5,))
    params = jax.jit(policy.init)(jax.random.key(1), carry, obs)["params"]
    config = NoiseConfig(rank=2, full_rank=full_rank, exclude=("critic", "value"))
    assert_members_match_dense(policy, params, (carry, obs), config)


@pytest.mark.parametrize("kind", ["mlp", "gru", "lstm"])
def test_the_value_depends_on_no_actor_layer(kind):
    # was: a recurrent policy's critic read the last actor layer's output, so the value
    # loss trained the actor's dense layers (PureJaxRL branches both off the cell)
    policy = Policy(action_dim=2, hidden=8, num_layers=3, cell=kind, critic=True)
    carry = policy.initial_carry()
    obs = jax.random.normal(jax.random.key(0), (5,))
    params = jax.jit(policy.init)(jax.random.key(1), carry, obs)["params"]
    value = lambda p: policy.apply({"params": p}, carry, obs)[1].value
    grads = jax.grad(value)(params)
    for name in ("actor_0", "actor_1", "head"):
        assert all(not g.any() for g in jax.tree.leaves(grads[name])), name
    assert any(g.any() for g in jax.tree.leaves(grads["critic_0"]))
    if kind != "mlp":  # the shared torso: embedding and cell
        assert any(g.any() for g in jax.tree.leaves(grads["cell"]))


def test_dense_without_perturbation_is_an_ordinary_layer_with_gradients():
    module = Dense(4)
    x = jax.random.normal(jax.random.key(0), (3, 5))
    params = jax.jit(module.init)(jax.random.key(1), x)["params"]
    ref = nn.Dense(4)
    np.testing.assert_allclose(
        module.apply({"params": params}, x),
        ref.apply({"params": params}, x),
        rtol=1e-12,
    )
    loss = lambda p: jnp.sum(module.apply({"params": p}, x) ** 2)
    grads = jax.grad(loss)(params)
    y = x @ params["kernel"] + params["bias"]
    np.testing.assert_allclose(grads["kernel"], 2 * x.T @ y, rtol=1e-12)
    np.testing.assert_allclose(grads["bias"], 2 * y.sum(0), rtol=1e-12)


def test_population_vmap_keeps_the_shared_product_one_batched_matmul():
    """Under vmap over members, x @ W has no batch dimension: one [N, in] @ [in, out]."""
    module = Dense(32)
    x = jnp.ones((16,))
    params = jax.jit(module.init)(jax.random.key(1), x)["params"]
    perts = population(KEY, 0, params, NoiseConfig(rank=2), 0.1, population=64)
    xs = jnp.ones((64, 16))
    jaxpr = jax.make_jaxpr(
        jax.vmap(lambda p, xi: module.apply({"params": params, "perturb": p}, xi))
    )(perts, xs)
    dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    shared = [
        e
        for e in dots
        if tuple(v.aval.shape for v in e.invars) == ((64, 16), (16, 32))
        and not e.params["dimension_numbers"][1][0]  # no batch dimensions
    ]
    assert len(shared) == 1
    # the per-member low-rank products touch only [N, in, r] and [N, out, r] factors
    for e in dots:
        if e not in shared:
            assert all(v.aval.size <= 64 * 32 * 2 for v in e.invars)


@pytest.mark.parametrize("kind", ["gru", "mingru", "lstm"])
def test_initial_carry_has_the_dtype_a_step_returns_under_x64(kind):
    # the carry was float32 while float64 params made the cell return float64, so
    # a recurrent rollout under jax_enable_x64 failed (scan: carry dtypes differ)
    policy = Policy(action_dim=2, hidden=4, cell=kind)
    carry = policy.initial_carry()
    params = jax.jit(policy.init)(jax.random.key(0), carry, jnp.ones(3))["params"]
    step = lambda c, x: policy.apply({"params": params}, c, x)
    carry, _ = jax.lax.scan(step, carry, jnp.ones((3, 3)))
    assert {x.dtype for x in jax.tree.leaves(carry)} == {jnp.dtype(jnp.float64)}
    reset = reset_carry(carry, jnp.asarray(True), kind, 4)
    assert jax.tree.map(lambda x: x.dtype, reset) == jax.tree.map(
        lambda x: x.dtype, carry
    )


def test_policy_computes_in_float64_under_x64():
    # observations were cast to float32 first, so a float64 run lost their precision
    policy = Policy(action_dim=2, hidden=8, num_layers=2)
    obs = jnp.array([1.0 + 1e-12, -0.3, 2.0])
    params = jax.jit(policy.init)(jax.random.key(0), (), obs)["params"]
    x = obs
    for name in ("actor_0", "actor_1", "head"):
        x = x @ params[name]["kernel"] + params[name]["bias"]
        x = jnp.tanh(x) if name != "head" else x
    _, out = policy.apply({"params": params}, (), obs)
    np.testing.assert_allclose(out.logits, x, rtol=1e-14, atol=1e-16)


@pytest.mark.parametrize("kind", ["gru", "mingru", "lstm"])
def test_a_recurrent_policy_without_layers_is_a_clear_error(kind):
    # num_layers=0 built the same network as num_layers=1 (the cell is a layer)
    from esrl.policy import PolicySpec

    with pytest.raises(ValueError, match=f"a {kind} policy needs num_layers >= 1"):
        PolicySpec(kind=kind, num_layers=0)
    PolicySpec(kind="mlp", num_layers=0)  # a linear policy


class _Lifted(nn.Module):
    """esrl.nn and flax layers under nn.remat and nn.scan (both take the noise in)."""

    @nn.compact
    def __call__(self, x):
        h = nn.remat(Dense)(4, name="remat_esrl")(x)
        h = nn.remat(nn.Dense)(4, name="remat_flax")(h)
        scan = functools.partial(
            nn.scan,
            variable_broadcast=["params", "perturb"],
            split_rngs={"params": False},
        )
        h, _ = scan(GRUCell)(3, name="scan_esrl")(h[:3], h[:, None])
        h, _ = scan(nn.GRUCell)(3, name="scan_flax")(h, jnp.tile(h, (4, 1)))
        return h


def test_unread_perturbations_looks_inside_remat_and_scan():
    # was: an eqn that took the noise in counted as reading it, so flax's Dense under
    # nn.remat passed the check and ES moved its parameters by noise alone
    module, x = _Lifted(), jnp.ones(5)
    params = jax.jit(module.init)(jax.random.key(0), x)["params"]
    perts = noise.member_perturbation(KEY, 0, 0, params, NoiseConfig(), 0.1)
    apply = lambda p, x: module.apply({"params": params, "perturb": p}, x)
    unread = unread_perturbations(apply, perts, x)
    assert {path.split("/")[0] for path in unread} == {"remat_flax", "scan_flax"}
    assert "remat_flax/kernel" in unread
