"""Content hashes that key the caches: data sources, tokenizers and settings."""
from __future__ import annotations

import hashlib
import json
import os

FULL_HASH_LIMIT = 256 * 1024 * 1024


def hash_text(*parts: object) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:20]


def _file_digest(path: str) -> str:
    """Content hash of a file; very large files are keyed by size and mtime instead."""
    stat = os.stat(path)
    if stat.st_size > FULL_HASH_LIMIT:
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def path_fingerprint(path: str) -> str:
    """What a local source's data is: the content of its file, or of every file in its folder."""
    if os.path.isfile(path):
        return _file_digest(path)
    entries = []
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            full = os.path.join(root, name)
            entries.append((os.path.relpath(full, path), _file_digest(full)))
    return hash_text(entries)


def source_fingerprint(name: str, seed: int) -> str:
    """Local paths by content; the synthetic set by name, seed and generator; hub datasets by name, seed and the
    revision the hub serves now (``hub_sources.hub_revision``: absent offline, where the cached copy is read)."""
    if os.path.exists(name):
        return hash_text("path", path_fingerprint(name))
    if name == "local/jsonfile" and os.path.isdir("data"):
        return hash_text("jsonfile", path_fingerprint("data"))
    from chatrlhf.utils.data import synthetic_tasks as synthetic

    if name in synthetic.SOURCE_NAMES:
        generator = (synthetic.GENERATOR_VERSION, synthetic.DEFAULT_NUM_TRAIN, synthetic.DEFAULT_NUM_EVAL)
        demonstrators = [] if name == synthetic.PERFECT_NAME else sorted(synthetic.DEMONSTRATORS.items())
        return hash_text("synthetic", name, seed, generator, synthetic.load_words(), repr(demonstrators),
                         synthetic.SLIP_REJECTED_RATE)
    from chatrlhf.utils.data.hub_sources import hub_repository, hub_revision

    repo = hub_repository(name)
    revision = hub_revision(repo) if repo else None
    if revision is None:
        return hash_text("named", name, seed)
    return hash_text("named", name, seed, revision)


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    return hash_text(body, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id)


def weights_fingerprint(model) -> str:
    """A model's identity for caches of what it computes: the bytes of every tensor of its state dict, by name.

    It names the weights themselves, not the files they came from, so a retrained model in the same folder (or
    the same weights in another) keys its outputs rightly.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:20]
