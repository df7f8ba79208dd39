"""The bad-input matrix: what a user mistypes or points at, run through ``run`` as a subprocess.

Every case must exit with status 1, print one paragraph on stderr naming the key, file or row at fault and what would
be valid, print no traceback, and leave everything already in the run dir as it was (each run dir starts with a
``notes.txt`` of the user's, or with an earlier run's results). Cases are ordered cheap first: most fail in the
CLI's pre-flight (compose + validate, ~0.3 s, no torch); the data and model cases that need a tokenizer fail in the
plan (torch imported, nothing trained); one fills the disk during a save.

Inputs that must be accepted (a tokenizer without a pad token, rows longer than ``train.max_seq_len`` next to rows
that fit, a forced resume) are in :func:`test_accepted_inputs_say_what_was_done`.

The run-dir cases that need a read-only or a full filesystem mount a small tmpfs (a real ``EROFS``/``ENOSPC`` from
the kernel, no fault injection); without root, the read-only case uses ``chmod`` instead and the full-disk ones
skip.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runner.registry import RECIPES
from tests.conftest import SHARED_DATA, run_cli

VALID_RECIPES = f"valid recipes: {', '.join(sorted(RECIPES))}."

# ---------------------------------------------------------------------------------------------------------------------
# Fixtures written by the cases: extra config dirs (hydra.searchpath), broken data files, broken model dirs
# ---------------------------------------------------------------------------------------------------------------------


def _conf_dir(tmp: Path, group: str, name: str, text: str) -> str:
    """An extra config dir holding ``<group>/<name>.yaml``; returns the ``hydra.searchpath`` override for it."""
    (tmp / "conf" / group).mkdir(parents=True, exist_ok=True)
    (tmp / "conf" / group / f"{name}.yaml").write_text(text)
    return f"hydra.searchpath=[file://{tmp / 'conf'}]"


def _gsm8k_rows(n: int = 3) -> list[dict]:
    """The first rows of the real GSM8K test split (or look-alikes when the shared data is absent)."""
    path = SHARED_DATA / "gsm8k" / "test.jsonl"
    if path.exists():
        with open(path, encoding="utf-8") as f:
            return [json.loads(next(f)) for _ in range(n)]
    return [{"question": f"Tom has {i} apples and buys 2 more. How many?", "answer": f"{i}+2={i + 2}\n#### {i + 2}"}
            for i in range(n)]


def _gsm8k_dir(tmp: Path, train_text: str | bytes | None = None) -> Path:
    """A gsm8k-format dir: a valid ``test.jsonl`` and the given ``train.jsonl`` text (valid rows when None)."""
    d = tmp / "gsm8k"
    d.mkdir(parents=True, exist_ok=True)
    rows = _gsm8k_rows()
    (d / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if train_text is None:
        train_text = "".join(json.dumps(r) + "\n" for r in rows)
    if isinstance(train_text, bytes):
        (d / "train.jsonl").write_bytes(train_text)
    else:
        (d / "train.jsonl").write_text(train_text, encoding="utf-8")
    return d


def _jsonl(rows: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _data(**fmt):
    """Setup for the gsm8k-format data cases: ``{d}`` is the data dir."""
    def setup(tmp: Path) -> dict:
        rows = _gsm8k_rows()
        texts = {
            "empty": "",
            "missing_field": _jsonl([rows[0], {"question": rows[1]["question"]}]),
            "wrong_type": _jsonl([{"question": 12345, "answer": rows[0]["answer"]}, rows[1]]),
            "bad_utf8": _jsonl(rows[:1]).encode() + b'{"question": "caf\xe9 au lait", "answer": "#### 1"}\n',
            "bad_json": _jsonl(rows[:1]) + '{"question": "unclosed", "answer": \n',
            "no_final_answer": _jsonl([{"question": rows[0]["question"], "answer": "She makes 18 dollars."}]),
            "valid": None,
        }
        return {"d": _gsm8k_dir(tmp, texts[fmt["train"]])}
    return setup


def _mgsm_bad_row(tmp: Path) -> dict:
    d = tmp / "mgsm"
    d.mkdir()
    lines = (SHARED_DATA / "mgsm" / "mgsm_en.tsv").read_text(encoding="utf-8").splitlines()[:3] if (
        SHARED_DATA / "mgsm").exists() else ["Tom has 2 apples. How many?\t2"] * 3
    lines[1] = lines[1].split("\t")[0]  # the answer column is gone
    (d / "mgsm_en.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"d": d}


def _model_dir(kind: str):
    """Setup for broken local model dirs: ``{d}`` is the dir."""
    def setup(tmp: Path) -> dict:
        d = tmp / "model"
        d.mkdir()
        config = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "vocab_size": 512}
        if kind == "no_weights":
            (d / "config.json").write_text(json.dumps(config))
        elif kind == "pickle_weights":
            (d / "config.json").write_text(json.dumps(config))
            (d / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")  # a pickle, never opened
        elif kind == "bad_config":
            (d / "config.json").write_text('{"model_type": "llama", "hidden_size": 32,')
            (d / "model.safetensors").write_bytes(b"")
        elif kind == "remote_code":
            marker = tmp / "REMOTE_CODE_RAN"
            (d / "config.json").write_text(json.dumps({**config, "auto_map": {
                "AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilModel"}}))
            (d / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
            (d / "model.safetensors").write_bytes(b"")
        elif kind == "file":
            d.rmdir()
            d.write_text("not a model")
        return {"d": d}
    return setup


def _results(*names: str):
    """Setup: the run dir already holds an earlier run's results."""
    def setup(tmp: Path) -> dict:
        run = tmp / "run"
        run.mkdir()
        for name in names:
            if name == "checkpoints":
                (run / "checkpoints" / "step-5").mkdir(parents=True)
                (run / "checkpoints" / "step-5" / "model.safetensors").write_bytes(b"weights")
            else:
                (run / name).write_text(json.dumps({"train/loss": 1.25}) if name.endswith("json") else "seed: 0\n")
        return {}
    return setup


