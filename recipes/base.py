"""The Recipe interface every family implements, and the Plan a recipe returns before it runs.

``recipe = registry[method.recipe](cfg)``; ``recipe.plan()`` counts parameters, rows, steps and memory without
training (a dry-run stops there); ``recipe.run()`` trains and/or evaluates and returns flat metrics such as
``{"train/loss": 1.2, "eval/accuracy": 0.4}``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from runner.logging import MetricsLogger
from runner.outputs import RunDir


@dataclass
class Plan:
    """What a run will do, computed without training (``dry_run=true`` prints it and writes ``plan.json``)."""

    recipe: str
    method: str
    model: str
    total_params: int = 0
    """Parameters of the model (tied tensors counted once)."""
    trainable_params: int = 0
    """Parameters that receive gradients under the method."""
    train_rows: int = 0
    """Training rows after filtering (language selection, max_samples, over-length rows dropped)."""
    eval_rows: int = 0
    """Evaluation rows."""
    steps: int = 0
    """Optimizer steps."""
    global_batch_size: int = 0
    """Rows per optimizer step (micro_batch_size x grad_accum_steps x world size)."""
    memory_gb: float = 0.0
    """Estimated memory per GPU (per process on the CPU), GiB: model states (weights, gradients, optimizer states,
    sharded by the ZeRO stage) and activations (see :func:`runner.hardware.estimate_memory_per_gpu`)."""
    memory: dict[str, Any] = field(default_factory=dict)
    """The breakdown of ``memory_gb`` (``*_gb`` figures) and what it assumed (``zero_stage``, ``world_size``)."""
    notes: list[str] = field(default_factory=list)
    """Facts worth showing (dropped rows, chosen layers...)."""
    problems: list[str] = field(default_factory=list)
    """Everything that makes the plan invalid; a non-empty list stops the run with exit status 1."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Recipe-specific figures."""

    @property
    def trainable_fraction(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["trainable_fraction"] = self.trainable_fraction
        return d

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) lines of the printed table."""
        out = [("recipe / method", f"{self.recipe} / {self.method}"), ("model", self.model),
               ("total params", f"{self.total_params:,} ({human(self.total_params)})"),
               ("trainable params", f"{self.trainable_params:,} ({100 * self.trainable_fraction:.2f}%)"),
               ("train rows", f"{self.train_rows:,}"), ("eval rows", f"{self.eval_rows:,}"),
               ("steps", f"{self.steps:,}"), ("global batch", f"{self.global_batch_size}"),
               ("memory per GPU", self._memory_text())]
        if self.memory.get("cpu_offload_gb"):
            out.append(("CPU offload per GPU", f"{self.memory['cpu_offload_gb']:.2f} GiB"))
        if self.memory.get("deepspeed_estimate_gb") is not None:
            out.append(("DeepSpeed estimator", f"{self.memory['deepspeed_estimate_gb']:.2f} GiB (model states)"))
        out += [(str(k), str(v)) for k, v in self.extra.items() if not isinstance(v, (dict, list))]
        return out


    def _memory_text(self) -> str:
        parts = ", ".join(f"{k.removesuffix('_gb')} {v:.2f}" for k, v in self.memory.items()
                          if k.endswith("_gb") and k not in ("total_gb", "cpu_offload_gb", "deepspeed_estimate_gb")
                          and isinstance(v, (int, float)) and v)
        where = ""
        if "world_size" in self.memory:
            stage = self.memory.get("zero_stage", "none")
            where = f"; world size {self.memory['world_size']}" + (f", ZeRO-{stage}" if stage != "none" else "")
        return f"{self.memory_gb:.2f} GiB ({parts}{where})"


def human(n: float) -> str:
    """``6738415616`` -> ``6.74B``."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


class Recipe:
    """Base class of the recipes: ``__init__(cfg)``, ``plan() -> Plan``, ``run() -> dict[str, float]``.

    Services available to subclasses: ``self.cfg`` (the resolved config), ``self.run_dir`` (:class:`RunDir`),
    ``self.metrics`` (:class:`MetricsLogger`: ``metrics.jsonl`` + the tracker), ``self.resume_from`` (the checkpoint
    to continue from under ``resume=true``, set by the CLI before :meth:`run`; None otherwise).

    Resume: a recipe that sets ``supports_resume = True`` must continue from ``self.resume_from`` exactly (the
    Trainer-based ones pass ``self.resume_from.path`` to :meth:`runner.trainer.RunnerTrainer.train`, which restores
    weights, optimizer, scheduler, RNG states, data position and loss accumulators). The CLI refuses ``resume=true``
    for the others.
    """

    supports_resume: bool = False
    """Whether :meth:`run` continues from ``self.resume_from`` (``resume=true``)."""

    def __init__(self, cfg: Any, metrics: MetricsLogger | None = None):
        self.cfg = cfg
        self.run_dir = RunDir(cfg.run_dir)
        self.metrics = metrics or MetricsLogger(self.run_dir)
        self.resume_from: Any = None
        """A :class:`runner.checkpoint.ResumePoint` under ``resume=true`` (set by the CLI), else None."""

    def resume_point(self) -> Any:
        """The checkpoint :meth:`run` continues from under ``resume=true`` (called by the CLI before the plan).

        Default: the latest complete ``checkpoints/step-N`` (:func:`runner.checkpoint.find_resume_point`). A recipe
        that trains in stages overrides it (its stage's own checkpoint dir). Returning None means "resume without a
        checkpoint": training starts over while the recipe reuses what it finished or cached before (stage artifacts,
        extracted features); the lines of ``metrics.jsonl`` are then cleared and logged again.

        Raises:
            RunDirError: no checkpoint to resume from.
            ConfigError: the model, data or data-order config changed (unless ``resume_force=true``).
        """
        from runner.checkpoint import find_resume_point

        return find_resume_point(self.run_dir.path, self.cfg)

    def plan(self) -> Plan:
        """Count parameters, rows, steps and memory; list every problem found. Must not train."""
        raise NotImplementedError

    def run(self) -> dict[str, float]:
        """Train and/or evaluate; return final flat metrics (written to ``metrics.json`` by the caller)."""
        raise NotImplementedError
