"""Hardware: device checks, precision, CPU threads, process groups, the DeepSpeed config, and the memory estimate.

Memory (:func:`estimate_memory_per_gpu`) counts, per GPU (per process on the CPU):

* **Model states** as in the ZeRO paper's accounting (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward
  Training Trillion Parameter Models", Sec. 3.1 and 5.1-5.3, Fig. 1), with ``Psi`` the parameters, ``Psi_t`` the
  trainable ones (SLAM and LoRA freeze most of them) and ``N`` the world size. Mixed precision (bf16/fp16): 16-bit
  weights (2 bytes per parameter), 16-bit gradients (2 per trainable parameter) and ``K`` bytes per trainable
  parameter of optimizer-side state, counted as DeepSpeed's own estimators count it: ZeRO-1/2 ``K = 16`` (fp32
  master weights 4, fp32 gradient partition 4, Adam's two moments 4 + 4; the paper's ``K = 12`` leaves out the
  fp32 gradients); ZeRO-3 ``K = 14`` (master weights and moments, plus the 2 that DeepSpeed's ZeRO-3 estimator
  allots to the fp32 gradients it builds one sub-group at a time). ZeRO-1 partitions the ``K`` states over ``N``,
  ZeRO-2 also the gradients, ZeRO-3 also the weights (plus one gathered layer, ``4 x largest module``, as in
  DeepSpeed's estimator). Per GPU: ZeRO-1 ``2 Psi + 2 Psi_t + 16 Psi_t / N``; ZeRO-2 ``2 Psi + 18 Psi_t / N``;
  ZeRO-3 ``(2 Psi + 16 Psi_t) / N + 4 L``. With every parameter trainable these equal DeepSpeed's
  ``estimate_zero2_model_states_mem_needs`` (``2 Psi + 18 Psi / N``) and ``estimate_zero3_model_states_mem_needs``
  (``18 Psi / N + 4 L``), offload included (tested).
  Offloading (ZeRO-Offload, Ren et al. 2021) moves the ``K`` states (and ZeRO-2's gradients) to CPU memory;
  ``offload_param`` moves ZeRO-3's weight partition too.
  Without DeepSpeed (one process or DDP) the runner trains with PyTorch AMP: fp32 weights (4), fp32 gradients (4) and
  fp32 Adam moments (8), nothing partitioned. In fp32: weights 4, gradients 4, moments 8.
* **Activations** saved for the backward pass of a LLaMA-style decoder layer with SDPA attention, per micro-batch
  ``b`` of ``s = train.max_seq_len`` tokens (an upper bound: real rows are shorter), ``v`` bytes per value (2 in
  bf16/fp16, 4 in fp32): ``v x (8 s b h + 4 s b f)`` per layer (norm inputs and outputs, q, k, v, attention output:
  ``8 s b h``; gate, act(gate), up, their product: ``4 s b f``), the analogue for a SwiGLU FFN of Korthikanti et al.
  2022 ("Reducing Activation Recomputation in Large Transformer Models", Sec. 4.1, ``34 s b h`` for GPT with its
  ``5 a s^2 b`` attention term removed by fused attention kernels); plus the logits ``s b V`` in 16 bits and their
  fp32 copy and log-softmax for the loss (``(v + 8) s b V``). With ``train.gradient_checkpointing`` only each layer's
  input (``v s b h``) is kept, plus one layer's full set while it is recomputed.
"""

from __future__ import annotations

import os
from typing import Any

from runner.errors import HardwareError

GiB = 1024**3

ADAM_STATE_BYTES = 16
"""``K``: optimizer-side bytes per trainable parameter under DeepSpeed mixed precision (fp32 master weights, fp32
gradient partition, Adam's first and second moments), as DeepSpeed's ZeRO-1/2 estimator counts them."""
ADAM_STATE_BYTES_ZERO3 = 14
"""``K`` under ZeRO-3, as DeepSpeed's ZeRO-3 estimator counts it (``18 Psi / N`` in all with 16-bit weights and
gradients)."""


