"""scripts/gpu_smoke.sh, which GPU users run (no GPU here): its runs cover the promised grid, and every
command it would start is accepted by the step's own parser, so the script cannot drift from the flags."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from chatrlhf.step1_sft.main import build_parser as sft_parser
from chatrlhf.step2_reward.main import build_parser as reward_parser
from chatrlhf.step3_rlhf.flags import build_parser as ppo_parser

ROOT = Path(__file__).resolve().parents[1]
PARSERS = {"step1_sft/main.py": sft_parser, "step2_reward/main.py": reward_parser,
           "step3_rlhf/main.py": ppo_parser}


def test_gpu_smoke_script_covers_the_grid_with_valid_commands(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "NUM_GPUS": "2"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_smoke.sh"), str(tmp_path)], env=env,
                          capture_output=True, text=True, check=True)
    runs = dict(line.split("\t") for line in done.stdout.splitlines())
    assert len(runs) == 2 * 2 * 2 * (1 + 1 + 2)  # models x dtypes x ZeRO stages x (step 1, step 2, step 3 x hybrid)
    for name, command in runs.items():
        argv = shlex.split(command)
        assert argv[:3] == ["deepspeed", "--num_gpus", "2"], name
        script = next(i for i, token in enumerate(argv) if token.endswith("main.py"))
        step = "/".join(Path(argv[script]).parts[-2:])
        args = PARSERS[step]().parse_args(argv[script + 1:])
        model, dtype, zero = name.split()[1:4]
        stage = args.actor_zero_stage if step == "step3_rlhf/main.py" else args.zero_stage
        assert args.dtype == dtype and zero == f"zero{stage}", name
        if step == "step1_sft/main.py":
            assert args.model_name_or_path == model
        if step == "step3_rlhf/main.py":
            assert args.critic_zero_stage == args.actor_zero_stage
            assert args.enable_hybrid_engine == name.endswith("hybrid-on")