def _resumable(with_checkpoint: bool = True, half: bool = False):
    """Setup: a run dir as a killed run leaves it: its config.yaml (the defaults of SMALL), and a checkpoint, only a
    half-written save, or nothing."""
    def setup(tmp: Path) -> dict:
        from runner.config import compose
        from runner.outputs import RunDir

        run = tmp / "run"
        cfg = compose([*_SMALL, f"run_dir={run}"])
        RunDir(run, main=True).write_config(cfg)
        (run / "metrics.jsonl").write_text('{"step": 1, "time_s": 0.5, "train/loss": 6.2}\n')
        root = run / "checkpoints"
        root.mkdir()
        if with_checkpoint:
            (root / "step-2").mkdir()
            (root / "step-2" / "model.safetensors").write_bytes(b"weights")
        if half:
            (root / ".tmp-step-4-abcd").mkdir()
            (root / ".tmp-step-4-abcd" / "model.safetensors").write_bytes(b"half")
        return {}
    return setup


def _run_dir_is_a_file(tmp: Path) -> dict:
    (tmp / "run").write_text("my notes, not a dir")
    return {}


_SMALL = ["model.architecture.hidden_size=32", "model.architecture.intermediate_size=64",
          "model.architecture.num_hidden_layers=2", "model.architecture.vocab_size=512", "data.languages=[en,de]",
          "data.train_size=6", "train.micro_batch_size=2", "train.max_seq_len=128", "eval.enabled=false"]
"""A 53K-parameter model on 12 rows (the same as tests/recipes/test_resume.py)."""


# ---------------------------------------------------------------------------------------------------------------------
# Mounts: a read-only and a full filesystem
# ---------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(path: Path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield False
        return
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode
    try:
        yield ok == 0
    finally:
        if ok == 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


# ---------------------------------------------------------------------------------------------------------------------
# The matrix
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    kind: str
    """config, data, model or rundir."""
    args: list[str]
    """The command line after ``run`` (``{d}`` is the dir the setup made)."""
    needles: list[str]
    """Text the message must hold: the key, file or row, and what would be valid."""
    setup: Callable[[Path], dict] | None = None
    stage: str = "preflight"
    """``preflight`` (refused before Hydra creates anything: the run dir is not touched at all), ``plan`` (refused by
    the plan, before any training: new files such as plan.json may appear, nothing old changes) or ``run``."""
    extra: dict = field(default_factory=dict)


SEARCH = "{searchpath}"

