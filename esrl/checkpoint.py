"""Atomic checkpoints of any pytree in safetensors (never pickle), with JSON metadata.

One file, ``DIR/checkpoint.safetensors``: every array leaf is stored under its pytree
path (``.es.params['actor_0']['kernel']``), the caller's metadata (counters, the run's
configuration) as JSON in the safetensors header. A save writes a temporary file,
fsyncs it and ``os.replace``\\ s it over the previous checkpoint, so a kill during a
save leaves the previous checkpoint intact. Loading needs a template pytree of the same
structure (for instance the freshly initialised state), which restores every leaf's
exact dtype, PRNG-key type included::

    save_checkpoint(out, state, {"generation": 3})
    state, meta = load_checkpoint(out, template=fresh_state)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import safetensors.numpy
from safetensors import SafetensorError, safe_open

FILENAME = "checkpoint.safetensors"
FORMAT = "esrl-checkpoint-v1"
# dtypes safetensors.numpy round-trips; others (bfloat16, float8) are stored as raw bits
_NATIVE = {
    np.dtype(t)
    for t in (
        "bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
        "uint64", "float16", "float32", "float64",
    )
}  # fmt: skip


def checkpoint_path(directory: str | os.PathLike) -> Path:
    """Where the checkpoint of ``directory`` lives."""
    return Path(directory) / FILENAME


def has_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a checkpoint."""
    return checkpoint_path(directory).is_file()


def _name(path) -> str:
    return jax.tree_util.keystr(path) or "<root>"


def _to_numpy(leaf) -> np.ndarray:
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(
        leaf.dtype, jax.dtypes.prng_key
    ):
        leaf = jax.random.key_data(leaf)
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        leaf = leaf.addressable_data(0)  # replicated across hosts
    return np.asarray(jax.device_get(leaf))


def _raw(array: np.ndarray) -> np.ndarray:
    return array.view(np.dtype(f"uint{8 * array.dtype.itemsize}"))


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: str | os.PathLike, tree: Any, meta: dict) -> Path:
    """Atomically write ``tree`` (arrays) and ``meta`` (JSON-able) to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays, dtypes = {}, {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = _name(path)
        array = np.require(_to_numpy(leaf), requirements="C")  # keeps 0-d shapes
        if array.dtype not in _NATIVE:
            dtypes[name] = array.dtype.name
            array = _raw(array)
        arrays[name] = array
    header = {
        "format": FORMAT,
        # inf is a valid setting (obs_clip, max_grad_norm: no clipping), so non-finite
        # floats are kept, as Python's json writes and reads them (Infinity, NaN)
        "meta": json.dumps(meta),
        "dtypes": json.dumps(dtypes),
    }
    data = safetensors.numpy.save(arrays, metadata=header)
    final = checkpoint_path(directory)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    replace_atomically(final, write)
    _fsync_dir(directory)
    return final


def replace_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """``write`` a temporary file, then ``os.replace`` it over ``path``.

    A kill or an error part way (a full disk, Ctrl-C) leaves ``path`` as it was and no
    temporary file; those of earlier processes killed hard (SIGKILL, OOM) go now.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        stale.unlink(missing_ok=True)


def read_meta(directory: str | os.PathLike) -> dict:
    """The metadata of ``directory``'s checkpoint (no arrays are read)."""
    path = checkpoint_path(directory)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint in {str(directory)!r} (expected {FILENAME}); "
            "pass the --out directory of an earlier run"
        )
    try:
        with safe_open(str(path), framework="np") as f:
            header = f.metadata() or {}
    except SafetensorError as e:  # cut short (a full disk) or overwritten by hand
        raise ValueError(
            f"{path} is damaged and cannot be read ({e}); restore it from a copy, "
            "or start afresh with --overwrite"
        ) from e
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} is not an esrl checkpoint ({FORMAT})")
    return json.loads(header["meta"])


def _restore(name: str, stored: np.ndarray, like, dtypes: dict):
    if name in dtypes:
        stored = stored.view(np.dtype(dtypes[name]))
    # a template leaf may be abstract (jax.eval_shape): keys then have no key_impl
    is_key = jax.dtypes.issubdtype(getattr(like, "dtype", None), jax.dtypes.prng_key)
    if is_key:
        like = jax.numpy.zeros(like.shape, like.dtype)
    shape = jax.random.key_data(like).shape if is_key else np.shape(like)
    if stored.shape != tuple(shape):
        raise ValueError(
            f"checkpoint leaf {name} has shape {stored.shape}, the run expects "
            f"{tuple(shape)}: the checkpoint was written with another configuration"
        )
    if is_key:
        return jax.random.wrap_key_data(stored, impl=jax.random.key_impl(like))
    if not hasattr(like, "dtype"):  # a Python number: float64 either way
        return jax.numpy.asarray(stored, dtype=np.asarray(like).dtype)
    _check_precision(name, stored.dtype, np.dtype(like.dtype))
    return jax.numpy.asarray(stored, dtype=like.dtype)


def _check_precision(name: str, stored: np.dtype, wanted: np.dtype) -> None:
    """Refuse float64 read as float32 (or back): a run written in the other precision
    (jax_enable_x64) would resume as another run and evaluate to other returns."""
    floats = (np.dtype(np.float32), np.dtype(np.float64))
    if stored != wanted and stored in floats and wanted in floats:
        x64 = stored == np.float64
        setting = "with JAX_ENABLE_X64=1" if x64 else "without JAX_ENABLE_X64"
        raise ValueError(
            f"checkpoint leaf {name} is {stored.name}, this process makes "
            f"{wanted.name}: the run was written {setting} (jax_enable_x64); resume "
            f"or evaluate it {setting} too"
        )


def load_checkpoint(directory: str | os.PathLike, template: Any) -> tuple[Any, dict]:
    """Read ``directory``'s checkpoint into the structure of ``template``: (tree, meta)."""
    meta = read_meta(directory)
    path = checkpoint_path(directory)
    with safe_open(str(path), framework="np") as f:
        dtypes = json.loads((f.metadata() or {}).get("dtypes", "{}"))
        stored_names = set(f.keys())
        leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
        names = [_name(p) for p, _ in leaves]
        missing = [n for n in names if n not in stored_names]
        extra = sorted(stored_names - set(names))
        if missing or extra:
            raise ValueError(
                f"checkpoint {path} does not match this run: missing {missing[:5]}, "
                f"unexpected {extra[:5]}; it was written with another configuration"
            )
        restored = [
            _restore(n, f.get_tensor(n), leaf, dtypes)
            for n, (_, leaf) in zip(names, leaves, strict=True)
        ]
    return jax.tree_util.tree_unflatten(treedef, restored), meta