def resolve_precision(hw: Any) -> str:
    """``fp32``/``bf16``/``fp16``: ``auto`` is bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU.

    Planning for a GPU on a machine that has none (a dry-run on a laptop for a cluster), ``auto`` assumes bf16
    (Ampere and newer); both are 2 bytes per value, so the memory estimate is the same.
    """
    if hw.precision != "auto":
        return hw.precision
    if hw.device != "cuda":
        return "fp32"
    import torch

    if not torch.cuda.is_available():
        return "bf16"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def backend(hw: Any) -> str:
    """The process-group backend: ``hardware.backend`` unless ``auto``; then nccl on cuda, gloo on cpu."""
    if hw.backend != "auto":
        return hw.backend
    return "nccl" if hw.device == "cuda" else "gloo"


def setup(hw: Any, dry_run: bool = False) -> str:
    """Check the device is there and configure threads; returns the resolved precision.

    A dry-run plans for the configured hardware without needing it (e.g. for 8 GPUs, from a laptop).

    Raises:
        HardwareError: ``hardware.device=cuda`` but no GPU is visible, or fewer than ``hardware.nproc_per_node``;
            fp16/bf16 asked for on CPU.
    """
    if hw.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if hw.device == "cpu" and hw.precision in ("bf16", "fp16"):
        raise HardwareError(f"'hardware.precision' is {hw.precision} on the CPU; use fp32 (or hardware=gpu).")
    if dry_run or (hw.device == "cpu" and not hw.num_threads):
        return resolve_precision(hw)
    import torch

    if hw.device == "cuda" and not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        extra = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        raise HardwareError(f"hardware={hw.name} asks for a GPU (hardware.device=cuda) but torch sees none{extra}; "
                            f"torch {torch.__version__} {'has' if torch.version.cuda else 'has no'} CUDA support. "
                            "Run with hardware=cpu, or install a CUDA build of torch (make install TORCH=...).")
    if hw.device == "cuda" and hw.distributed != "none" and "LOCAL_RANK" not in os.environ:
        count = torch.cuda.device_count()
        if count < hw.nproc_per_node:
            raise HardwareError(f"'hardware.nproc_per_node' is {hw.nproc_per_node} but this node has {count} visible "
                                f"GPU(s); set hardware.nproc_per_node={count} or make more GPUs visible "
                                "(CUDA_VISIBLE_DEVICES).")
    if hw.num_threads:
        torch.set_num_threads(int(hw.num_threads))
    return resolve_precision(hw)


def weights_precision(cfg: Any, precision: str) -> str:
    """The dtype weights are loaded in (under ``model.dtype=auto``) for a run at ``precision``.

    * Training without DeepSpeed on bf16/fp16: fp32 master weights with autocast (PyTorch AMP, Micikevicius et al.
      2018): Adam updates smaller than a 16-bit weight's resolution are not lost.
    * Training under DeepSpeed: 16-bit weights; DeepSpeed keeps the fp32 master copy in its optimizer.
    * Evaluation only: the run's precision.
    """
    training = cfg.train.max_steps != 0
    if training and precision in ("bf16", "fp16") and cfg.hardware.distributed != "deepspeed":
        return "fp32"
    return precision


# --------------------------------------------------------------------------------------------------------------------
# DeepSpeed
# --------------------------------------------------------------------------------------------------------------------


def deepspeed_config(cfg: Any, precision: str, world_size: int | None = None) -> dict[str, Any]:
    """The DeepSpeed config dict for the HF ``Trainer`` integration (``TrainingArguments(deepspeed=...)``).

    Batch sizes come from ``train.*`` and the world size (``train_batch_size = micro_batch_size x
    grad_accum_steps x world size``); the Trainer checks them against its own arguments. Learning rate, schedule
    and clipping stay the Trainer's (no ``scheduler`` section; ``optimizer`` only with ``offload_optimizer``, where
    DeepSpeed's CPU Adam must run the step). ZeRO-3 gathers the 16-bit weights on save, so every checkpoint holds a
    loadable ``model.safetensors``.

    Args:
        cfg: the run config (``train.*``, ``hardware.*``).
        precision: the resolved precision (``fp32``, ``bf16``, ``fp16``).
        world_size: processes in the run (default: :func:`runner.config.world_size`).
    """
    from runner.config import world_size as cfg_world_size

    t, hw = cfg.train, cfg.hardware
    world = cfg_world_size(cfg) if world_size is None else world_size
    zero: dict[str, Any] = {"stage": int(hw.zero_stage)}
    if hw.zero_stage >= 1:
        zero.update(contiguous_gradients=True, overlap_comm=hw.device == "cuda", reduce_bucket_size="auto")
    if hw.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": hw.device == "cuda"}
    if hw.zero_stage == 3:
        zero.update(stage3_prefetch_bucket_size="auto", stage3_param_persistence_threshold="auto",
                    stage3_gather_16bit_weights_on_model_save=True)
        if hw.offload_param:
            zero["offload_param"] = {"device": "cpu", "pin_memory": hw.device == "cuda"}
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": int(t.micro_batch_size),
        "gradient_accumulation_steps": int(t.grad_accum_steps),
        "train_batch_size": int(t.micro_batch_size) * int(t.grad_accum_steps) * world,
        "gradient_clipping": float(t.max_grad_norm) if t.max_grad_norm > 0 else 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if hw.offload_optimizer:
        ds["optimizer"] = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                        "weight_decay": "auto"}}
    return ds


