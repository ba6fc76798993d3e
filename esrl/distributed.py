"""Population sharding over devices and hosts with ``jax.sharding`` and ``shard_map``.

The population axis is split over a one-axis mesh (``"members"``): each device builds
the perturbations of its own members from keys and rolls them out, and only the
per-member results (returns, lengths: scalars) are gathered; the ES update then runs
replicated, identically on every device, so a sharded run computes the same numbers as
a single-device one. Several hosts join through JAX's own runtime,
`jax.distributed.initialize`; `jax.devices()` then lists every host's devices and the
same program runs on each. Only process 0 writes logs and checkpoints.

On one CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` fakes 4 devices.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
from jax.extend.backend import clear_backends
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "members"
"""Name of the mesh axis the population is split over."""


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Join a multi-host run (`jax.distributed.initialize`; None values auto-detect).

    Call it before any computation of your own. Importing esrl already started the
    local backend (gymnax builds arrays when imported), which jax.distributed refuses:
    its clients are dropped first, and those few arrays are copied over when used.
    """
    clear_backends()
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )


def select_devices(num_devices: int | None = None) -> Sequence[jax.Device]:
    """All visible devices, or the first ``num_devices`` of them."""
    devices = jax.devices()
    if num_devices is None:
        return devices
    if not 1 <= num_devices <= len(devices):
        raise ValueError(
            f"--devices {num_devices} is not available: {len(devices)} visible "
            f"({devices[0].platform}); use --devices <= {len(devices)}"
        )
    if jax.process_count() > 1 and num_devices != len(devices):
        raise ValueError("multi-host runs use every device; drop --devices")
    return devices[:num_devices]


def check_population(population: int, num_devices: int) -> None:
    """Raise unless the population splits evenly over the devices."""
    if population % num_devices:
        # an even population stays even: antithetic pairs need it
        step = num_devices if population % 2 else math.lcm(num_devices, 2)
        up = -(-population // step) * step
        raise ValueError(
            f"population {population} is not divisible by the {num_devices} devices; "
            f"use --population {up} (or fewer devices with --devices)"
        )


def population_mesh(population: int, num_devices: int | None = None) -> Mesh:
    """A one-axis mesh over the devices, after checking the population divides."""
    devices = select_devices(num_devices)
    check_population(population, len(devices))
    return Mesh(list(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def by_member(mesh: Mesh) -> NamedSharding:
    """The leading (member) axis is split over the devices."""
    return NamedSharding(mesh, P(AXIS))


def shard_members(fn: Callable, mesh: Mesh, num_args: int) -> Callable:
    """``fn(member_ids, *args)`` run per device on its members; outputs split by member.

    ``member_ids`` [N] is split over the mesh, the other ``num_args`` arguments are
    replicated, and every output leaf has a leading member axis.
    """
    return jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(P(AXIS),) + (P(),) * num_args,
        out_specs=P(AXIS),
        check_vma=False,
    )


def gather(tree, mesh: Mesh):
    """Make per-member results replicated (an all-gather of small arrays).

    The barrier keeps XLA from turning gather-then-reduce into partial sums plus an
    all-reduce, which would change the summation order (and the bits) with the
    device count.
    """
    return jax.lax.optimization_barrier(
        jax.lax.with_sharding_constraint(tree, replicated(mesh))
    )


def put_replicated(tree, mesh: Mesh):
    """Place a host pytree on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def is_main_process() -> bool:
    """Whether this process writes logs and checkpoints."""
    return jax.process_index() == 0


def to_host(tree):
    """Fetch a pytree of (replicated) arrays to host memory as NumPy values."""

    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            x = x.addressable_data(0)
        return jax.device_get(x)

    return jax.tree.map(fetch, tree)


def describe(devices: Sequence[jax.Device]) -> str:
    """E.g. ``'cpu x4 (cpu)'`` for the devices a run uses (summary.json's ``device``)."""
    d = devices[0]
    return f"{d.platform} x{len(devices)} ({d.device_kind})"
