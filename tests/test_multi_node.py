"""Multi-node runs on one machine: two simulated nodes, each with its own working directory as its own disk.

Each node is one ``deepspeed.launcher.launch`` process (what pdsh starts on every host) with one local rank,
so both ranks have local rank 0. A relative ``--data_output_path`` and a per-node ``CHATRLHF_CACHE`` put the
data cache and the preset build on the node's own disk. Before local rank 0 of every node built them, the
second node looked for a data cache only node 0 had written, and a preset it built itself had no weights
(transformers saved them on global rank 0 only). The models go to an absolute folder: the shared disk.

The launcher check runs each ``multi_node`` script with a stub ``deepspeed`` and feeds what it received to
DeepSpeed's own runner functions, which build the pdsh command without starting ssh.
"""
from __future__ import annotations

import base64
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NODES = 2
RUN_TIMEOUT_S = 600
COMMON = ["--data_output_path", "data_files", "--zero_stage", "2", "--per_device_train_batch_size", "4",
          "--per_device_eval_batch_size", "4", "--max_seq_len", "64", "--max_steps", "3", "--eval_iters", "1",
          "--log_interval", "1", "--seed", "7"]


def run_on_nodes(main: Path, flags: list[str], node_dirs: list[Path], env: dict[str, str]) -> None:
    """Start one launcher per node at once (cwd = the node's disk) and wait for both to exit 0."""
    from deepspeed.launcher.runner import encode_world_info

    from chatrlhf.utils.device import free_port

    world_info = encode_world_info({f"node-{i}": [0] for i in range(len(node_dirs))})
    port = free_port()
    launched = []
    for node_rank, node_dir in enumerate(node_dirs):
        command = [sys.executable, "-m", "deepspeed.launcher.launch", f"--world_info={world_info}",
                   f"--node_rank={node_rank}", "--master_addr=127.0.0.1", f"--master_port={port}", str(main), *flags]
        log = node_dir / f"{main.parent.name}.log"
        with open(log, "w") as handle:
            process = subprocess.Popen(command, cwd=node_dir, stdout=handle, stderr=subprocess.STDOUT,
                                       env={**env, "CHATRLHF_CACHE": str(node_dir / "chatrlhf-cache")},
                                       start_new_session=True)
        launched.append((process, log))
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:  # a node that fails leaves the other blocked in a collective: stop waiting at the first failure
        while time.monotonic() < deadline:
            codes = [process.poll() for process, _ in launched]
            if None not in codes or any(code not in (None, 0) for code in codes):
                break
            time.sleep(0.5)
    finally:
        for process, _ in launched:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    tails = "\n".join(f"--- node {i} ({log}):\n{log.read_text()[-2500:]}" for i, (_, log) in enumerate(launched))
    assert codes == [0] * len(node_dirs), f"exit codes {codes} (None: killed after {RUN_TIMEOUT_S} s)\n{tails}"
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"))


def node_caches(node_dir: Path, step: int) -> list[str]:
    """The complete tokenised caches of ``step`` on one node's disk (a finished one holds its info file)."""
    found = (node_dir / "data_files").glob(f"step{step}_*")
    return sorted(path.name for path in found if (path / "chatrlhf_info.json").is_file())


@pytest.mark.multiprocess
def test_steps_1_and_2_run_on_two_nodes_that_share_no_disk(tmp_path, subprocess_env):
    nodes = [tmp_path / f"node{i}" for i in range(NODES)]
    for node in nodes:
        node.mkdir()
    shared = tmp_path / "shared"
    sft, reward = shared / "sft", shared / "reward"

    run_on_nodes(ROOT / "step1_sft" / "main.py", ["--model_name_or_path", "tiny-opt", "--output_dir", str(sft),
                                                  "--learning_rate", "3e-3", *COMMON], nodes, subprocess_env)
    caches = [node_caches(node, 1) for node in nodes]
    assert caches[0] and caches[0] == caches[1], caches
    presets = [sorted((node / "chatrlhf-cache").glob("tiny-opt-*/tokenizer.json")) for node in nodes]
    assert all(len(found) == 1 for found in presets), presets
    assert presets[0][0].read_bytes() == presets[1][0].read_bytes(), "the nodes built different tokenizers"
    assert json.loads((sft / "metrics.json").read_text())["steps"] == 3
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    _, loading = AutoModelForCausalLM.from_pretrained(sft, output_loading_info=True)
    assert not loading["unexpected_keys"] and not loading["missing_keys"], loading

    run_on_nodes(ROOT / "step2_reward" / "main.py", ["--model_name_or_path", str(sft), "--output_dir", str(reward),
                                                     *COMMON], nodes, subprocess_env)
    caches = [node_caches(node, 2) for node in nodes]
    assert caches[0] and caches[0] == caches[1], caches
    assert json.loads((reward / "metrics.json").read_text())["steps"] == 3
    assert AutoModelForSequenceClassification.from_pretrained(reward).config.num_labels == 1


