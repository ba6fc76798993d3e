"""Token-level LLM environments: registry, check_env, forced prompts, host reward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from esrl.envs.llm import Problem, Task, make_splits
from esrl.envs.llm.env import LLMEnv, make_reasoning_gym, make_task_env
from esrl.envs.llm.tasks import countdown_task, reasoning_gym_task
from esrl.envs.llm.tokenizer import BOS, EOS, encode

import esrl
from esrl.checks import check_env


def test_llm_ids_are_registered():
    ids = esrl.list_envs()
    for name in ("llm/countdown", "llm/countdown-3", "llm/countdown-4"):
        assert name in ids
    for name in ("chain_sum", "basic_arithmetic", "gsm_symbolic"):
        assert f"llm/reasoning-gym/{name}" in ids


@pytest.mark.parametrize(
    "env_id",
    [
        "llm/countdown-4",
        "llm/reasoning-gym/chain_sum",
        "llm/reasoning-gym/gsm_symbolic",
    ],
)
def test_check_env_passes(env_id):
    env = esrl.make(env_id, size=8, eval_pool=8)
    check_env(env)
    assert env.name.startswith("llm/")


@pytest.fixture(scope="module")
def countdown():
    env = LLMEnv(countdown_task(3), size=16, eval_pool=16)
    return env, jax.jit(env.reset), jax.jit(env.step)


def _run(env, reset, step, key, actions):
    """Reset, then feed ``actions`` while the episode lasts; returns the trace."""
    obs, state = reset(key)
    trace = {"obs": [int(obs)], "reward": [], "terminated": [], "truncated": []}
    for action in actions:
        obs, state, reward, terminated, truncated, _ = step(
            key, state, jnp.int32(action)
        )
        trace["obs"].append(int(obs))
        trace["reward"].append(float(reward))
        trace["terminated"].append(bool(terminated))
        trace["truncated"].append(bool(truncated))
        if terminated or truncated:
            break
    return state, trace


def test_prompt_is_forced_and_right_answer_rewarded(countdown):
    env, reset, step = countdown
    key = jax.random.key(3)
    _, state = reset(key)
    problem = env.problems[int(state.problem)]
    prompt = encode(problem.prompt, bos=True)
    answer = encode(problem.answer, eos=True)
    junk = [ord("x")] * (len(prompt) - 1)  # ignored: the prompt is forced
    state, trace = _run(env, reset, step, key, junk + answer)
    assert trace["obs"][: len(prompt)] == prompt and trace["obs"][0] == BOS
    assert trace["obs"][len(prompt) :] == answer
    assert trace["terminated"][-1] and not any(trace["terminated"][:-1])
    assert trace["reward"][-1] == pytest.approx(1.1)
    assert all(r == 0.0 for r in trace["reward"][:-1])
    assert env.completion(state) == problem.answer


def test_wrong_answer_and_truncation(countdown):
    env, reset, step = countdown
    key = jax.random.key(4)
    _, state = reset(key)
    prompt_len = len(encode(env.problems[int(state.problem)].prompt, bos=True))
    wrong = encode("<think>x</think>\n<answer>1+1</answer>", eos=True)
    _, trace = _run(env, reset, step, key, [0] * (prompt_len - 1) + wrong)
    assert trace["terminated"][-1] and trace["reward"][-1] == pytest.approx(0.1)
    _, trace = _run(env, reset, step, key, [ord("7")] * (prompt_len + 200))
    generated = len(trace["obs"]) - prompt_len
    assert generated == env.max_new_tokens
    assert trace["truncated"][-1] and not trace["terminated"][-1]
    assert trace["reward"][-1] == 0.0


def test_batched_episodes_score_each_member(countdown):
    env, reset, _ = countdown
    keys = jax.random.split(jax.random.key(0), 4)
    obs, state = jax.vmap(reset)(keys)
    assert obs.tolist() == [BOS] * 4
    step = jax.jit(jax.vmap(env.step))
    # member 0 answers right, the others say EOS straight away
    answers = [encode(env.problems[int(i)].answer, eos=True) for i in state.problem]
    prompt_lens = np.asarray(state.prompt_len)
    rewards = np.zeros(4)
    for t in range(int(prompt_lens.max()) + len(answers[0])):
        actions = []
        for m in range(4):
            k = t - (prompt_lens[m] - 1)
            source = answers[m] if m == 0 else [EOS]
            actions.append(source[min(max(k, 0), len(source) - 1)])
        _, state, reward, _, _, _ = step(keys, state, jnp.asarray(actions))
        rewards += np.where(rewards == 0, np.asarray(reward), 0)
    assert rewards[0] == pytest.approx(1.1) and np.allclose(rewards[1:], 0.0)


def test_user_task_and_disjoint_splits():
    def generate(seed, count):
        rng = np.random.default_rng(seed)
        return [Problem(f"say {rng.integers(10**6)}\n", "", None) for _ in range(count)]

    def score(completion, problem):
        return float(completion.strip() == problem.prompt.split()[1])

    task = Task("echo", generate, score, max_new_tokens=8)
    env = make_task_env(task, size=32, eval_pool=32)
    check_env(env)
    splits = make_splits(task, 0, 500, 100)
    assert not {p.prompt for p in splits.train} & {p.prompt for p in splits.eval}
    assert splits == make_splits(task, 0, 500, 100)  # fixed and seeded
    heldout = LLMEnv(task, split="eval", size=32, eval_pool=32)
    assert not {p.prompt for p in env.problems} & {p.prompt for p in heldout.problems}
    with pytest.raises(TypeError, match="Task"):
        make_task_env(object())
    with pytest.raises(ValueError, match="split"):
        LLMEnv(task, split="test")
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1, got 0"):
        LLMEnv(task, max_new_tokens=0)  # was: silently the task's budget
    # was a NumPy error ("pad_width must be of integral type", slice indices ...)
    for kwargs, message in [
        ({"size": 10.0}, "size must be an integer, got 10.0"),
        ({"max_new_tokens": 8.0}, "max_new_tokens must be an integer, got 8.0"),
        ({"eval_pool": 20.0}, "eval_pool must be an integer, got 20.0"),
    ]:
        with pytest.raises(TypeError, match=message):
            LLMEnv(task, **kwargs)


def test_eval_split_larger_than_eval_pool_is_refused():
    def generate(seed, count):  # 1000 distinct prompts: splits easily collide
        rng = np.random.default_rng(seed)
        return [Problem(f"say {rng.integers(1000)}\n", "", None) for _ in range(count)]

    task = Task("small", generate, lambda completion, problem: 0.0, max_new_tokens=4)
    train = LLMEnv(task, size=300, eval_pool=32)
    # Only the first eval_pool held-out problems are kept out of the train split.
    with pytest.raises(ValueError, match="needs eval_pool >= 200"):
        LLMEnv(task, split="eval", size=200, eval_pool=32)
    heldout = LLMEnv(task, split="eval", size=32, eval_pool=32)
    assert not {p.prompt for p in train.problems} & {p.prompt for p in heldout.problems}
    train = LLMEnv(task, size=300, eval_pool=200)
    heldout = LLMEnv(task, split="eval", size=200, eval_pool=200)
    assert not {p.prompt for p in train.problems} & {p.prompt for p in heldout.problems}


@pytest.mark.parametrize("name", ["basic_arithmetic", "chain_sum"])
def test_reasoning_gym_answer_whitespace_is_ignored(name):
    task = reasoning_gym_task(name)
    problem = task.generate(0, 1)[0]
    oracle = problem.data[1]["answer"]
    for answer in (oracle, f" {oracle} ", f"\n{oracle}\n"):
        completion = f"<think></think>\n<answer>{answer}</answer>"
        # was: basic_arithmetic gave " 42 " partial credit (len ratio), not correct
        assert task.score(completion, problem) == pytest.approx(1.1), answer


@pytest.mark.parametrize("name", ["countdown", "n_queens"])
def test_reasoning_gym_scorers_that_run_the_answer_are_refused(name):
    # was: accepted; their scorers eval / sympy.parse_expr the completion, so an
    # answer of __import__('os').system(...) ran a shell command (9**9**9 hung)
    with pytest.raises(ValueError, match="trust_scorer=True"):
        reasoning_gym_task(name)
    with pytest.raises(ValueError, match=repr(name)):
        make_reasoning_gym(name)
    mixed = [{"name": "chain_sum"}, {"name": name}]
    with pytest.raises(ValueError, match=repr(name)):  # also inside a composite
        reasoning_gym_task("composite", datasets=mixed)
    task = reasoning_gym_task(name, trust_scorer=True)  # the user's explicit choice
    assert task.name == f"reasoning-gym/{name}"


def _numbered(seed: int, count: int) -> list[Problem]:
    return [Problem(f"q{seed}-{i}\n", "", None) for i in range(count)]


def _zero(completion: str, problem: Problem) -> float:
    return 0.0


def test_the_eval_split_builds_with_default_sizes():
    # was: ValueError "split='eval' with size=1000 needs eval_pool >= 1000": the
    # train split's default size applied to the held-out one
    env = esrl.make("llm/countdown", split="eval", eval_pool=8)
    assert len(env.problems) == 8
    assert len(esrl.make("llm/countdown", eval_pool=8).problems) == 1000


def test_countdown_env_takes_max_value():
    # was: TypeError, make_countdown passed max_value on to LLMEnv
    env = esrl.make("llm/countdown", max_value=30, size=50, eval_pool=8)
    assert max(p.data["target"] for p in env.problems) <= 30
    targets = [p.data["target"] for p in esrl.make("llm/countdown", size=50).problems]
    assert max(targets) > 30


def test_dataset_options_passed_as_keywords_point_to_config():
    # was: "LLMEnv.__init__() got an unexpected keyword argument 'max_digits'"
    with pytest.raises(TypeError, match=r"max_digits.*config=\{'max_digits'"):
        esrl.make("llm/reasoning-gym/chain_sum", max_digits=2, size=2)


@pytest.mark.parametrize("field", ["generate", "score"])
def test_a_task_without_callables_is_a_clear_error(field):
    # was: accepted; generate=None failed as "'NoneType' object is not callable",
    # score=None only at the first finished episode, inside jax.pure_callback
    fields = {"generate": _numbered, "score": _zero, field: None}
    with pytest.raises(TypeError, match=f"task 'mine': {field} must be callable"):
        Task("mine", **fields)


@pytest.mark.parametrize("item", [("q\n", "", None), "q\n"])
def test_generate_must_return_problems(item):
    # was: AttributeError "'tuple' object has no attribute 'prompt'"
    task = Task("mine", lambda seed, count: [item] * count, _zero)
    with pytest.raises(TypeError, match="task 'mine': generate must return Problem"):
        make_task_env(task, size=1, eval_pool=1)


def _fails(completion: str, problem: Problem) -> float:
    return float(problem.data["target"])  # these problems carry no data


def test_a_score_that_raises_is_refused_when_the_env_is_made():
    # was: accepted; the KeyError came at the first finished episode, inside the
    # jitted rollout, as jax's "CpuCallback error" with no word of which task
    task = Task("mine", _numbered, _fails)
    with pytest.raises(RuntimeError, match="task 'mine': score raised TypeError.*''"):
        make_task_env(task, size=1, eval_pool=1)