def init_process_group(hw: Any) -> None:
    """Join the process group of a launched rank (``torchrun`` set ``LOCAL_RANK``...): DeepSpeed's comm with
    ``hardware.backend`` (gloo on CPU: DeepSpeed's CPU accelerator would otherwise ask for oneCCL), or
    ``torch.distributed`` for DDP. A no-op outside a launcher or when already joined."""
    if hw.distributed == "none" or "LOCAL_RANK" not in os.environ:
        return
    import torch

    if hw.device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    if hw.distributed == "deepspeed":
        import deepspeed

        deepspeed.init_distributed(dist_backend=backend(hw), auto_mpi_discovery=False)
    elif not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend(hw))


# --------------------------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------------------------


def bytes_per_param(precision: str) -> int:
    return 4 if precision == "fp32" else 2


def estimate_memory(total_params: int, trainable_params: int, precision: str, training: bool = True) -> dict[str, float]:
    """Model-state memory of one process without sharding, in GiB (AdamW; see the module docstring).

    Args:
        total_params: parameters held by the model.
        trainable_params: parameters with gradients and optimizer states.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        training: False counts weights only (inference).

    Returns:
        ``{"weights_gb", "gradients_gb", "optimizer_gb", "total_gb"}``; under mixed precision the optimizer holds
        an fp32 master copy of the trainable weights and two fp32 moments (12 bytes per trainable parameter).
    """
    w = bytes_per_param(precision)
    weights = total_params * w
    grads = trainable_params * w if training else 0
    optim = trainable_params * (8 if precision == "fp32" else 12) if training else 0
    out = {"weights_gb": weights / GiB, "gradients_gb": grads / GiB, "optimizer_gb": optim / GiB}
    out["total_gb"] = sum(out.values())
    return {k: round(v, 3) for k, v in out.items()}


def model_states_bytes(total_params: int, trainable_params: int, *, precision: str, zero_stage: int | None,
                       world_size: int = 1, offload_optimizer: bool = False, offload_param: bool = False,
                       largest_layer_params: int = 0, training: bool = True) -> dict[str, float]:
    """Model-state bytes per GPU (and offloaded bytes per GPU's share in CPU memory) under ZeRO.

    Args:
        total_params: ``Psi``, every parameter of the model.
        trainable_params: ``Psi_t``, those with gradients and optimizer states.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        zero_stage: 0-3 under DeepSpeed; None without DeepSpeed (one process or DDP, PyTorch AMP).
        world_size: ``N``, the data-parallel processes over which ZeRO partitions.
        offload_optimizer: optimizer states (and ZeRO-2/3 gradients' fp32 side) in CPU memory.
        offload_param: ZeRO-3 weight partition in CPU memory.
        largest_layer_params: parameters of the largest module (ZeRO-3 gathers one at a time: ``4 x`` it).
        training: False counts weights only.

    Returns:
        bytes: ``{"weights", "gradients", "optimizer", "gathered_layer", "cpu_offload"}`` (see the module
        docstring for each formula).
    """
    psi, psi_t, n = float(total_params), float(trainable_params), max(int(world_size), 1)
    out = {"weights": 0.0, "gradients": 0.0, "optimizer": 0.0, "gathered_layer": 0.0, "cpu_offload": 0.0}
    mixed = precision in ("bf16", "fp16")
    if zero_stage is None or not mixed:
        # PyTorch AMP (fp32 master weights) or fp32: weights 4, grads 4, Adam 8; ZeRO partitions the same shares.
        w, g, k = 4.0, 4.0, 8.0
        stage = zero_stage or 0
    else:
        stage = zero_stage
        w, g, k = 2.0, 2.0, float(ADAM_STATE_BYTES if stage < 3 else ADAM_STATE_BYTES_ZERO3)
    if not training:
        out["weights"] = psi * (2.0 if mixed else 4.0)
        return out
    out["weights"] = w * psi / (n if stage >= 3 else 1)
    out["gradients"] = g * psi_t / (n if stage >= 2 else 1)
    out["optimizer"] = k * psi_t / (n if stage >= 1 else 1)
    if stage >= 3:
        out["gathered_layer"] = 4.0 * largest_layer_params
    if offload_optimizer and stage >= 1:
        out["cpu_offload"] += out["optimizer"]
        out["optimizer"] = 0.0
        if stage >= 2:
            out["cpu_offload"] += out["gradients"]
            out["gradients"] = 0.0
    if offload_param and stage >= 3:
        out["cpu_offload"] += out["weights"]
        out["weights"] = 0.0
    return out


