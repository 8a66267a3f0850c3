"""Install chatrlhf: the repository root is the importable package ``chatrlhf``."""
from setuptools import setup

PACKAGES = [
    "chatrlhf",
    "chatrlhf.applications",
    "chatrlhf.training",
    "chatrlhf.step1_sft",
    "chatrlhf.step2_reward",
    "chatrlhf.step3_rlhf",
    "chatrlhf.utils",
    "chatrlhf.utils.data",
    "chatrlhf.utils.model",
]

setup(
    name="chatrlhf",
    version="0.1.0",
    description="Three-stage RLHF (SFT, reward model, PPO) on DeepSpeed, DeepSpeed-Chat compatible.",
    python_requires=">=3.10",
    package_dir={"chatrlhf": "."},
    packages=PACKAGES,
    package_data={
        "chatrlhf.utils.data": ["*.txt"],
        "chatrlhf.step1_sft": ["training_scripts/*/*/*.sh", "evaluation_scripts/*.sh"],
        "chatrlhf.step2_reward": ["training_scripts/*/*/*.sh", "evaluation_scripts/*.sh"],
        "chatrlhf.step3_rlhf": ["training_scripts/*/*/*.sh", "evaluation_scripts/*.sh"],
    },
    install_requires=[
        "torch>=2.1",
        "deepspeed>=0.14",
        "transformers>=4.46",
        "datasets>=2.18",
        "accelerate>=0.30",
        "peft>=0.10",
        "sentencepiece",
        "numpy",
        "tensorboard",
        "tokenizers>=0.19",
        "tqdm",
        "matplotlib",
        "safetensors",
        "pyarrow",
    ],
    extras_require={
        "test": ["pytest>=7", "ruff"],
        "smollm2": ["gguf>=0.10"],
        "bench": ["trl==1.16.0"],
    },
    entry_points={"console_scripts": ["chatrlhf=chatrlhf.cli:main"]},
)
