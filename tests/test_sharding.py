"""Members split over 4 (fake CPU) devices give bit-identical runs to one device;
--distributed and resumes on other devices."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

from esrl.xla import default_flag

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from esrl.agents.eggroll import EggrollConfig
    from esrl.cli import main
    from esrl.policy import PolicySpec
    from esrl.rollout import RolloutConfig
    from esrl.train import RunSpec, TrainConfig, train

    assert len(jax.devices()) == 4, jax.devices()
    runs = {}
    for n in (1, 4):
        spec = RunSpec(
            env="gymnax/CartPole-v1",
            agent_config=EggrollConfig(population=32, rank=2),
            train=TrainConfig(
                generations=4, eval_every=2, eval_episodes=4, progress=False,
                num_devices=n, policy=PolicySpec(hidden=8),
                rollout=RolloutConfig(horizon=60, episodes=2, normalize_obs=True),
            ),
        )
        out = sys.argv[1] + f"/d{n}"
        result = train(spec, out)
        lines = [json.loads(s) for s in open(out + "/metrics.jsonl")]
        for r in lines:
            r.pop("wall_time_s"), r.pop("env_steps_per_s")
        leaves = [np.asarray(x) for x in jax.tree.leaves(result.state)]
        runs[n] = (lines, leaves, result.summary["device"])
    (m1, l1, d1), (m4, l4, d4) = runs[1], runs[4]
    code = main(["train", "--env", "gymnax/CartPole-v1", "--population", "18",
                 "--out", sys.argv[1] + "/bad", "--no-progress"])
    print(json.dumps({
        "metrics_equal": m1 == m4,
        "state_equal": all(np.array_equal(a, b) for a, b in zip(l1, l4)),
        "nonzero_update": bool(m1[0]["grad_norm"] > 0),
        "devices": [d1, d4],
        "bad_population_code": code,
    }))
    """
)


