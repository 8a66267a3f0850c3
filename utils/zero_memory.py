"""Model-state memory (weights, gradients, optimizer states) of one DeepSpeed engine under ZeRO 0-3 and offload.

Bytes per parameter follow DeepSpeed's mixed-precision optimizers: 16-bit weights and gradients, an fp32 master
copy, fp32 gradients for the step and Adam's fp32 ``m`` and ``v``. ZeRO stage 1 partitions the fp32 optimizer
states over the ``N`` data-parallel ranks, stage 2 also the gradients, stage 3 also the weights. Offload keeps the
optimizer states (and with ZeRO-3 the weights) in host memory. The parameter counts come from the model built on
the meta device (``model_specs``), so this holds for any family.

Where DeepSpeed has an estimator (``estimate_zero2_model_states_mem_needs`` and
``estimate_zero3_model_states_mem_needs``, which ``chatrlhf memory`` also calls and prints), the totals
equal its figures (the tests compare them at ZeRO-2 and -3, with and without offload, for OPT, LLaMA and a family
without activation formulas). The formulas stay here because DeepSpeed's give one total per device and one per
host, while the report splits weights, gradients and optimizer states; and because they also cover what DeepSpeed's
do not: fp32 training (no 16-bit copy), ZeRO-0 and -1, LoRA (a fraction of the weights trained), frozen engines
(no optimizer), and allocations DeepSpeed's leave out (counted under ``buffers``).

GPU figures are per device (per rank); CPU figures are per node (``gpus_per_node`` ranks share the host).
"""
from __future__ import annotations

from dataclasses import dataclass

from chatrlhf.utils.model_specs import ModelKind, ModelSpec

FP32_BYTES = 4
ADAM_STATE_BYTES = 8  # m and v in fp32

# DeepSpeed's defaults, which chatrlhf's training/ds_config.py (like DeepSpeed-Chat's ds_utils) leaves alone.
REDUCE_BUCKET_SIZE = 500_000_000  # zero_optimization.reduce_bucket_size: gradient bucket, allocated in full
ALLREDUCE_BUCKET_SIZE = 500_000_000  # allreduce_bucket_size: ZeRO-0 flattens gradients up to this many to all-reduce
PREFETCH_BUCKET_SIZE = 50_000_000  # stage3_prefetch_bucket_size: chatrlhf's ds_config keeps DeepSpeed's default
CPU_BUFFER_FACTOR = 1.5  # DeepSpeed's additional_buffer_factor on host memory (pinned copies, fragmentation)


@dataclass(frozen=True)
class Placement:
    """Bytes on the device (per rank) and on the host (per node)."""

    gpu: int = 0
    cpu: int = 0

    def __add__(self, other: Placement) -> Placement:
        return Placement(self.gpu + other.gpu, self.cpu + other.cpu)


@dataclass(frozen=True)
class ZeroSettings:
    """DeepSpeed engine settings shared by every model of a run."""

    stage: int = 0
    offload: bool = False
    gpus_per_node: int = 1
    num_nodes: int = 1
    reduce_bucket_size: int = REDUCE_BUCKET_SIZE
    allreduce_bucket_size: int = ALLREDUCE_BUCKET_SIZE
    prefetch_bucket_size: int = PREFETCH_BUCKET_SIZE
    cpu_buffer_factor: float = CPU_BUFFER_FACTOR
    device_is_host: bool = False
    """``--device cpu``: "device" buffers are host pages, which count in RSS only once written."""

    def __post_init__(self) -> None:
        if self.stage not in (0, 1, 2, 3):
            raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {self.stage}")
        if self.offload and self.stage == 0:
            raise ValueError("--offload needs --zero_stage 1, 2 or 3: DeepSpeed only offloads ZeRO-partitioned states")
        if self.gpus_per_node < 1 or self.num_nodes < 1:
            raise ValueError(f"need at least one GPU and one node, got {self.gpus_per_node} x {self.num_nodes}")

    @property
    def world_size(self) -> int:
        return self.gpus_per_node * self.num_nodes


@dataclass(frozen=True)
class EngineStates:
    """One model's engine: its parameters, model states and buffers."""

    role: str
    spec: ModelSpec
    kind: ModelKind
    stage: int
    offload: bool
    total_params: int
    trainable_params: int
    largest_layer_params: int
    weights: Placement
    gradients: Placement
    optimizer: Placement
    buffers: Placement
    load_peak_cpu: int
    """Host bytes per node while loading: every rank holds an fp32 copy (one layer at a time under zero.Init)."""

    @property
    def states(self) -> Placement:
        return self.weights + self.gradients + self.optimizer


