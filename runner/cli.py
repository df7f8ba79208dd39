"""The ``run`` command: compose -> validate -> plan (dry-run stops here) -> run -> run dir.

``run <overrides>`` composes ``conf/config.yaml`` with the chosen groups (``model``, ``method``, ``data``,
``hardware``, ``logger``, ``experiment``) and overrides, validates it, asks the method's recipe for a plan, then runs
it. ``run -m ...`` is a Hydra multirun sweep. Errors caused by the input print as one paragraph on stderr, without a
traceback, and exit with status 1.

No torch or transformers import happens at module import time: ``run --help``, ``run --cfg job`` and every config
error answer fast.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from runner.config import CONF_DIR, check_group_choices, compose, register_configs, validate
from runner.errors import RunnerError
from runner.launch import LAUNCHED_ENV
from runner.outputs import RunDir, is_main_process

log = logging.getLogger("runner")

_HYDRA_ONLY_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
                     "--version", "--resolve", "-p", "--package")
_MULTIRUN_FLAGS = ("-m", "--multirun")
_VALUE_FLAGS = ("--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd", "--experimental-rerun")


def _fail(ex: RunnerError) -> None:
    """Print the error paragraph (rank 0 only: every rank of a launched run meets the same error)."""
    if not is_main_process():
        return
    from runner.outputs import redact

    sys.stderr.write(redact(ex.paragraph()) + "\n")
    sys.stderr.flush()


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _first_of_sweeps(overrides: list[str]) -> list[str]:
    """Each sweep override (``a=1,2``, ``choice(...)``, ``range(...)``) replaced by its first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for ov in OverridesParser.create().parse_overrides(overrides):
        if ov.is_sweep_override():
            first = next(iter(ov.sweep_string_iterator()))
            out.append(f"{ov.get_key_element()}={first}")
        else:
            out.append(ov.input_line)
    return out


def preflight(argv: list[str]) -> list[str]:
    """Compose the config before Hydra starts, so a config error is one paragraph and no run dir is touched.

    For a single run, also fix the run dir once (``hydra.run.dir=<absolute path>``, which every rank of a later
    relaunch reuses) and refuse a dir that holds another run's results. Returns the argv to hand to Hydra.

    Raises:
        RunnerError: the config does not compose, or the run dir cannot be used.
    """
    multirun = any(a in _MULTIRUN_FLAGS for a in argv)
    overrides, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in _VALUE_FLAGS:
            skip = True
        elif not a.startswith("-"):
            overrides.append(a)
    try:
        probe = _first_of_sweeps(overrides) if multirun else overrides
    except Exception as ex:  # the override grammar's own parse error
        from runner.config import compose_error

        raise compose_error(ex, overrides) from None
    cfg = compose(probe, return_hydra_config=True)
    check_group_choices(cfg)
    if multirun:
        return argv
    validate(cfg)
    run_dir = Path(str(cfg.hydra.run.dir)).expanduser().absolute()
    resume = bool(cfg.resume)
    ours = os.environ.get(LAUNCHED_ENV) == "1"
    external = not ours and int(os.environ.get("WORLD_SIZE", "1")) > 1  # torchrun or deepspeed typed by the user
    if external and not any(a.startswith("hydra.run.dir=") for a in argv):
        from runner.errors import ConfigError

        raise ConfigError("under an external launcher (WORLD_SIZE is set) every rank needs the same run dir: add "
                          "hydra.run.dir=<dir>, or let the runner launch the ranks itself (run without torchrun).")
    if not ours and int(os.environ.get("RANK", "0")) == 0:
        # launched ranks reuse the run dir their launcher checked (rank 0 may be writing already)
        _check_nodes_share_run_dir(cfg, argv)
        RunDir(run_dir).check_fresh(resume)
        if resume:
            from runner.checkpoint import check_resume_config

            check_resume_config(run_dir, cfg)
    return [a for a in argv if not a.startswith("hydra.run.dir=")] + [f"hydra.run.dir={_quote(str(run_dir))}"]


