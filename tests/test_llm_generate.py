"""LM, tokenizer and batched generation: exact equality with naive per-member loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from esrl.agents.eggroll import EggrollConfig
from esrl.envs.llm.generate import GenerationConfig, generate
from esrl.envs.llm.model import (
    LMConfig,
    MinGRU,
    RecurrentLM,
    init_params,
    load_model,
    save_model,
)
from esrl.envs.llm.tokenizer import (
    BOS,
    EOS,
    PAD,
    TAGS,
    decode,
    encode,
    encode_prompts,
    pad_batch,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from esrl.nn import MinGRUCell

CONFIG = LMConfig(width=16, layers=2, mlp_hidden=24)
PROMPTS = ["Use 1 2 3 to make 7.\n", "hi\n", "<think>x"]
MEMBERS = 4


@pytest.fixture(scope="module")
def setup():
    model = RecurrentLM(CONFIG)
    params = init_params(jax.random.key(0), CONFIG)
    strategy = EggrollConfig(population=MEMBERS, sigma=0.5, rank=2).strategy()
    state = strategy.init(jax.random.key(1), params)
    return model, params, jax.jit(strategy.ask)(state)


def _member(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


@jax.jit
def _step(variables, h, token):
    return RecurrentLM(CONFIG).apply(variables, h, token, method=RecurrentLM.step)


def naive_generate(model, params, perturb, prompt: str, config: GenerationConfig):
    """Token-by-token Python loop over one prompt and one member."""
    variables = {"params": params} | ({"perturb": perturb} if perturb else {})

    def step(h, t):
        return _step(variables, h, t)

    carry = jnp.zeros((CONFIG.layers, CONFIG.width))
    prompt_ids = encode(prompt, bos=True)
    for token in prompt_ids:
        carry, logits = step(carry, jnp.int32(token))
    out = []
    while len(out) < config.max_new_tokens:
        token = int(jnp.argmax(logits))
        out.append(token)
        if token == config.stop_token:
            break
        carry, logits = step(carry, jnp.int32(token))
    return out + [PAD] * (config.max_new_tokens - len(out))


def test_population_generation_equals_per_member_loop(setup):
    model, params, perts = setup
    ids, lengths = encode_prompts(PROMPTS)
    # stop on a token the model really emits, so that stopping is exercised too
    probe = generate(jax.random.key(0), model, params, ids, lengths, perts,
                     GenerationConfig(max_new_tokens=6))  # fmt: skip
    stop = int(np.bincount(np.asarray(probe).ravel()).argmax())
    config = GenerationConfig(max_new_tokens=6, stop_token=stop)
    out = np.asarray(
        generate(jax.random.key(0), model, params, ids, lengths, perts, config)
    )
    assert out.shape == (MEMBERS, len(PROMPTS), 6)
    for m in range(MEMBERS):
        for p, prompt in enumerate(PROMPTS):
            want = naive_generate(model, params, _member(perts, m), prompt, config)
            assert out[m, p].tolist() == want, (m, p)
    assert (out == PAD).any(), "some row should have stopped early"
    assert len({tuple(out[m].ravel()) for m in range(MEMBERS)}) > 1  # members differ


def test_plain_generation_equals_loop_and_ignores_padding(setup):
    model, params, _ = setup
    config = GenerationConfig(max_new_tokens=5)
    ids, lengths = encode_prompts(PROMPTS)
    out = np.asarray(
        generate(jax.random.key(0), model, params, ids, lengths, None, config)
    )
    for p, prompt in enumerate(PROMPTS):
        assert out[p].tolist() == naive_generate(model, params, None, prompt, config)
        # alone and padded much longer: prompt tokens are forced, padding never read
        one, length = encode_prompts([prompt], length=40)
        alone = generate(jax.random.key(0), model, params, one, length, None, config)
        assert np.asarray(alone)[0].tolist() == out[p].tolist()


def test_sampling_is_keyed_and_cold_sampling_is_greedy(setup):
    model, params, perts = setup
    ids, lengths = encode_prompts(PROMPTS)
    hot = GenerationConfig(max_new_tokens=8, temperature=2.0)
    a = generate(jax.random.key(3), model, params, ids, lengths, perts, hot)
    b = generate(jax.random.key(3), model, params, ids, lengths, perts, hot)
    c = generate(jax.random.key(4), model, params, ids, lengths, perts, hot)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    cold = GenerationConfig(max_new_tokens=8, temperature=1e-4)
    greedy = GenerationConfig(max_new_tokens=8)
    assert np.array_equal(
        generate(jax.random.key(5), model, params, ids, lengths, perts, cold),
        generate(jax.random.key(5), model, params, ids, lengths, perts, greedy),
    )


def test_sequence_mode_equals_step_mode_and_mingru_cell(setup):
    model, params, _ = setup
    tokens = jnp.asarray(encode("Use 3 5 2 to make 16.\n", bos=True))
    logits, carry = model.apply({"params": params}, tokens)
    h = jnp.zeros((CONFIG.layers, CONFIG.width))
    for t, token in enumerate(tokens):
        h, step_logits = model.apply(
            {"params": params}, h, token, method=RecurrentLM.step
        )
        np.testing.assert_allclose(step_logits, logits[t], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(h, carry, rtol=1e-4, atol=1e-5)
    cell_params = {"params": params["blocks_0"]["cell"]}
    x, h0 = jax.random.normal(jax.random.key(2), (2, CONFIG.width))
    want, _ = MinGRUCell(CONFIG.width).apply(cell_params, h0, x)
    got = MinGRU(CONFIG.width).apply(cell_params, h0, x, method=MinGRU.step)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_embedding_and_head_unperturbed_by_default():
    from esrl.envs.llm.model import DEFAULT_EXCLUDE

    from esrl.noise import NoiseConfig, perturbed_paths

    params = init_params(jax.random.key(0), CONFIG)
    paths = [
        "/".join(p)
        for p in perturbed_paths(params, NoiseConfig(exclude=DEFAULT_EXCLUDE))
    ]
    assert not any("embed" in p or "head" in p for p in paths)
    assert "blocks_0/cell/input/kernel" in paths and "blocks_1/mlp_out/kernel" in paths


def test_checkpoint_round_trip_and_clear_errors(tmp_path):
    params = init_params(jax.random.key(7), CONFIG)
    save_model(tmp_path / "m", CONFIG, params, note="tiny")
    config, loaded = load_model(tmp_path / "m")
    assert config == CONFIG
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="pretrain_lm.py"):
        load_model(tmp_path / "missing")
    bad = tmp_path / "bad"
    save_model(bad, CONFIG, params)
    (bad / "config.json").write_text('{"width": 32, "layers": 2, "mlp_hidden": 24}')
    with pytest.raises(ValueError, match="shape"):
        load_model(bad)


def test_tokenizer_specials_and_padding():
    text = "<think>1+2=3</think>\n<answer>1+2</answer>"
    ids = encode(text, bos=True, eos=True)
    assert ids[0] == BOS and ids[-1] == EOS and ids[1] == 259 and len(ids) == 15
    assert decode(ids) == text
    assert decode([*encode("ab"), EOS, *encode("cd")]) == "ab"
    assert decode([PAD, BOS, 0xFF]) == "\ufffd"
    batch, lengths = pad_batch([[1, 2, 3], [4]])
    assert batch.tolist() == [[1, 2, 3], [4, PAD, PAD]] and lengths.tolist() == [3, 1]
    with pytest.raises(ValueError, match="length"):
        pad_batch([[1, 2, 3]], length=2)
    assert set(TAGS) == {259, 260, 261, 262}


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_tokenizer_round_trips_any_text(text):
    assert decode(encode(text)) == text.encode("utf-8", "replace").decode(
        "utf-8", "replace"
    )


def test_benchmark_rows_follow_the_benchmark_contract():
    from esrl.envs.llm.bench import generation_benchmark

    from esrl.bench_report import ratios

    rows = generation_benchmark(
        population=4, prompts=2, max_new_tokens=3, repeats=1, model_config=CONFIG,
        methods=("plain", "eggroll"),
    )  # fmt: skip
    assert [r["method"] for r in rows] == ["plain", "eggroll"]
    assert rows[0]["ratio_to_plain"] == 1.0 and rows[1]["rank"] == 1
    assert all(r["env_steps_per_s"] > 0 and r["hidden"] == CONFIG.width for r in rows)
    [ratio] = ratios(rows)  # the benchmark's report reads them
    assert ratio["eggroll_to_plain"] == pytest.approx(rows[1]["ratio_to_plain"])
    assert (ratio["num_layers"], ratio["horizon"]) == (CONFIG.layers, 3)
    with pytest.raises(ValueError, match="plain"):
        generation_benchmark(methods=("eggroll",))
