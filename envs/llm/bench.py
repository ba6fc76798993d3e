"""Generation throughput of a population: EGGROLL vs OpenAI-ES vs plain, same model.

``plain`` generates for ``population x prompts`` rows with the shared weights (the
ceiling: no perturbation at all); ``eggroll`` gives every member its rank-r
perturbation of every matrix; ``openai_es`` a full-rank one. Throughput counts the
tokens the scan produces for the population per second (``rows x max_new_tokens``;
the scan always runs the full budget). Runs are interleaved and the median of
``repeats`` timed calls is kept, so a shared, noisy CPU affects every method alike.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from esrl.agents.eggroll import EggrollConfig
from esrl.agents.openai_es import OpenAIESConfig
from esrl.envs.llm.generate import GenerationConfig, generate
from esrl.envs.llm.model import DEFAULT_EXCLUDE, LMConfig, RecurrentLM, init_params
from esrl.envs.llm.tasks import countdown_task
from esrl.envs.llm.tokenizer import encode_prompts

METHODS = ("plain", "eggroll", "openai_es")


def _timed(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def _perturbations(method: str, population: int, rank: int, params):
    """The population's perturbations for ``method`` (None for plain)."""
    if method == "plain":
        return None
    common = {"population": population, "sigma": 0.01, "exclude": DEFAULT_EXCLUDE}
    if method == "eggroll":
        strategy = EggrollConfig(rank=rank, **common).strategy()
    else:
        strategy = OpenAIESConfig(**common).strategy()
    return jax.jit(strategy.ask)(strategy.init(jax.random.key(0), params))


def generation_benchmark(
    population: int = 32,
    prompts: int = 16,
    max_new_tokens: int = 48,
    rank: int = 1,
    repeats: int = 3,
    model_config: LMConfig | None = None,
    params=None,
    methods: tuple[str, ...] = METHODS,
) -> list[dict]:
    """Rows in the benchmark format (`esrl.bench_report` reads them): the case (env,
    kind, hidden, num_layers, horizon = tokens generated), method, population, rank,
    tokens/s."""
    if set(methods) - set(METHODS) or "plain" not in methods:
        raise ValueError(f"methods must include 'plain' and be among {METHODS}")
    config = model_config or LMConfig()
    params = init_params(jax.random.key(0), config) if params is None else params
    model, gen, key = (
        RecurrentLM(config),
        GenerationConfig(max_new_tokens),
        jax.random.key(0),
    )
    problems = countdown_task(3).generate(0, prompts)
    ids, lengths = encode_prompts([p.prompt for p in problems])
    tiled = jnp.tile(ids, (population, 1)), jnp.tile(lengths, population)

    def call(method: str, perts):
        rows = tiled if perts is None else (ids, lengths)
        return lambda: generate(key, model, params, *rows, perts, gen)

    calls = {m: call(m, _perturbations(m, population, rank, params)) for m in methods}
    times = {m: [] for m in methods}
    for m in methods:
        _timed(calls[m])  # compile
    for _ in range(repeats):  # interleaved, so load spikes hit every method
        for m in methods:
            times[m].append(_timed(calls[m]))
    tokens = population * prompts * max_new_tokens
    rates = {m: tokens / float(np.median(t)) for m, t in times.items()}
    return [
        {
            "env": "llm/countdown-3",
            "kind": "mingru",
            "hidden": config.width,
            "num_layers": config.layers,
            "horizon": max_new_tokens,
            "method": m,
            "population": population,
            "rank": rank if m == "eggroll" else None,
            "env_steps_per_s": rates[m],
            "ratio_to_plain": rates[m] / rates["plain"],
        }
        for m in methods
    ]