def _check_nodes_share_run_dir(cfg: DictConfig, argv: list[str]) -> None:
    """Several nodes must agree on the run dir: a timestamped default would differ from node to node."""
    hw = cfg.hardware
    if hw.distributed == "none" or cfg.dry_run or os.environ.get("SLURM_JOB_ID"):
        return
    nodes = hw.nnodes
    if hw.hostfile:
        from runner.launch import parse_hostfile

        nodes = len(parse_hostfile(hw.hostfile))
    if nodes > 1 and not any(a.startswith("hydra.run.dir=") for a in argv):
        from runner.errors import ConfigError

        raise ConfigError(f"a run on {nodes} nodes needs the same run dir on every node; add "
                          "hydra.run.dir=<a dir on a shared filesystem> to the command on each node.")


def rank_argv(argv: list[str], env: dict[str, str] | os._Environ | None = None) -> list[str]:
    """``argv`` of a launched rank: a launcher-injected ``--local_rank`` removed (its value goes to ``LOCAL_RANK``);
    ranks other than 0 write no ``.hydra/`` dir and no log file (only rank 0 writes files and logs)."""
    from runner.launch import strip_local_rank

    env = os.environ if env is None else env
    argv = strip_local_rank(argv, env)
    if int(env.get("RANK", "0")) != 0:
        argv = [*argv, "hydra.output_subdir=null", "hydra/job_logging=disabled"]
    return argv


HELP = """usage: run [group=option ...] [key=value ...] [-m] [--cfg job] [--hydra-help]

Compose a config from the groups below, validate it, plan it, and run it.
  run method=slam model=llama2-7b dry_run=true     plan only: parameters, rows, steps, memory; writes plan.json
  run method=slam train.max_steps=50               train and evaluate tiny-llama on the built-in data (CPU)
  run method=slam data=mgsm data.path=DIR          real data from a local copy
  run -m method=sft,slam seed=1,2                  a Hydra multirun sweep (summary.csv/.md/.png; run-report DIR)
  run hardware=deepspeed hardware.nproc_per_node=8 hardware.zero_stage=3
                                                   every rank from one command (relaunched under torchrun)
  run experiment=NAME                              a paper's full setting (conf/experiment/)
  run ... hydra.run.dir=DIR resume=true            continue a killed run from its latest checkpoint

Config groups (group=option):
{groups}
Sections (key=value): hardware.* (nproc_per_node, nnodes, node_rank, master_addr, zero_stage, offload_optimizer,
  offload_param, hostfile, gpu_memory_gb, ...), train.* (lr, epochs, max_steps, micro_batch_size, grad_accum_steps, max_seq_len,
  warmup_ratio, save_steps, eval_steps, ...), eval.* (max_samples, batch_size, max_new_tokens, num_samples,
  temperature, top_p, pass_at_k, repeats), seed, dry_run, resume, resume_force, run_dir.
  `run --cfg job` prints the composed config; `run --hydra-help` shows Hydra's own flags.
Results go to the run dir (hydra.run.dir=DIR): config.yaml, plan.json, metrics.json, metrics.jsonl,
predictions.jsonl, checkpoints/step-N/, provenance.json.
"""


def print_help() -> None:
    """The usage text, with each group's options read from ``conf/`` (no composition: instant)."""
    from runner.config import GROUPS, group_options

    lines = "".join(f"  {g:<10} {', '.join(group_options(g)) or '(none yet)'}\n" for g in GROUPS)
    sys.stdout.write(HELP.format(groups=lines))