def activation_bytes(arch: Any, micro_batch_size: int, seq_len: int, precision: str,
                     gradient_checkpointing: bool = False) -> float:
    """Activation bytes saved for the backward pass of one micro-batch (see the module docstring).

    Args:
        arch: the model's architecture fields (``hidden_size``, ``intermediate_size``, ``num_hidden_layers``,
            ``vocab_size``); missing fields give 0.
        micro_batch_size: ``b``, rows per forward pass.
        seq_len: ``s``, tokens per row (``train.max_seq_len``: an upper bound).
        precision: ``fp32`` (4 bytes per value) or ``bf16``/``fp16`` (2).
        gradient_checkpointing: keep only each layer's input, recompute the rest.
    """
    def get(key: str) -> int:
        try:
            return int(arch.get(key) or 0)
        except (AttributeError, TypeError, ValueError):
            return 0

    h, f, n_layers, vocab = get("hidden_size"), get("intermediate_size"), get("num_hidden_layers"), get("vocab_size")
    if not (h and n_layers):
        return 0.0
    v = float(bytes_per_param(precision))
    sb = float(seq_len) * float(micro_batch_size)
    layer = v * (8 * sb * h + 4 * sb * (f or 4 * h))
    logits = (v + 8.0) * sb * vocab
    if gradient_checkpointing:
        return n_layers * v * sb * h + layer + logits
    return n_layers * layer + logits


def estimate_memory_per_gpu(cfg: Any, total_params: int, trainable_params: int, *, largest_layer_params: int = 0,
                            training: bool = True, precision: str | None = None) -> dict[str, Any]:
    """Per-GPU memory of a plan under ``hardware.*`` (ZeRO stage, offload, world size), in GiB.

    Returns:
        ``{"weights_gb", "gradients_gb", "optimizer_gb", "gathered_layer_gb", "activations_gb", "total_gb",
        "cpu_offload_gb", "zero_stage", "world_size"}`` (``cpu_offload_gb`` is per GPU; a node holds
        ``nproc_per_node`` times it), plus ``deepspeed_estimate_gb`` (model states, from DeepSpeed's own estimator)
        where that estimator applies: ZeRO-2/3, mixed precision, every parameter trainable.
    """
    from runner.config import world_size

    hw = cfg.hardware
    precision = precision or resolve_precision(hw)
    n = world_size(cfg)
    stage = int(hw.zero_stage) if hw.distributed == "deepspeed" else None
    states = model_states_bytes(total_params, trainable_params, precision=precision, zero_stage=stage,
                                world_size=n, offload_optimizer=bool(hw.offload_optimizer),
                                offload_param=bool(hw.offload_param), largest_layer_params=largest_layer_params,
                                training=training)
    acts = activation_bytes(cfg.model.architecture, cfg.train.micro_batch_size, cfg.train.max_seq_len, precision,
                            bool(cfg.train.gradient_checkpointing)) if training else 0.0
    out: dict[str, Any] = {f"{k}_gb": round(v / GiB, 3) for k, v in states.items() if k != "cpu_offload"}
    out["activations_gb"] = round(acts / GiB, 3)
    out["total_gb"] = round((sum(v for k, v in states.items() if k != "cpu_offload") + acts) / GiB, 3)
    out["cpu_offload_gb"] = round(states["cpu_offload"] / GiB, 3)
    out["zero_stage"] = stage if stage is not None else "none"
    out["world_size"] = n
    if training and stage in (2, 3) and trainable_params == total_params and precision in ("bf16", "fp16"):
        from runner.launch import topology

        topo = topology(hw)
        ds = deepspeed_estimate_gb(total_params, largest_layer_params, stage, topo.nproc_per_node, topo.nnodes,
                                   bool(hw.offload_optimizer), bool(hw.offload_param))
        if ds is not None:
            out["deepspeed_estimate_gb"] = ds
    return out