CASES = [
    # ---- config: wrong types ---------------------------------------------------------------------------------------
    Case("float-typed", "config", ["train.lr=abc"], ["'train.lr'", "'abc'", "Float", "train.lr=2e-5"]),
    Case("int-typed", "config", ["train.max_steps=1.5"], ["'train.max_steps'", "Integer", "train.max_steps=4"]),
    Case("bool-typed", "config", ["dry_run=maybe"], ["'dry_run'", "Boolean", "dry_run=true"]),
    Case("list-typed", "config", ["eval.pass_at_k=abc"], ["'eval.pass_at_k'", "must be a list", "[1,4]"]),
    Case("mapping-typed", "config", ["model.architecture=abc"], ["'model.architecture'", "mapping"]),
    Case("section-assigned", "config", ["train=fast"], ["'train' is a section", "train.lr"]),
    Case("method-key-typed", "config", ["method=lora", "method.lora_r=eight"], ["'method.lora_r'", "Integer"]),
    # ---- config: unknown keys and options ------------------------------------------------------------------------
    Case("unknown-train-key", "config", ["train.lrr=1e-4"], ["'train.lrr'", "Did you mean 'train.lr'"]),
    Case("unknown-method-key", "config", ["method=lora", "method.lora_rank=4"],
         ["'method.lora_rank'", "Did you mean 'method.lora_r'", "target_modules"]),
    Case("unknown-model-key", "config", ["model.hidden_size=64"],
         ["'model.hidden_size'", "model.architecture.hidden_size"]),
    Case("unknown-top-key", "config", ["foo=1"], ["'foo'", "Valid keys under '<root>'", "train"]),
    Case("unknown-top-key-appended", "config", ["+foo=1"], ["'foo'", "Valid top-level keys", "seed"]),
    Case("unknown-model", "config", ["model=llama-7b"], ["'model=llama-7b'", "llama2-7b", "tiny-llama"]),
    Case("unknown-method", "config", ["method=qlora"], ["'method=qlora'", "lora", "slam"]),
    Case("unknown-data", "config", ["data=gsm8"], ["'data=gsm8'", "gsm8k", "mgsm"]),
    Case("unknown-hardware", "config", ["hardware=tpu"], ["'hardware=tpu'", "cpu", "gpu"]),
    Case("unknown-experiment", "config", ["experiment=slam-7b"], ["'experiment=slam-7b'", "slam-metamath-7b"]),
    Case("unknown-choice", "config", ["train.lr_scheduler=cosin"], ["'train.lr_scheduler'", "cosine, linear"]),
    # ---- config: experiment files ----------------------------------------------------------------------------------
    Case("experiment-malformed-yaml", "config", [SEARCH, "experiment=mine"],
         ["mine.yaml' line 4", "not valid YAML", "brackets"],
         extra={"yaml": "# @package _global_\ntrain:\n  lr: 3.0e-3\n  max_steps: [10, 20\n"}),
    Case("experiment-unknown-key", "config", [SEARCH, "experiment=mine"],
         ["'train.max_step'", "experiment/mine.yaml", "Did you mean 'train.max_steps'"],
         extra={"yaml": "# @package _global_\ntrain:\n  max_step: 10\n"}),
    Case("experiment-wrong-type", "config", [SEARCH, "experiment=mine"],
         ["'train.epochs'", "experiment/mine.yaml", "'three'", "Float"],
         extra={"yaml": "# @package _global_\ntrain:\n  epochs: three\n"}),
    # ---- config: missing required values -------------------------------------------------------------------------
    Case("missing-value", "config", ["model.name=???"], ["model.name", "without a value", "model.name=<value>"]),
    Case("missing-model-source", "config", ["model=llama2-7b", "model.hub_id=null"],
         ["'model.path'", "'model.hub_id'", "llama2-7b"]),
    Case("missing-in-model-file", "config", [SEARCH, "model=mine"], ["model.name", "without a value"],
         extra={"group": "model", "yaml": "defaults:\n  - /schema/model/base@_here_\n  - _self_\nbuild: tiny\n"
                "architecture:\n  model_type: llama\n"}),
    # ---- config: impossible batch and evaluation arithmetic --------------------------------------------------------
    Case("zero-micro-batch", "config", ["train.micro_batch_size=0"], ["'train.micro_batch_size' is 0", "at least 1"]),
    Case("zero-grad-accum", "config", ["train.grad_accum_steps=0"], ["'train.grad_accum_steps' is 0", "at least 1"]),
    Case("global-batch-mismatch", "config", ["train.micro_batch_size=2", "train.global_batch_size=3"],
         ["'train.global_batch_size' is 3", "train.micro_batch_size=2", "= 2"]),
    Case("processes-without-launcher", "config", ["hardware.nproc_per_node=2"],
         ["'hardware.nproc_per_node'=2", "hardware.distributed=ddp"]),
    Case("pass-at-k-above-samples", "config", ["eval.pass_at_k=[4]"], ["'eval.pass_at_k'", "eval.num_samples=1"]),
    Case("samples-with-greedy", "config", ["eval.num_samples=4"], ["'eval.num_samples' is 4", "eval.temperature"]),
    Case("several-problems", "config", ["train.micro_batch_size=0", "train.lr=-1"],
         ["2 problem(s)", "(1)", "(2)", "'train.lr' is -1.0"]),
    Case("override-syntax", "config", ["train.lr=="], ["Could not parse", "key=value"]),
    # ---- config: method against recipe and model; recipes only through the registry ------------------------------
    Case("method-in-wrong-recipe", "config", ["method=slam", "method.recipe=rl"],
         ["'method.recipe' is 'rl'", "set method.recipe=sft"]),
    Case("recipe-as-import-path", "config", ["method.recipe=os:system"], ["'os:system'", VALID_RECIPES]),
    Case("recipe-as-class-path", "config", ["method.recipe=recipes.sft.recipe:SFTRecipe"],
         ["'recipes.sft.recipe:SFTRecipe'", VALID_RECIPES]),
    Case("method-unfit-for-model", "config", ["method=slam", "model.architecture.model_type=gpt2"],
         ["'gpt2' model", "SLAM needs", "llama"]),
    Case("method-layers-outside-model", "config", ["method=slam", "method.layers=[0,99]"],
         ["'method.layers' [0, 99]", "outside [0, 7]"]),
    Case("method-modules-not-ffn", "config", ["method=slam", "method.modules=[q_proj]"],
         ["'method.modules'", "up_proj"]),
    # ---- model (file checks in pre-flight) ---------------------------------------------------------------------
    Case("model-path-missing", "model", ["model=llama2-7b", "model.path={tmp}/nowhere"],
         ["'model.path'", "nowhere", "does not exist", "save_pretrained"]),
    Case("model-path-is-a-file", "model", ["model=llama2-7b", "model.path={d}"], ["a file", "config.json"],
         setup=_model_dir("file")),
    Case("model-dir-without-weights", "model", ["model=llama2-7b", "model.path={d}"],
         ["no *.safetensors weights", "safetensors files only"], setup=_model_dir("no_weights")),
    Case("model-dir-with-pickled-weights", "model", ["model=llama2-7b", "model.path={d}"],
         ["pytorch_model.bin", "convert them to safetensors"], setup=_model_dir("pickle_weights")),
    Case("model-config-not-json", "model", ["model=llama2-7b", "model.path={d}"],
         ["config.json", "not valid JSON"], setup=_model_dir("bad_config")),
    Case("model-ships-remote-code", "model", ["model=llama2-7b", "model.path={d}"],
         ["ships its own Python code", "auto_map", "model.trust_remote_code=true"], setup=_model_dir("remote_code"),
         extra={"never": "REMOTE_CODE_RAN"}),
    # ---- data (file checks in pre-flight) ----------------------------------------------------------------------
    Case("data-new-field-without-plus", "data", ["data=gsm8k", "data.fields.question=problem"],
         ["'data.fields.question' is a new entry", "+data.fields.question=<value>"]),
    Case("data-path-missing", "data", ["data=gsm8k", "data.path={tmp}/nowhere"],
         ["'data.path'", "nowhere", "does not exist", "data.path=null"]),
    # ---- run dir ---------------------------------------------------------------------------------------------------
    Case("rundir-has-metrics", "rundir", ["train.max_steps=1"], ["already holds", "metrics.json", "resume=true"],
         setup=_results("metrics.json")),
    Case("rundir-has-checkpoints", "rundir", ["train.max_steps=1"], ["already holds", "checkpoints"],
         setup=_results("checkpoints")),
    Case("rundir-has-config", "rundir", [], ["already holds", "config.yaml", "hydra.run.dir"],
         setup=_results("config.yaml", "provenance.json")),
    Case("rundir-is-a-file", "rundir", [], ["is a file, not a directory", "hydra.run.dir"],
         setup=_run_dir_is_a_file),
    Case("rundir-read-only", "rundir", [], ["not writable", "Read-only file system", "hydra.run.dir"],
         extra={"mount": "size=1m,ro"}),
    Case("rundir-device-full", "rundir", [], ["is full (No space left on device)", "free space", "hydra.run.dir"],
         extra={"mount": "size=1m", "fill": True}),
    Case("rundir-device-nearly-full", "rundir", [], ["MiB free", "less than the 1 MiB", "hydra.run.dir"],
         extra={"mount": "size=1m"}),
    Case("resume-into-a-new-dir", "rundir", [*_SMALL, "resume=true"],
         ["resume=true", "holds no earlier run", "hydra.run.dir"]),
    Case("resume-changed-model", "rundir", [*_SMALL, "model.architecture.hidden_size=64", "resume=true"],
         ["model.architecture.hidden_size: 32 -> 64", "resume_force=true"], setup=_resumable()),
    Case("resume-changed-data", "rundir", [*_SMALL, "data.train_size=8", "resume=true"],
         ["data.train_size: 6 -> 8", "resume_force=true"], setup=_resumable()),
    Case("resume-changed-batch", "rundir", [*_SMALL, "train.micro_batch_size=4", "resume=true"],
         ["train.micro_batch_size: 2 -> 4", "start a new run"], setup=_resumable()),
    # ---- the plan (torch imported, nothing trained) -------------------------------------------------------------
    Case("data-empty-file", "data", ["data=gsm8k", "data.path={d}"], ["train.jsonl' is empty", "at least one row"],
         setup=_data(train="empty"), stage="plan"),
    Case("data-row-missing-field", "data", ["data=gsm8k", "data.path={d}"],
         ["train.jsonl' row 2", "no field 'answer'", "fields present: question", "data.fields"],
         setup=_data(train="missing_field"), stage="plan"),
    Case("data-wrong-field-type", "data", ["data=gsm8k", "data.path={d}"],
         ["train.jsonl' row 1", "field 'question' is an int", "must be a str"],
         setup=_data(train="wrong_type"), stage="plan"),
    Case("data-invalid-utf8", "data", ["data=gsm8k", "data.path={d}"],
         ["train.jsonl' is not valid UTF-8", "line 2", "re-encode it as UTF-8"],
         setup=_data(train="bad_utf8"), stage="plan"),
    Case("data-invalid-json-line", "data", ["data=gsm8k", "data.path={d}"],
         ["train.jsonl' line 2 is not valid JSON", "one JSON object"], setup=_data(train="bad_json"), stage="plan"),
    Case("data-no-final-answer", "data", ["data=gsm8k", "data.path={d}"],
         ["train.jsonl' row 1", "'#### <answer>'"], setup=_data(train="no_final_answer"), stage="plan"),
    Case("data-tsv-row", "data", ["data=mgsm", "data.path={d}", "data.languages=[en]", "train.max_steps=0"],
         ["mgsm_en.tsv' line 2", "'question<TAB>answer'"], setup=_mgsm_bad_row, stage="plan"),
    Case("data-field-mapping", "data", ["data=gsm8k", "data.path={d}", "+data.fields.question=problem"],
         ["no field 'problem'", "fields present: answer, question"], setup=_data(train="valid"), stage="plan"),
    Case("data-unknown-language", "data", ["data.languages=[de,xx]"], ["'data.languages' has ['xx']", "bn, de"],
         stage="plan"),
    Case("data-template-field", "data", ["data.prompt_template='Q: {{qestion}}'"],
         ["'data.prompt_template'", "'qestion'", "{{question}}"], stage="plan"),
    Case("data-rows-all-too-long", "data", ["train.max_seq_len=8"],
         ["longer than train.max_seq_len=8", "raise it"], stage="plan"),
    Case("model-unknown-architecture", "model", ["model.architecture.model_type=lama"],
         ["'model.architecture.model_type' is 'lama'", "Did you mean llama", "CONFIG_MAPPING"], stage="plan"),
    Case("model-chat-template-absent", "model", ["method.use_chat_template=true"],
         ["'method.use_chat_template' is true", "no chat template", "tiny-qwen2"], stage="plan"),
    Case("resume-without-checkpoint", "rundir", [*_SMALL, "resume=true"],
         ["resume=true", "no complete checkpoint", "train.save_steps"], setup=_resumable(with_checkpoint=False),
         stage="plan"),
    Case("resume-from-half-written-save", "rundir", [*_SMALL, "resume=true"],
         ["no complete checkpoint", ".tmp-step-4-abcd", "never count"],
         setup=_resumable(with_checkpoint=False, half=True), stage="plan"),
    # ---- a full disk in the middle of a run ------------------------------------------------------------------
    Case("rundir-fills-during-save", "rundir", [*_SMALL, "train.save_steps=2", "train.max_steps=6"],
         ["could not save checkpoint", "step-4", "No space left on device", "previous checkpoints are intact"],
         stage="run", extra={"mount": "size={size}"}),
]


