"""Perturbable layers, written once for plain inference, EGGROLL, OpenAI-ES and PPO.

Every layer reads an optional per-member perturbation from the variable collection
``"perturb"``, whose tree mirrors ``"params"`` (only perturbed leaves are present): a
matrix leaf is an `esrl.noise.LowRank` (E = a.T @ b, sigma folded in) or a full array,
a vector leaf a full array. Without that collection a layer is an ordinary flax layer,
so the same module also trains by gradients. Layers act on one example (any leading
axes work); a population is a `vmap` over perturbations with shared params, which keeps
``x @ W`` one batched matmul and adds only the cheap ``(x @ a.T) @ b`` per member::

    jax.vmap(lambda p: model.apply({"params": params, "perturb": p}, x))(perts)
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.interpreters import partial_eval as pe

from esrl.noise import LowRank

PERTURB = "perturb"


def perturbation(module: nn.Module, name: str):
    """The perturbation of ``module``'s parameter ``name``, or None."""
    if module.has_variable(PERTURB, name):
        return module.get_variable(PERTURB, name)
    return None


def unread_perturbations(apply: Callable, perturbation, *args) -> list[str]:
    """Parameter paths of the ``perturbation`` leaves that ``apply(perturbation, *args)``
    never reads (a layer not from this module ignores the collection).

    Traced abstractly, nothing runs: ``args`` need only shapes and dtypes.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(perturbation)

    def fn(xs, rest):
        return apply(jax.tree_util.tree_unflatten(treedef, xs), *rest)

    def abstract(x):
        return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))

    shapes = [abstract(x) for _, x in leaves]
    jaxpr = jax.make_jaxpr(fn)(shapes, jax.tree.map(abstract, args)).jaxpr
    # Dead-code elimination follows the inputs into nested jaxprs (nn.remat, nn.scan,
    # jit): a flax layer under nn.remat takes the noise in and never reads it.
    _, used = pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))
    return sorted(
        {
            "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
            for (path, _), read in zip(leaves, used)  # the leaves come first
            if not read
        }
    )


def perturbed_matmul(x: jax.Array, kernel: jax.Array, p) -> jax.Array:
    """x @ (kernel + E) without materialising E when it is low rank."""
    y = x @ kernel
    if p is None:
        return y
    if isinstance(p, LowRank):  # a: [r, in], b: [r, out], rank-major
        # Written as multiply-and-sum, not einsum: under vmap an einsum becomes a
        # dot with a member batch axis, which XLA runs as P tiny matmuls for r > 1;
        # multiply-and-sum fuses into one pass over x and into y's epilogue.
        s = jnp.sum(x[..., None, :] * p.a, axis=-1)
        return y + jnp.sum(s[..., :, None] * p.b, axis=-2)
    return y + x @ p


def perturbed(value: jax.Array, p) -> jax.Array:
    """A vector parameter plus its (full-rank) perturbation, if any."""
    return value if p is None else value + p


class Dense(nn.Module):
    """y = x @ (W + E) + (b + e); W is (in, out)."""

    features: int
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        y = perturbed_matmul(x, kernel, perturbation(self, "kernel"))
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,))
            y = y + perturbed(bias, perturbation(self, "bias"))
        return y


class RMSNorm(nn.Module):
    """Root-mean-square norm with a perturbable scale."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        scale = perturbed(scale, perturbation(self, "scale"))
        return (
            x
            * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
            * scale
        )


class GRUCell(nn.Module):
    """GRU (Cho et al. 2014), reset gate applied after the recurrent product (as cuDNN's
    and flax's): fused input and recurrent matrices, both perturbable.

    The recurrent product has a bias only in the candidate (``candidate_bias``, inside
    ``r * (...)``): biases on its gate parts would duplicate the input's, and under ES
    each would add a second perturbation of the same gate bias.
    """

    hidden: int

    @nn.compact
    def __call__(self, h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        xi = Dense(3 * self.hidden, name="input")(x)
        hh = Dense(3 * self.hidden, use_bias=False, name="recurrent")(h)
        bias = self.param("candidate_bias", nn.initializers.zeros, (self.hidden,))
        bias = perturbed(bias, perturbation(self, "candidate_bias"))
        xr, xz, xn = jnp.split(xi, 3, axis=-1)
        hr, hz, hn = jnp.split(hh, 3, axis=-1)
        r = nn.sigmoid(xr + hr)
        z = nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * (hn + bias))
        h = (1.0 - z) * n + z * h
        return h, h


class MinGRUCell(nn.Module):
    """minGRU (Feng et al. 2024): gates from the input only, h = (1-z) h + z h~."""

    hidden: int

    @nn.compact
    def __call__(self, h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        z, candidate = jnp.split(Dense(2 * self.hidden, name="input")(x), 2, axis=-1)
        z = nn.sigmoid(z)
        h = (1.0 - z) * h + z * candidate
        return h, h


class LSTMCell(nn.Module):
    """LSTM (Hochreiter & Schmidhuber 1997); carry is (c, h). The forget gate's
    pre-activation is offset by +1 (Jozefowicz et al. 2015): a fresh cell keeps its
    memory rather than halving it every step."""

    hidden: int

    @nn.compact
    def __call__(self, carry, x: jax.Array):
        c, h = carry
        gates = Dense(4 * self.hidden, name="input")(x)
        gates = gates + Dense(4 * self.hidden, use_bias=False, name="recurrent")(h)
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = nn.sigmoid(f + 1.0) * c + nn.sigmoid(i) * jnp.tanh(g)
        h = nn.sigmoid(o) * jnp.tanh(c)
        return (c, h), h


CELLS = {"gru": GRUCell, "mingru": MinGRUCell, "lstm": LSTMCell}


def initial_carry(kind: str, hidden: int, dtype=float):
    """The zero carry of one cell of ``kind`` ('mlp' has an empty carry).

    The default float dtype (float64 under jax_enable_x64) is what the cell returns
    with params initialised in that mode; a scan needs the carry's dtype unchanged.
    """
    if kind == "mlp":
        return ()
    if kind == "lstm":
        return (jnp.zeros((hidden,), dtype), jnp.zeros((hidden,), dtype))
    if kind in CELLS:
        return jnp.zeros((hidden,), dtype)
    raise ValueError(f"unknown cell {kind!r}; choose one of mlp, {', '.join(CELLS)}")


def reset_carry(carry, done: jax.Array, kind: str, hidden: int):
    """Zero the carry where ``done`` (a scalar per example) is true."""
    zero = initial_carry(kind, hidden)
    return jax.tree.map(lambda z, c: jnp.where(done, z, c), zero, carry)