# Each multi_node script and the arguments it needs before OUTPUT (step 3 takes the actor and critic first).
MULTI_NODE_SCRIPTS = {
    "step1_sft/training_scripts/opt/multi_node/run_66b.sh": [],
    "step2_reward/training_scripts/opt/multi_node/run_350m.sh": [],
    "step2_dpo/training_scripts/opt/multi_node/run_350m.sh": [],
    "step2_kto/training_scripts/opt/multi_node/run_350m.sh": [],
    "step3_rlhf/training_scripts/opt/multi_node/run_66b.sh": ["actor", "critic", "3", "3"],
}
RECORDING_DEEPSPEED = '#!/bin/sh\nprintf "%s\\0" "$@" > "$ARGS_FILE"\n'


def test_the_launcher_check_covers_every_multi_node_script():
    found = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("step*/training_scripts/*/multi_node/*.sh"))
    assert found == sorted(MULTI_NODE_SCRIPTS), "list the new multi_node script in MULTI_NODE_SCRIPTS"


@pytest.mark.parametrize("script", sorted(MULTI_NODE_SCRIPTS))
def test_a_multi_node_script_becomes_a_pdsh_command_for_both_hosts(script, tmp_path, subprocess_env):
    from deepspeed.launcher import runner

    hostfile, args_file, stub = tmp_path / "hostfile", tmp_path / "argv", tmp_path / "bin" / "deepspeed"
    hostfile.write_text("# two fake hosts\nworker-0 slots=2\nworker-1 slots=2\n")
    stub.parent.mkdir()
    stub.write_text(RECORDING_DEEPSPEED)
    stub.chmod(0o755)
    env = {**subprocess_env, "HOSTFILE": str(hostfile), "ARGS_FILE": str(args_file),
           "PATH": f"{stub.parent}{os.pathsep}{subprocess_env['PATH']}"}
    done = subprocess.run(["bash", str(ROOT / script), *MULTI_NODE_SCRIPTS[script], str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr

    args = runner.parse_args(args_file.read_text().split("\0")[:-1])
    assert args.hostfile == str(hostfile)
    main = ROOT / script.split("/")[0] / "main.py"
    assert Path(args.user_script).resolve() == main.resolve()
    active = runner.parse_inclusion_exclusion(runner.fetch_hostfile(args.hostfile), args.include, args.exclude)
    active = runner.apply_num_nodes_and_gpus(active, args.num_nodes, args.num_gpus)
    args.master_addr = "10.0.0.1"  # the runner asks the first host over ssh (`hostname -I`) when none is given
    command, _, _ = runner.PDSHRunner(args, runner.encode_world_info(active)).get_cmd(dict(env), active)

    assert command[command.index("-w") + 1] == "worker-0,worker-1"
    launch = command.index("deepspeed.launcher.launch")
    world_info = next(arg for arg in command if arg.startswith("--world_info="))
    assert json.loads(base64.urlsafe_b64decode(world_info.split("=", 1)[1])) == {"worker-0": [0, 1],
                                                                                "worker-1": [0, 1]}
    assert {"--node_rank=%n", "--master_addr=10.0.0.1"} <= set(command[launch:])
    user_script = command.index(args.user_script)
    assert command[user_script + 1:] == args.user_args
    # What each node's launcher then starts: main.py with --local_rank first, which the step's parser accepts.
    step_main = importlib.import_module(f"chatrlhf.{script.split('/')[0]}.main")
    parsed = step_main.build_parser().parse_args(["--local_rank=0", *args.user_args])
    assert parsed.output_dir == str(tmp_path / "out")