def _snapshot(root: Path) -> dict[str, str]:
    if not root.exists():
        return {}
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in root.rglob("*")}


def _one_paragraph_error(proc, needles: list[str]) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    err = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    assert err.split(":")[0].endswith("error"), proc.stderr[-3000:]
    for line in proc.stderr.strip().splitlines()[:-1]:  # nothing but log lines before the paragraph
        assert not line.split(":")[0].endswith("error"), proc.stderr[-3000:]
    for needle in needles:
        assert needle in err, f"{needle!r} not in: {err}"
    return err


@pytest.mark.parametrize("case", [c for c in CASES if c.stage == "preflight"], ids=lambda c: c.id)
def test_refused_before_anything_runs(case, tmp_path):
    _check(case, tmp_path, _subprocess)


@pytest.mark.parametrize("case", [c for c in CASES if c.stage == "plan"], ids=lambda c: c.id)
def test_refused_by_the_plan(case, tmp_path, capsys, monkeypatch):
    """The same ``run`` entry point (``runner.cli.main`` with the argv a user types), called in this process: these
    cases import torch and transformers, which a subprocess per case would pay for again and again."""
    _check(case, tmp_path, lambda args, timeout: _in_process(args, capsys, monkeypatch))


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.stage == "run"], ids=lambda c: c.id)
def test_refused_while_running(case, tmp_path):
    _check(case, tmp_path, _subprocess)