def trained_engine(
    role: str,
    spec: ModelSpec,
    kind: ModelKind,
    zero: ZeroSettings,
    *,
    dtype_bytes: int,
    lora_dim: int = 0,
) -> EngineStates:
    """An engine with an optimizer (SFT model, reward model, actor, critic).

    With LoRA (``--only_optimize_lora``) only the adapters (and a reward/critic's value head) have gradients and
    optimizer states. ZeRO-1/2 clone an fp32 master partition even in fp32; ZeRO-0 and ZeRO-3 in fp32 update
    the weights in place.
    """
    if lora_dim and not spec.block_linears:
        raise ValueError(f"--lora_dim: {spec.name} has no nn.Linear in its decoder blocks, and chatrlhf's LoRA wraps "
                         "nn.Linear layers only")
    total = spec.params(kind) + spec.lora_params(lora_dim)
    trainable = total
    if lora_dim:
        head = spec.value_head_params if kind == "reward" else 0  # the value head trains alongside LoRA
        trainable = spec.lora_params(lora_dim) + head
    largest = spec.largest_layer_params(kind)
    largest_trainable = spec.largest_lora_module(lora_dim) if lora_dim else largest
    n, nodes, w = zero.world_size, zero.num_nodes, dtype_bytes
    mixed = w < FP32_BYTES
    fp32_grad = FP32_BYTES if mixed else 0
    master = FP32_BYTES if (mixed or zero.stage in (1, 2)) else 0
    stage = zero.stage

    if stage == 3:
        if zero.offload:
            weights = Placement(gpu=w * largest, cpu=w * total // nodes)
        else:
            weights = Placement(gpu=w * total // n + w * largest)
    else:
        weights = Placement(gpu=w * total)

    if zero.offload:
        # fp32 gradients and the optimizer live on the host; the device keeps 16-bit gradients only while they
        # are produced: all of them until the step in ZeRO-1, one bucket in ZeRO-2, one gathered layer in ZeRO-3.
        device_grads = {1: w * trainable, 2: 0, 3: w * largest_trainable}[stage]
        gradients = Placement(gpu=device_grads, cpu=FP32_BYTES * trainable // nodes)
        optimizer = Placement(cpu=(FP32_BYTES + ADAM_STATE_BYTES) * trainable // nodes)
    else:
        if stage == 0:
            grads = (w + fp32_grad) * trainable
        elif stage == 1:
            grads = w * trainable + fp32_grad * trainable // n
        elif stage == 2:
            grads = (w + fp32_grad) * trainable // n
        else:
            grads = FP32_BYTES * trainable // n + w * largest_trainable
        gradients = Placement(gpu=grads)
        optimizer_bytes = (master + ADAM_STATE_BYTES) * trainable
        optimizer = Placement(gpu=optimizer_bytes if stage == 0 else optimizer_bytes // n)

    return EngineStates(
        role=role, spec=spec, kind=kind, stage=stage, offload=zero.offload, total_params=total,
        trainable_params=trainable, largest_layer_params=largest, weights=weights, gradients=gradients,
        optimizer=optimizer, buffers=Placement(gpu=_trained_buffers(zero, trainable, total, w)),
        load_peak_cpu=_load_peak(zero, stage, total, largest),
    )


def frozen_engine(
    role: str,
    spec: ModelSpec,
    kind: ModelKind,
    zero: ZeroSettings,
    *,
    dtype_bytes: int,
    offload: bool,
) -> EngineStates:
    """An inference-only engine (reference, reward in step 3): weights only.

    Like DeepSpeed-Chat, chatrlhf (``eval_ds_config``) runs these at ZeRO-3 when the trained models use ZeRO-3,
    else at ZeRO-0, and offloads their weights only at ZeRO-3 (DeepSpeed's ``offload_param`` needs it). Offloaded,
    the node holds the weights and one gathered layer at a time is on the device.
    """
    stage = 3 if zero.stage == 3 else 0
    offload = offload and stage == 3
    total = spec.params(kind)
    largest = spec.largest_layer_params(kind)
    w, n = dtype_bytes, zero.world_size
    if offload:
        weights = Placement(gpu=w * largest, cpu=w * total // zero.num_nodes)
    else:
        weights = Placement(gpu=w * total // n + w * largest if stage == 3 else w * total)
    prefetch = w * min(zero.prefetch_bucket_size, total) if stage == 3 else 0
    return EngineStates(
        role=role, spec=spec, kind=kind, stage=stage, offload=offload, total_params=total, trainable_params=0,
        largest_layer_params=largest, weights=weights, gradients=Placement(), optimizer=Placement(),
        buffers=Placement(gpu=prefetch), load_peak_cpu=_load_peak(zero, stage, total, largest),
    )


def _trained_buffers(zero: ZeroSettings, trainable: int, total: int, dtype_bytes: int) -> int:
    """Communication buffers on the device, in elements of the compute dtype.

    ZeRO-1/2/3 allocate a ``reduce_bucket_size`` gradient bucket up front (contiguous_gradients, on by default);
    ZeRO-3 also gathers up to ``prefetch_bucket_size`` parameters ahead and, without offload, keeps the reduced
    16-bit gradient partition (``w·T/N``) that DeepSpeed's estimator leaves out. ZeRO-0 flattens up to
    ``allreduce_bucket_size`` gradients to all-reduce them when there is more than one rank. On a CPU "device"
    only the written part of the bucket (at most the trainable parameters) is resident.
    """
    w = dtype_bytes
    if zero.stage == 0:
        return w * min(trainable, zero.allreduce_bucket_size) if zero.world_size > 1 else 0
    bucket = min(zero.reduce_bucket_size, trainable) if zero.device_is_host else zero.reduce_bucket_size
    buffers = w * bucket
    if zero.stage == 3:
        buffers += w * min(zero.prefetch_bucket_size, total)
        if not zero.offload and w < FP32_BYTES:
            buffers += w * trainable // zero.world_size
    return buffers


def _load_peak(zero: ZeroSettings, stage: int, total: int, largest: int) -> int:
    """Each rank on a node materialises the model in fp32 before DeepSpeed takes it over (DeepSpeed's estimator
    assumes this); ZeRO-3 with zero.Init (DeepSpeed-Chat's HfDeepSpeedConfig) materialises one layer at a time.
    Not counted with ``--device cpu``, where the loaded weights are the trained ones."""
    if zero.device_is_host:
        return 0
    return FP32_BYTES * (largest if stage == 3 else total) * zero.gpus_per_node