def deepspeed_estimate_gb(total_params: int, largest_layer_params: int, zero_stage: int, nproc_per_node: int,
                          nnodes: int, offload_optimizer: bool, offload_param: bool) -> float | None:
    """DeepSpeed's own model-state estimate per GPU (GiB) for full fine-tuning with mixed precision, or None where
    its estimators do not apply (ZeRO-0 and ZeRO-1; DeepSpeed not importable).

    Calls ``deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs`` (stages 1 and 2) or
    ``deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs`` (stage 3, ``zero_init=False``: the
    runner loads the model before DeepSpeed partitions it).
    """
    if zero_stage not in (2, 3):
        return None
    import torch

    if not torch.cuda.is_available():  # what DeepSpeed would pick, without its detection warning
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        if zero_stage == 3:
            from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

            _, gpu, _ = estimate_zero3_model_states_mem_needs(total_params, largest_layer_params, nproc_per_node,
                                                              nnodes, cpu_offload=offload_optimizer,
                                                              cpu_offload_params=offload_param, zero_init=False)
        else:
            from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

            _, gpu = estimate_zero2_model_states_mem_needs(total_params, nproc_per_node, nnodes,
                                                           cpu_offload=offload_optimizer)
    except Exception:  # DeepSpeed missing or unable to import its ops on this machine
        return None
    return round(gpu / GiB, 3)


def fit_problems(cfg: Any, memory: dict[str, Any]) -> list[str]:
    """A problem when the per-GPU estimate exceeds ``hardware.gpu_memory_gb`` (empty when it fits or is unchecked),
    naming what would bring it down."""
    hw = cfg.hardware
    limit = hw.gpu_memory_gb
    total = memory.get("total_gb")
    if limit is None or total is None or hw.device != "cuda" or total <= limit:
        return []
    hints = []
    if hw.distributed != "deepspeed":
        hints.append("hardware=deepspeed with hardware.zero_stage=2 or 3")
    elif hw.zero_stage < 3:
        hints.append(f"hardware.zero_stage={hw.zero_stage + 1}")
    if hw.distributed == "deepspeed" and hw.zero_stage >= 1 and not hw.offload_optimizer:
        hints.append("hardware.offload_optimizer=true")
    if hw.distributed == "deepspeed" and hw.zero_stage == 3 and not hw.offload_param:
        hints.append("hardware.offload_param=true")
    if memory.get("activations_gb", 0) > 0.25 * total:
        if not cfg.train.gradient_checkpointing:
            hints.append("train.gradient_checkpointing=true")
        if cfg.train.micro_batch_size > 1:
            hints.append("a smaller train.micro_batch_size (with a larger train.grad_accum_steps)")
    if hw.distributed == "deepspeed" and hw.zero_stage >= 1:  # ZeRO partitions over the GPUs; DDP replicates
        hints.append("more GPUs (hardware.nproc_per_node / hardware.nnodes)")
    return [f"the estimated memory per GPU is {total:.1f} GiB (model states {total - memory.get('activations_gb', 0):.1f}"
            f", activations {memory.get('activations_gb', 0):.1f} at train.micro_batch_size={cfg.train.micro_batch_size}"
            f" x train.max_seq_len={cfg.train.max_seq_len}) but hardware.gpu_memory_gb is {limit:g}; try "
            f"{', '.join(hints) or 'a larger GPU'} (or hardware.gpu_memory_gb=null to skip this check)."]