def _subprocess(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    return run_cli(*args, timeout=timeout)


def _in_process(args: list[str], capsys, monkeypatch) -> subprocess.CompletedProcess:
    from runner import cli

    monkeypatch.setattr(sys, "argv", ["run", *args])
    monkeypatch.setenv("COLUMNS", "200")
    capsys.readouterr()
    try:
        cli.main()
        code = 0
    except SystemExit as ex:
        code = ex.code if isinstance(ex.code, int) else 1
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["run", *args], code, out.out, out.err)


def _check(case: Case, tmp_path: Path, invoke: Callable) -> None:
    run_dir = tmp_path / "run"
    fmt = {"tmp": str(tmp_path)}
    if case.setup:
        fmt.update({k: str(v) for k, v in case.setup(tmp_path).items()})
    if "yaml" in case.extra:
        fmt["searchpath"] = _conf_dir(tmp_path, case.extra.get("group", "experiment"), "mine", case.extra["yaml"])
    with contextlib.ExitStack() as stack:
        if "mount" in case.extra:
            # rundir-fills-during-save: the 1 MiB floor and one SMALL checkpoint (~0.72 MiB) fit, a second does not
            mounted = stack.enter_context(_tmpfs(run_dir, case.extra["mount"].format(size="1300k")))
            if not mounted and case.extra["mount"].endswith(",ro") and os.geteuid() != 0:
                run_dir.chmod(0o555)  # without root, permissions make the dir read-only
                stack.callback(run_dir.chmod, 0o755)
                case = Case(case.id, case.kind, case.args, [n for n in case.needles if "Read-only" not in n])
            elif not mounted:
                pytest.skip("mounting a tmpfs needs root")
        if run_dir.is_dir() and not case.extra.get("mount", "").endswith(",ro"):
            (run_dir / "notes.txt").write_text("the user's own notes\n")
        elif not run_dir.exists():
            run_dir.mkdir()
            (run_dir / "notes.txt").write_text("the user's own notes\n")
        if case.extra.get("fill"):
            _fill(run_dir)
        before = _snapshot(run_dir)
        proc = invoke([*[a.format(**fmt) for a in case.args], f"hydra.run.dir={run_dir}"],
                      timeout=60 if case.stage == "preflight" else 600)
        _one_paragraph_error(proc, [n.format(**fmt) for n in case.needles])
        after = _snapshot(run_dir)
        for name, digest in before.items():
            assert after.get(name) == digest, f"{name} was changed or removed"
        if case.stage == "preflight":
            assert after == before  # refused before Hydra wrote anything
        if case.extra.get("never"):
            assert not (tmp_path / case.extra["never"]).exists()
        if case.id == "rundir-fills-during-save":
            from safetensors.torch import load_file

            from runner import checkpoint

            assert [s for s, _ in checkpoint.list_checkpoints(run_dir / "checkpoints")] == [2]
            assert not list((run_dir / "checkpoints").glob(".tmp-step-*"))
            assert load_file(str(run_dir / "checkpoints" / "step-2" / "model.safetensors"))


