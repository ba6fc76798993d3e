"""A small recurrent byte-level language model built from `esrl.nn` layers.

``embed -> layers x [RMSNorm -> minGRU -> residual; RMSNorm -> MLP -> residual]
-> RMSNorm -> head``. Every matrix is an `esrl.nn` layer that reads the ``"perturb"``
collection, so EGGROLL and OpenAI-ES perturb it per member; `DEFAULT_EXCLUDE` keeps the
embedding and head unperturbed by default (as HyperscaleES does). minGRU (Feng et al.
2024) gates depend on the input only, so training runs every matrix over the whole
sequence at once and only the elementwise recurrence is scanned; generation uses
`RecurrentLM.step`, one token at a time, with the same parameters.

Checkpoint layout (a directory): ``config.json`` holds the `LMConfig` fields plus
``"format": "esrl-recurrent-lm-v1"``; ``model.safetensors`` holds float32 tensors named
by their parameter path joined with ``/``::

    embed/embedding            [vocab_size, width]
    blocks_{i}/norm1/scale     [width]
    blocks_{i}/cell/input/kernel, .../bias   [width, 2*width], [2*width]
    blocks_{i}/norm2/scale     [width]
    blocks_{i}/mlp_in/kernel, .../bias       [width, mlp_hidden], [mlp_hidden]
    blocks_{i}/mlp_out/kernel, .../bias      [mlp_hidden, width], [width]
    norm/scale                 [width]
    head/kernel                [width, vocab_size]
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from esrl.envs.llm.tokenizer import VOCAB_SIZE
from flax import traverse_util

from esrl.checks import is_int
from esrl.nn import Dense, RMSNorm, perturbation, perturbed_matmul

FORMAT = "esrl-recurrent-lm-v1"
DEFAULT_EXCLUDE = ("embed", "head")
"""Parameter-path substrings that ES leaves unperturbed by default."""
WEIGHTS_DIR = Path(__file__).parent / "weights"
"""Where the shipped pretrained model lives."""


@dataclass(frozen=True)
class LMConfig:
    """Shape of the recurrent language model."""

    vocab_size: int = VOCAB_SIZE
    """Number of token ids (256 bytes, PAD, BOS, EOS and 4 tags; see `tokenizer`)."""
    width: int = 256
    """Residual stream and minGRU hidden size."""
    layers: int = 3
    """Number of [minGRU, MLP] blocks."""
    mlp_hidden: int = 256
    """Hidden size of each block's MLP."""

    def __post_init__(self):
        for name in ("vocab_size", "width", "layers", "mlp_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"LMConfig.{name} must be >= 1, got {getattr(self, name)}"
                )


class Embed(nn.Module):
    """Token embedding whose table reads a (low-rank or full) perturbation."""

    vocab_size: int
    width: int

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        table = self.param(
            "embedding", nn.initializers.normal(1.0), (self.vocab_size, self.width)
        )
        onehot = jax.nn.one_hot(tokens, self.vocab_size, dtype=table.dtype)
        p = perturbation(self, "embedding")
        return table[tokens] if p is None else perturbed_matmul(onehot, table, p)


def _linear_scan(a: jax.Array, b: jax.Array) -> jax.Array:
    """h_t = a_t * h_{t-1} + b_t over axis -2 (time) with h_{-1} = 0.

    A sequential scan of elementwise ops: on CPU it runs and compiles faster than
    `jax.lax.associative_scan`; all matrix work happens outside it, over all steps.
    """

    def body(h: jax.Array, ab: tuple[jax.Array, jax.Array]):
        h = ab[0] * h + ab[1]
        return h, h

    a_t, b_t = jnp.moveaxis(a, -2, 0), jnp.moveaxis(b, -2, 0)
    _, hs = jax.lax.scan(body, jnp.zeros_like(a_t[0]), (a_t, b_t))
    return jnp.moveaxis(hs, 0, -2)