def main() -> None:
    """Console-script entry point (``run``)."""
    argv = rank_argv(sys.argv[1:])
    if any(a in ("--help", "-h") for a in argv):
        print_help()
        return
    register_configs()
    if not any(a.split("=")[0] in _HYDRA_ONLY_FLAGS for a in argv):
        try:
            argv = preflight(argv)
        except RunnerError as ex:
            _fail(ex)
            sys.exit(1)
    sys.argv = [sys.argv[0], *argv]
    _hydra_entry()


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _hydra_entry(cfg: DictConfig) -> Any:
    return execute(cfg)


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def execute(cfg: DictConfig) -> dict[str, float] | None:
    """One job: validate, plan, (dry-run stop), run, write results. Used by the Hydra entry point and by tests.

    In a multirun, a failed job is recorded in its ``status.json`` and the sweep goes on; in a single run, a user
    error exits with status 1 after printing one paragraph.
    """
    from runner import registry
    from runner.logging import MetricsLogger, make_tracker, quiet_libraries

    multirun = _is_multirun()
    run_dir = RunDir(cfg.run_dir)
    tracker = None
    failed = True
    t0 = time.time()
    try:
        protect_secrets(run_dir)
        validate(cfg)
        if multirun:
            run_dir.check_fresh(cfg.resume)
        from runner import hardware, launch

        if launch.needs_launch(cfg):  # this process only starts the ranks: no transformers import here
            hardware.setup(cfg.hardware)
            return _run_launched(cfg, run_dir, multirun, t0)
        launch.check_world(cfg)
        quiet_libraries()
        precision = hardware.setup(cfg.hardware, dry_run=bool(cfg.dry_run))
        hardware.init_process_group(cfg.hardware)
        recipe = registry.get_recipe(cfg.method.recipe)(cfg)
        resume_point = _resume_point(cfg, recipe, run_dir)
        plan = recipe.plan()
        plan.extra.setdefault("precision", precision)
        if cfg.hardware.distributed == "deepspeed":  # what the ranks will hand to DeepSpeed (plan.json only)
            plan.extra["deepspeed_config"] = hardware.deepspeed_config(cfg, precision)
        plan.problems.extend(hardware.fit_problems(cfg, plan.memory))
        _print_plan(plan, run_dir)
        run_dir.write_json("plan.json", plan.to_dict())
        if plan.problems:
            from runner.errors import PlanError

            raise PlanError(f"the plan has {len(plan.problems)} problem(s) and nothing was run:", plan.problems)
        if cfg.dry_run:
            failed = False
            _write_status(run_dir, "dry_run", t0)
            return None
        from runner.config import to_container

        time_offset = 0.0
        if cfg.resume:
            from runner.checkpoint import ResumePoint, prepare_resume

            # without a checkpoint the recipe trains again from the start: every logged step is logged again
            time_offset = prepare_resume(run_dir, resume_point or ResumePoint(0, None))
            recipe.resume_from = resume_point
            _record_resume(run_dir, resume_point, precision)
        else:
            run_dir.write_provenance(extra={"precision": precision})
        run_dir.write_config(cfg)
        _write_status(run_dir, "running", t0)
        tracker = make_tracker(cfg, run_dir, to_container(cfg))
        recipe.metrics = MetricsLogger(run_dir, tracker, time_offset=time_offset)
        metrics = recipe.run()
        metrics = {**metrics, "time/wall_s": round(time.time() - t0, 2)}
        run_dir.write_metrics(metrics)
        tracker.summary(metrics)
        _print_summary(metrics, plan, run_dir)
        failed = False
        _write_status(run_dir, "completed", t0)
        return metrics
    except RunnerError as ex:
        _write_status(run_dir, "failed", t0, ex.paragraph())
        _fail(ex)
        if multirun:
            return None
        sys.exit(1)
    except Exception as ex:
        if not multirun:
            raise
        _write_status(run_dir, "failed", t0, "".join(traceback.format_exception(ex))[-4000:])
        log.error("job failed: %s", ex)
        return None
    finally:
        if tracker is not None:
            tracker.finish(failed)


def _task_overrides() -> list[str]:
    """This job's command-line overrides (Hydra's ``overrides.task``; the process argv outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return [a for a in sys.argv[1:] if not a.startswith("-")]


def _run_launched(cfg: DictConfig, run_dir: RunDir, multirun: bool, t0: float) -> dict[str, float] | None:
    """Run the job on every rank under torchrun (:mod:`runner.launch`); rank 0 writes the run dir. Returns its
    metrics; a failed run exits with the ranks' status (single run) or is recorded as failed (multirun)."""
    from runner import launch

    if launch.topology(cfg.hardware).node_rank != 0:  # global rank 0, on node 0, records the job
        run_dir = RunDir(run_dir.path, main=False)
    code = launch.relaunch(cfg, _task_overrides(), run_dir.path)
    record = run_dir.read_json("status.json") if (run_dir / "status.json").exists() else {}
    status = record.get("status")
    if status in ("completed", "failed"):  # the job's wall time includes starting the ranks
        _write_status(run_dir, status, t0, record.get("error"))
    if code == 0 and status == "completed":
        return run_dir.read_json("metrics.json") if (run_dir / "metrics.json").exists() else {}
    if code == 0:
        return None
    if status != "failed":  # the ranks died before rank 0 could record it
        _write_status(run_dir, "failed", t0, f"the launched ranks exited with status {code}")
    if multirun:
        log.error("job failed: the launched ranks exited with status %s", code)
        return None
    sys.exit(code)