def four_cpu_devices() -> dict:
    """This environment with 4 fake CPU devices (and the session's other XLA flags)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    default_flag("xla_force_host_platform_device_count", "4", env)
    return env


def test_four_devices_equal_one(tmp_path):
    env = four_cpu_devices()
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == ["cpu x1 (cpu)", "cpu x4 (cpu)"]
    assert result["metrics_equal"] and result["state_equal"]
    assert result["nonzero_update"]
    assert result["bad_population_code"] == 2
    assert "population 18 is not divisible by the 4 devices; use --population 20" in (
        proc.stderr
    )


ODD_SHARES = textwrap.dedent(
    """
    import json
    import jax, numpy as np
    import esrl
    from esrl.agents.eggroll import EggrollConfig
    from esrl.agents.openai_es import OpenAIESConfig
    from esrl.policy import PolicySpec
    from esrl.rollout import RolloutConfig
    from esrl.train import ESTrainer, TrainConfig

    env, strategy = esrl.make("gymnax/CartPole-v1"), EggrollConfig(12, rank=2).strategy()
    states = {}
    # shares and blocks of 3 members (odd) keep no noise, 1 device x 12 does
    for n, block in ((1, None), (4, None), (1, 3)):
        config = TrainConfig(num_devices=n, block=block, rollout=RolloutConfig(30),
                             policy=PolicySpec(kind="gru", hidden=4))
        trainer = ESTrainer(env, strategy, config)
        state, _ = jax.jit(trainer.generation)(trainer.init(jax.random.PRNGKey(0)))
        states[n, block] = [np.asarray(x) for x in jax.tree.leaves(state)]
    one = states[1, None]
    equal = {str(k): all(map(np.array_equal, v, one)) for k, v in states.items()}
    # full-rank noise, member by member (no pairs), sigma and lr schedules
    strategy = OpenAIESConfig(
        6, antithetic=False, sigma_decay=0.9, lr_decay=0.9, optimizer="adamw",
        weight_decay=0.1,
    ).strategy()
    for n in (1, 3):
        config = TrainConfig(num_devices=n, rollout=RolloutConfig(20),
                             policy=PolicySpec(kind="lstm", hidden=4))
        trainer = ESTrainer(env, strategy, config)
        generation, state = jax.jit(trainer.generation), trainer.init(jax.random.PRNGKey(1))
        for _ in range(2):
            state, _ = generation(state)
        states[n] = [np.asarray(x) for x in jax.tree.leaves(state)]
    equal["openai_es"] = all(map(np.array_equal, states[3], states[1]))
    print(json.dumps(equal))
    """
)


def test_odd_shares_blocks_and_openai_es_equal_one_device():
    env = four_cpu_devices()
    proc = subprocess.run(
        [sys.executable, "-c", ODD_SHARES],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {
        "(1, None)": True,
        "(4, None)": True,
        "(1, 3)": True,
        "openai_es": True,
    }


RESUME_ON_MORE_DEVICES = textwrap.dedent(
    """
    import sys
    import jax.numpy as jnp
    from esrl.checkpoint import save_checkpoint
    from esrl.cli import build_parser, main
    from esrl.cli_spec import spec_from_args

    # runs saved on one device (or 8), resumed where 4 are visible
    for name, options, devices in (
        ("pop6", ["--population", "6"], None),
        ("block16", ["--population", "16", "--block", "16"], None),
        ("devices8", ["--population", "24"], 8),
    ):
        args = build_parser().parse_args(
            ["train", "--env", "gymnax/CartPole-v1", "--devices", "1", *options]
        )
        spec = spec_from_args(args).to_dict()
        # None: all visible (one, when it was saved)
        spec["train"]["num_devices"] = devices
        meta = {"spec": spec, "counters": {"generation": 3}}
        save_checkpoint(f"{sys.argv[1]}/{name}", {"x": jnp.zeros(1)}, meta)
        print("code", main(["train", "--resume", f"{sys.argv[1]}/{name}"]), flush=True)
    """
)


def test_a_resume_that_no_longer_fits_the_devices_names_options_it_takes(tmp_path):
    """A resumed run keeps its population (and stored --block): the advice changes
    the devices or the block, never the population ("use --population 8" was refused
    by the resume it suggested, "leave it unset" kept the stored block). A run saved
    with --devices 8 where 4 are visible named a --devices 8 the user never gave and
    advised --devices <= 4, which population 24 splits over only as 4 or fewer."""
    proc = subprocess.run(
        [sys.executable, "-c", RESUME_ON_MORE_DEVICES, str(tmp_path)],
        env=four_cpu_devices(), capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip
    assert proc.stdout.split() == ["code", "2"] * 3, proc.stderr[-3000:]
    errors = [e for e in proc.stderr.splitlines() if e.startswith("esrl train: error")]
    assert errors == [
        (
            f"esrl train: error: population 6 of the run in {tmp_path}/pop6 does not "
            "split over the 4 devices, and a resumed run keeps its population; resume "
            "it with --devices 3"
        ),
        (
            "esrl train: error: block 16 does not divide the 4 members of each device "
            f"(4 in all); resume the run in {tmp_path}/block16 with --block 4 (a "
            "divisor of 4) or with fewer devices (--devices)"
        ),
        (
            f"esrl train: error: the run in {tmp_path}/devices8 splits its population "
            "over 8 devices (--devices 8) and 4 are visible; resume it with --devices 4"
        ),
    ]


TINY = ["--env", "gymnax/CartPole-v1", "--hidden", "8", "--population", "8",
        "--horizon", "20", "--generations", "2", "--no-progress"]  # fmt: skip


def esrl_train(*options: str, env: dict) -> subprocess.CompletedProcess:
    """``esrl train OPTIONS`` in a fresh process (nothing has started a backend)."""
    return subprocess.run(
        [sys.executable, "-m", "esrl.cli", "train", *options],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_joins_a_one_process_slurm_job(tmp_path):
    """Importing esrl (gymnax) starts the local backend, which jax.distributed refused:
    --distributed failed on every run with a RuntimeError traceback."""
    env = four_cpu_devices()
    env.update(
        SLURM_JOB_ID="1", SLURM_STEP_NODELIST="127.0.0.1", SLURM_NTASKS="1",
        SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_STEP_NUM_NODES="1",
        JAX_COORDINATOR_PORT=str(free_port()),
    )  # fmt: skip
    proc = esrl_train(*TINY, "--distributed", "--out", str(tmp_path), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["generations"], summary["device"]) == (2, "cpu x4 (cpu)")


def test_distributed_outside_a_cluster_is_one_error(tmp_path):
    env = {k: v for k, v in four_cpu_devices().items() if not k.startswith("SLURM")}
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    proc = esrl_train(*TINY, "--distributed", "--out", str(tmp_path), env=env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("esrl train: error: --distributed could not join")
