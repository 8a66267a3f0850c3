"""Device, dtype and process-group set-up: CUDA when present, else DeepSpeed's CPU accelerator."""
from __future__ import annotations

import atexit
import json
import os
import socket
from pathlib import Path
from typing import Any

import torch

from chatrlhf.utils.host_memory import LARGE_BLOCK_BYTES, release_large_blocks

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def has_cuda() -> bool:
    return torch.cuda.is_available()


def accelerator_count() -> int:
    """Devices on this node: its GPUs, or 1 (the CPU)."""
    return torch.cuda.device_count() if has_cuda() else 1


def configure_accelerator(mmap_threshold: int = LARGE_BLOCK_BYTES) -> None:
    """On machines without CUDA: point DeepSpeed at its CPU accelerator (must run before importing it) and
    set which freed blocks the host allocator returns to the system (``host_memory``)."""
    if not has_cuda():
        _point_deepspeed_at_cpu()
        release_large_blocks(mmap_threshold)


def _point_deepspeed_at_cpu() -> None:
    if not has_cuda():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def default_dtype_name() -> str:
    """bf16 on GPUs; fp32 on CPU, where bf16 matrix products are ~100x slower."""
    return "bf16" if has_cuda() else "fp32"


def resolve_dtype(name: str | None) -> torch.dtype:
    name = name or default_dtype_name()
    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


def free_port() -> int:
    """A TCP port nobody listens on now, for a process group of our own."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_dist_env() -> None:
    """Give a plain ``python main.py`` run the variables the ``deepspeed`` launcher would set."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    os.environ.update(
        {
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"),
            "MASTER_PORT": os.environ.get("MASTER_PORT", str(free_port())),
        }
    )


def init_distributed() -> None:
    """Start DeepSpeed's process group (NCCL on GPUs, gloo on CPU) once."""
    _point_deepspeed_at_cpu()
    ensure_dist_env()
    import deepspeed

    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if has_cuda() else "gloo")
        atexit.register(shutdown_distributed)
        unlink_shm_workspace()
    if has_cuda():
        torch.cuda.set_device(local_rank())


def shutdown_distributed() -> None:
    """Destroy the process group at exit, while the interpreter is still whole.

    Left to interpreter finalisation, gloo's worker threads can outlive the objects they hold, and a rank
    dies with SIGABRT ("terminate called without an active exception") after a run that succeeded. An
    ``atexit`` hook rather than a call at the end of ``main`` keeps the group alive for in-process callers
    (tests, the e2e runner) that run several steps in one process."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def shm_workspace_path() -> Path:
    """Where DeepSpeed's CPU communication op names this rank's shared-memory all-reduce workspace."""
    env = os.environ
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{env.get('MASTER_ADDR', '')}_{env.get('MASTER_PORT', '')}_"
            f"{rank()}")
    return Path("/dev/shm") / name


def unlink_shm_workspace() -> None:
    """Remove the name of this rank's shared-memory workspace once every rank has mapped its peers'.

    DeepSpeed's CPU op creates a 67 MB segment per rank and never unlinks it, so each run used to leave
    its segments in /dev/shm (host RAM) until reboot. Mappings outlive the name, so the running job keeps
    its workspace and the kernel frees it when the last rank exits, even after a crash."""
    if has_cuda():
        return
    barrier()
    shm_workspace_path().unlink(missing_ok=True)


def local_device() -> torch.device:
    if has_cuda():
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def rank() -> int:
    """This process's rank; before the process group starts, the launcher's ``RANK`` variable."""
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def is_main_process() -> bool:
    """Global rank 0: the one process that writes what is for the user (saved models, metrics, logs)."""
    return rank() == 0


def local_rank() -> int:
    """This process's rank on its own node: the launcher's ``LOCAL_RANK`` (0 for a plain single process)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_local_main_process() -> bool:
    """Local rank 0: the process that writes what every rank of its node reads from the node's own disk
    (data cache, preset build), since another node cannot read it there."""
    return local_rank() == 0


def all_ranks(flag: bool) -> bool:
    """True when ``flag`` holds on every rank (one all-reduce); ``flag`` itself in a single process."""
    if world_size() == 1:
        return flag
    agreed = torch.tensor([int(flag)], device=local_device())
    torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
    return bool(agreed.item())


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over every rank (one all-reduce, on a copy); ``values`` itself in a single process."""
    if world_size() == 1:
        return values
    total = values.detach().to(local_device(), copy=True)
    torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
    return total.to(values.device)


def max_over_ranks(value: int) -> int:
    """The largest ``value`` of any rank (one all-reduce on this rank's device, which NCCL needs)."""
    if world_size() == 1:
        return value
    largest = torch.tensor([value], dtype=torch.long, device=local_device())
    torch.distributed.all_reduce(largest, op=torch.distributed.ReduceOp.MAX)
    return int(largest.item())


def all_gather_json(value: Any) -> list[Any]:
    """Every rank's ``value`` (JSON-serialisable), in rank order; ``[value]`` in a single process.

    Sent as UTF-8 bytes in tensors on this rank's device, so it works under NCCL (which cannot move CPU
    tensors) as under gloo; the sizes go first, since ranks' payloads differ in length.
    """
    if world_size() == 1:
        return [value]
    payload = torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8).to(local_device())
    size = torch.tensor([payload.numel()], dtype=torch.long, device=local_device())
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    torch.distributed.all_gather(sizes, size)
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=local_device())
    padded[: payload.numel()] = payload
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    torch.distributed.all_gather(parts, padded)
    return [json.loads(bytes(part[: int(n.item())].cpu().tolist()).decode()) for part, n in zip(parts, sizes)]


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