def protect_secrets(run_dir: RunDir) -> None:
    """Keep credential values (``secret_values``) out of every file and log of the job.

    Redacts the ``.hydra/*.yaml`` files Hydra wrote before the job started (they hold the command line), and filters
    every log record of the root logger's handlers (console and ``run.log``). Logging errors (e.g. a full disk under
    ``run.log``) are not printed as tracebacks.
    """
    import logging as _logging

    from runner.outputs import SecretsFilter

    _logging.raiseExceptions = False
    root = _logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, SecretsFilter) for f in handler.filters):
            handler.addFilter(SecretsFilter())
    run_dir.redact_hydra_files()


def _resume_point(cfg: DictConfig, recipe: Any, run_dir: RunDir) -> Any:
    """The checkpoint to continue from under ``resume=true`` (None otherwise).

    Raises:
        ConfigError: the recipe cannot resume, or the config changed (see :func:`runner.checkpoint.check_resume_config`).
        RunDirError: no checkpoint to resume from (:meth:`recipes.base.Recipe.resume_point`).
    """
    if not cfg.resume:
        return None
    from runner.errors import ConfigError

    if not getattr(recipe, "supports_resume", False):
        raise ConfigError(f"resume=true, but recipe '{cfg.method.recipe}' (method {cfg.method.name}) cannot resume "
                          "from a checkpoint; run it again in a new dir (without resume=true).")
    from runner.checkpoint import check_resume_config

    for change in check_resume_config(run_dir.path, cfg):
        log.warning("resume_force=true: resuming although %s", change)
    point = recipe.resume_point()
    if point is not None:
        log.info("resuming from %s (step %d)", point.path, point.step)
    return point


def _record_resume(run_dir: RunDir, point: Any, precision: str) -> None:
    """Keep the first run's provenance and append this resume (command line, git sha, checkpoint) to it."""
    from runner.outputs import provenance

    data = run_dir.read_json("provenance.json") if (run_dir / "provenance.json").exists() else {
        **provenance(), "precision": precision}
    now = provenance()
    data.setdefault("resumes", []).append({"from_checkpoint": str(point.path) if point else None,
                                           "step": point.step if point else None,
                                           "argv": now["argv"], "git_sha": now["git_sha"],
                                           "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                           "forced_changes": list(point.changes) if point else []})
    run_dir.write_json("provenance.json", data)


def _write_status(run_dir: RunDir, status: str, t0: float, error: str | None = None) -> None:
    try:
        if run_dir.path.exists() or status != "failed":
            run_dir.write_json("status.json", {"status": status, "wall_s": round(time.time() - t0, 2),
                                               "started": round(t0, 3), "error": error})
    except RunnerError:
        pass


def _console():
    from rich.console import Console

    return Console(soft_wrap=False, width=max(100, int(os.environ.get("COLUMNS", "100"))))


def _print_plan(plan: Any, run_dir: RunDir) -> None:
    if not is_main_process():
        return
    from rich.table import Table

    table = Table(title=f"Plan ({run_dir.path})", show_header=False)
    for label, value in plan.rows():
        table.add_row(label, value)
    for note in plan.notes:
        table.add_row("note", note)
    for problem in plan.problems:
        table.add_row("[red]problem[/red]", problem)
    _console().print(table)


def _print_summary(metrics: dict[str, Any], plan: Any, run_dir: RunDir) -> None:
    if not is_main_process():
        return
    from rich.table import Table

    table = Table(title="Summary", show_header=False)
    table.add_row("trainable", f"{plan.trainable_params:,} of {plan.total_params:,} "
                               f"({100 * plan.trainable_fraction:.2f}%)")
    for key in sorted(metrics):
        value = metrics[key]
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    table.add_row("run dir", str(run_dir.path))
    _console().print(table)


if __name__ == "__main__":
    main()
