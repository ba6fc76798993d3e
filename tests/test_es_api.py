"""ask/tell as a library user calls them: mistakes get errors that say what to do."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from esrl.agents.eggroll import EggrollConfig
from esrl.agents.openai_es import OpenAIESConfig

from esrl import noise
from esrl.es import ES, ESConfig
from esrl.noise import NoiseConfig

KEY = jax.random.key(0)


def make_params() -> dict:
    k1, k2 = jax.random.split(jax.random.key(1))
    return {
        "torso": {"kernel": jax.random.normal(k1, (5, 4)), "bias": jnp.zeros(4)},
        "head": {"kernel": jax.random.normal(k2, (4, 2))},
    }


@pytest.mark.parametrize("shape", [(6,), (10,), (7,), (8, 2)])
def test_tell_refuses_fitness_that_is_not_one_value_per_member(shape):
    # 6 or 10 values were taken as 3 or 5 pairs and divided by 6 or 10: a silently
    # wrong update; 7 and (8, 2) failed deep inside with broadcasting errors
    es = EggrollConfig(population=8, rank=2).strategy()
    state = es.init(KEY, make_params())
    with pytest.raises(
        ValueError, match=r"fitness has shape .*one value per member.*\(8,\)"
    ):
        es.tell(state, jnp.ones(shape))
    with pytest.raises(ValueError, match=r"shaped has shape"):
        jax.jit(es.tell)(state, jnp.ones(8), jnp.ones(shape))


def test_tell_refuses_the_kept_noise_of_only_part_of_the_population():
    # a block's unit noise (one device's share, say) failed in a dot_general
    es = EggrollConfig(population=8, rank=2).strategy()
    state = es.init(KEY, make_params())
    whole = jax.jit(es.ask, static_argnames="compact")(state, compact=True)
    block = jax.tree.map(lambda x: x[:2], whole.unit)  # as ask(state, 0, 4, ...)
    with pytest.raises(ValueError, match=r"unit has the noise of 2 pairs.*needs 4"):
        es.tell(state, jnp.arange(8.0), unit=block)
    new, _ = jax.jit(es.tell)(state, jnp.arange(8.0), unit=whole.unit)
    assert not np.allclose(new.params["head"]["kernel"], state.params["head"]["kernel"])


@pytest.mark.parametrize("agent", [EggrollConfig, OpenAIESConfig])
def test_an_exclude_that_matches_no_parameter_is_a_clear_error(agent):
    # a typo perturbed and trained the parameter meant to stay frozen, silently
    with pytest.raises(ValueError, match=r"exclude 'haed' matches no parameter.*head"):
        agent(population=8, exclude=("head", "haed")).strategy().init(
            KEY, make_params()
        )
    with pytest.raises(ValueError, match=r"nothing left to perturb"):
        agent(population=8, exclude=("torso", "head")).strategy().init(
            KEY, make_params()
        )


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"rank": 2.0}, "rank"),
        ({"rank": True}, "rank"),
        ({"noise_reuse": 1.5}, "noise_reuse"),
        ({"population": 8.0}, "population"),
    ],
)
def test_non_integer_sizes_are_a_clear_error(kwargs, name):
    # rank 2.0 and population 8.0 failed at ask ("Shapes must be 1D sequences of
    # concrete values of integer type"); noise_reuse 1.5 shared noise irregularly
    with pytest.raises(TypeError, match=f"{name} must be an int"):
        EggrollConfig(**{"population": 8, **kwargs}).strategy()


def test_a_string_flag_is_a_clear_error():
    # was: accepted; "no" is truthy, so antithetic sampling stayed on
    with pytest.raises(TypeError, match="antithetic must be True or False, got 'no'"):
        EggrollConfig(population=8, antithetic="no").strategy()


def test_a_learning_rate_schedule_in_the_config_says_how_to_use_one():
    # was "TypeError: '>' not supported between instances of 'function' and 'int'"
    schedule = optax.linear_schedule(0.1, 0.0, 100)
    with pytest.raises(TypeError, match=r"lr must be a number.*optax"):
        EggrollConfig(population=8, lr=schedule).strategy()
    # the way the message names: the schedule (here 0) is the one used
    config = EggrollConfig(population=8).strategy().config
    es = ES(config, optax.adam(optax.constant_schedule(0.0)))
    state = es.init(KEY, make_params())
    new, _ = jax.jit(es.tell)(state, jnp.arange(8.0))
    jax.tree.map(np.testing.assert_array_equal, new.params, state.params)


def test_a_rank_too_large_says_what_to_do_in_python():
    # the message named only the CLI's --rank
    advice = "rank <= 2 (--rank), or in Python exclude it from the noise"
    message = f"{advice} (exclude=('head/kernel',))"
    with pytest.raises(ValueError, match=re.escape(message)):
        noise.check_rank(make_params(), NoiseConfig(rank=3))
    with pytest.raises(ValueError, match=r"exceeds min\(4, 2\) of parameter head"):
        ES(ESConfig(population=8, noise=NoiseConfig(rank=3))).init(KEY, make_params())


@pytest.mark.parametrize("cls", [EggrollConfig, OpenAIESConfig])
def test_an_odd_population_names_the_agent_configs_own_antithetic_field(cls):
    # was "... (or, in Python, NoiseConfig(antithetic=False))", which an agent config
    # does not take, and only when .strategy() was called
    with pytest.raises(ValueError, match=rf"use 8 \(or, in Python, {cls.__name__}\("):
        cls(population=7)
    assert cls(population=7, antithetic=False).strategy().config.population == 7