def _fill(path: Path) -> None:
    with contextlib.suppress(OSError), open(path / "filler.bin", "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 65536)


def test_the_matrix_covers_every_kind():
    kinds = {k: sum(c.kind == k for c in CASES) for k in ("config", "data", "model", "rundir")}
    assert sum(kinds.values()) == len(CASES) >= 40
    assert min(kinds.values()) >= 5, kinds


# ---------------------------------------------------------------------------------------------------------------------
# Inputs that are accepted, saying what was done
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_without_pad_token(tmp_path_factory):
    """A local checkpoint dir (tiny LLaMA, safetensors) paired with the real GPT-2 tokenizer, which has no pad
    token."""
    gpt2 = SHARED_DATA / "tokenizers" / "gpt2"
    if not gpt2.exists():
        pytest.skip("shared GPT-2 tokenizer not available")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    d = tmp_path_factory.mktemp("nopad") / "model"
    config = AutoConfig.for_model("llama", vocab_size=50257, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(d, safe_serialization=True)
    return d, gpt2


@pytest.mark.slow
def test_a_tokenizer_without_pad_token_is_accepted_and_said(tmp_path, model_without_pad_token):
    """GPT-2's tokenizer has no pad token: the run trains and evaluates with pad = EOS, and says so."""
    model_dir, tokenizer_dir = model_without_pad_token
    search = _conf_dir(tmp_path, "model", "mine", "defaults:\n  - /schema/model/base@_here_\n  - _self_\n"
                       f"name: mine\npath: {model_dir}\ntokenizer: {tokenizer_dir}\n")
    proc = run_cli(search, "model=mine", "data.languages=[en]", "data.train_size=4", "train.micro_batch_size=2",
                   "train.max_steps=1", "eval.max_samples=2", "eval.max_new_tokens=4",
                   f"hydra.run.dir={tmp_path / 'nopad'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "has no pad token: using eos '<|endoftext|>' as pad" in proc.stdout + proc.stderr
    metrics = json.loads((tmp_path / "nopad" / "metrics.json").read_text())
    assert metrics["train/steps"] == 1 and metrics["eval/rows"] == 2


def test_accepted_by_the_plan_saying_what_was_done(tmp_path, capsys, monkeypatch):
    # rows longer than train.max_seq_len next to rows that fit: the long ones are dropped and counted
    d = _gsm8k_dir(tmp_path)
    proc = _in_process(["data=gsm8k", f"data.path={d}", "train.max_seq_len=190", "dry_run=true",
                        f"hydra.run.dir={tmp_path / 'long'}"], capsys, monkeypatch)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads((tmp_path / "long" / "plan.json").read_text())
    assert 0 < plan["train_rows"] < 3 and any("rows longer than train.max_seq_len=190" in n for n in plan["notes"])
    assert "are dropped" in proc.stdout

    # a changed data config with resume_force=true: accepted, each change logged
    _resumable()(tmp_path / "force")
    proc = _in_process([*_SMALL, "data.train_size=8", "resume=true", "resume_force=true", "dry_run=true",
                        f"hydra.run.dir={tmp_path / 'force' / 'run'}"], capsys, monkeypatch)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resume_force=true: resuming although data.train_size: 6 -> 8" in proc.stdout + proc.stderr
