"""Shared fixtures: offline switches, a private preset cache, and small trained models reused across tests."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HH_FILE = SHARED_DATA / "hh_rlhf_harmless.jsonl.gz"


DIST_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """The environment for a child run: one thread, unbuffered, and none of this process's rank variables."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARIABLES}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", DS_ACCELERATOR="cpu")
    return env


@pytest.fixture(scope="session")
def hh_file() -> Path:
    """The real HH-RLHF sample in ../shared/data (never copied into the repository)."""
    if not HH_FILE.exists():
        pytest.skip(f"{HH_FILE} is not present")
    return HH_FILE


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    """Preset builds and data caches of the test session, away from the user's own cache."""
    root = tmp_path_factory.mktemp("chatrlhf-cache")
    os.environ["CHATRLHF_CACHE"] = str(root / "presets")
    return root


@pytest.fixture(scope="session")
def data_cache(cache_root) -> str:
    return str(cache_root / "data")


@pytest.fixture(scope="session")
def sft_model(cache_root, data_cache, tmp_path_factory) -> str:
    """A step-1 model trained for a few steps on synthetic/tasks (shared by steps 2 and 3 tests)."""
    from chatrlhf.step1_sft.main import main

    out = tmp_path_factory.mktemp("sft")
    assert main(["--output_dir", str(out), "--max_steps", "12", "--per_device_train_batch_size", "8",
                 "--max_seq_len", "96", "--learning_rate", "3e-3", "--data_output_path", data_cache,
                 "--eval_iters", "2", "--log_interval", "4", "--enable_tensorboard",
                 "--tensorboard_path", str(out / "tb")]) == 0
    return str(out)


@pytest.fixture
def built_engines(monkeypatch) -> dict:
    """Step 3's engines, caught as ``build_engines`` returns them (under ``"engines"``)."""
    from chatrlhf.step3_rlhf import run as run_module

    built: dict = {}
    original = run_module.build_engines

    def spy(*args, **kwargs):
        built["engines"] = original(*args, **kwargs)
        return built["engines"]

    monkeypatch.setattr(run_module, "build_engines", spy)
    return built