class MinGRU(nn.Module):
    """minGRU with the parameters of `esrl.nn.MinGRUCell` (``input``: 2*hidden)."""

    hidden: int

    def setup(self):
        self.input = Dense(2 * self.hidden)

    def _gates(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        z, candidate = jnp.split(self.input(x), 2, axis=-1)
        z = nn.sigmoid(z)
        return 1.0 - z, z * candidate

    def __call__(self, x: jax.Array, h0: jax.Array) -> jax.Array:
        """Hidden states [..., T, H] of a sequence x [..., T, D] from h0 [..., H]."""
        keep, write = self._gates(x)
        write = write.at[..., 0, :].add(keep[..., 0, :] * h0)
        return _linear_scan(keep, write)

    def step(self, h: jax.Array, x: jax.Array) -> jax.Array:
        """One step: the new hidden state [..., H]."""
        keep, write = self._gates(x)
        return keep * h + write


class Block(nn.Module):
    """Pre-norm residual block: minGRU then a GELU MLP."""

    width: int
    mlp_hidden: int

    def setup(self):
        self.norm1 = RMSNorm()
        self.cell = MinGRU(self.width)
        self.norm2 = RMSNorm()
        self.mlp_in = Dense(self.mlp_hidden)
        self.mlp_out = Dense(self.width)

    def _mlp(self, x: jax.Array) -> jax.Array:
        return x + self.mlp_out(nn.gelu(self.mlp_in(self.norm2(x))))

    def __call__(self, x: jax.Array, h0: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Sequence mode: x [..., T, W] -> (y [..., T, W], last hidden [..., W])."""
        hs = self.cell(self.norm1(x), h0)
        return self._mlp(x + hs), hs[..., -1, :]

    def step(self, h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Token mode: x [..., W] -> (new hidden, y)."""
        h = self.cell.step(h, self.norm1(x))
        return h, self._mlp(x + h)


class RecurrentLM(nn.Module):
    """The language model; carry is the hidden state of every block [layers, width]."""

    config: LMConfig

    def setup(self):
        c = self.config
        self.embed = Embed(c.vocab_size, c.width)
        self.blocks = [Block(c.width, c.mlp_hidden) for _ in range(c.layers)]
        self.norm = RMSNorm()
        self.head = Dense(c.vocab_size, use_bias=False)

    def initial_carry(self) -> jax.Array:
        """The zero carry [layers, width]."""
        return jnp.zeros((self.config.layers, self.config.width))

    def __call__(
        self, tokens: jax.Array, carry: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Logits [T, V] after each of ``tokens`` [T] and the final carry."""
        carry = self.initial_carry() if carry is None else carry
        x = self.embed(tokens)
        last = []
        for i, block in enumerate(self.blocks):
            x, h = block(x, carry[i])
            last.append(h)
        return self.head(self.norm(x)), jnp.stack(last)

    def step(self, carry: jax.Array, token: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Feed one token (scalar id): (new carry [layers, width], logits [V])."""
        x = self.embed(token)
        new = []
        for i, block in enumerate(self.blocks):
            h, x = block.step(carry[i], x)
            new.append(h)
        return jnp.stack(new), self.head(self.norm(x))


def init_params(key: jax.Array, config: LMConfig) -> dict:
    """Fresh parameters of `RecurrentLM` (``{"embed": ..., "blocks_0": ..., ...}``)."""
    tokens = jnp.zeros((2,), jnp.int32)
    return RecurrentLM(config).init(key, tokens)["params"]


def count_params(params: dict) -> int:
    """Total number of scalars in ``params``."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def save_model(directory: str | Path, config: LMConfig, params: dict, **extra) -> Path:
    """Write ``config.json`` (+ ``extra`` fields) and ``model.safetensors``."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    flat = traverse_util.flatten_dict(params, sep="/")
    save_file(
        {k: np.asarray(v, np.float32) for k, v in flat.items()},
        directory / "model.safetensors",
    )
    meta = {"format": FORMAT, **dataclasses.asdict(config), **extra}
    (directory / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def _read_config(path: Path) -> LMConfig:
    """The `LMConfig` of a checkpoint's config.json, every field an integer.

    ``vocab_size`` may be left out, and must otherwise be the tokenizer's: the model
    reads and writes its ids, and another size would clamp or drop some silently.
    """
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        kind = type(meta).__name__  # a bad file, as below: ValueError, not TypeError
        raise ValueError(f"{path} must hold a JSON object, got {kind}")  # noqa: TRY004
    if meta.get("format", FORMAT) != FORMAT:
        raise ValueError(f"{path}: format {meta['format']!r}, expected {FORMAT!r}")
    meta = {"vocab_size": VOCAB_SIZE, **meta}
    fields = {}
    for field in dataclasses.fields(LMConfig):
        if field.name not in meta:
            raise ValueError(
                f"{path} lacks {field.name!r} (it needs width, layers, mlp_hidden)"
            )
        value = meta[field.name]
        if not is_int(value):
            raise ValueError(f"{path}: {field.name} must be an integer, got {value!r}")
        fields[field.name] = value
    if fields["vocab_size"] != VOCAB_SIZE:
        raise ValueError(
            f"{path}: vocab_size {fields['vocab_size']}, but the tokenizer "
            f"(esrl.envs.llm.tokenizer) has {VOCAB_SIZE} ids; the model must use them"
        )
    return LMConfig(**fields)


def load_model(directory: str | Path | None = None) -> tuple[LMConfig, dict]:
    """Load a checkpoint directory (default: the shipped model); checks every tensor."""
    from safetensors.numpy import load_file

    directory = WEIGHTS_DIR if directory is None else Path(directory)
    config_path, weights_path = (
        directory / "config.json",
        directory / "model.safetensors",
    )
    if not config_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"{directory} needs config.json and model.safetensors (see esrl.envs.llm."
            "model for the layout); train one with scripts/pretrain_lm.py --out DIR"
        )
    config = _read_config(config_path)
    try:
        tensors = load_file(str(weights_path))
    except Exception as err:  # safetensors raises its own error type
        raise ValueError(f"{weights_path} is not a safetensors file: {err}") from err
    expected = jax.eval_shape(lambda k: init_params(k, config), jax.random.key(0))
    expected = traverse_util.flatten_dict(expected, sep="/")
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{weights_path} does not match config.json: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    for name, spec in expected.items():
        if tuple(tensors[name].shape) != tuple(spec.shape):
            raise ValueError(
                f"{weights_path}: {name} has shape {tensors[name].shape}, config.json "
                f"implies {tuple(spec.shape)}"
            )
    params = {k: jnp.asarray(v, jnp.float32) for k, v in tensors.items()}
    return config, traverse_util.unflatten_dict(params, sep="/")
