"""Secrets and remote code: planted credential values never reach a file, a log or wandb; code shipped with a
checkpoint never runs by default; pickles are never loaded unsafely; recipes only come from the registry."""

from __future__ import annotations

import ast
import json

import pytest

from tests.conftest import REPO, run_cli

PLANTED = {
    "HF_TOKEN": "hf_PlantedTokenValue12345",
    "WANDB_API_KEY": "PlantedWandbKey0123456789abcdef01234567",
    "MY_SERVICE_PASSWORD": "Planted-Passw0rd-value",
    "LAB_SECRET": "planted_lab_secret_value",
    "OPENAI_API_KEY": "sk-planted-openai-key-value",
}
SMALL = ["model.architecture.hidden_size=32", "model.architecture.intermediate_size=64",
         "model.architecture.num_hidden_layers=2", "model.architecture.vocab_size=512", "data.languages=[en,de]",
         "data.train_size=6", "train.micro_batch_size=2", "train.max_seq_len=128"]


@pytest.mark.slow
def test_planted_credentials_never_reach_files_logs_or_wandb(tmp_path):
    run_dir = tmp_path / "run"
    # as a user might type them: a value pasted into an override, and values interpolated from the environment
    proc = run_cli(*SMALL, "train.max_steps=2", "eval.max_samples=1", "eval.max_new_tokens=4", "logger=wandb",
                   "logger.mode=offline", f"logger.tags=[run-{PLANTED['HF_TOKEN']}]",
                   "logger.entity=${oc.env:MY_SERVICE_PASSWORD}", "+data.fields.note=${oc.env:LAB_SECRET}",
                   f"hydra.run.dir={run_dir}",
                   env={**PLANTED, "WANDB_MODE": None})
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any("wandb" in p.parts for p in files) and (run_dir / ".hydra" / "overrides.yaml").exists()
    for name, value in PLANTED.items():
        assert value not in proc.stdout and value not in proc.stderr, name
        for path in files:
            assert value.encode() not in path.read_bytes(), f"{name} leaked into {path.relative_to(run_dir)}"
    config = (run_dir / "config.yaml").read_text()
    assert "entity: '***'" in config and "run-***" in config and "note: '***'" in config
    argv = json.loads((run_dir / "provenance.json").read_text())["argv"]
    assert "logger.tags=[run-***]" in argv
    wandb_run = next(run_dir.rglob("offline-run-*/run-*.wandb")).read_bytes()  # what a later `wandb sync` uploads
    assert b'"note":"***"' in wandb_run and b"run-***" in wandb_run


def test_code_shipped_with_a_checkpoint_never_runs_by_default(tmp_path):
    marker = tmp_path / "REMOTE_CODE_RAN"
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "auto_map": {
        "AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilModel"}}))
    (model / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (model / "model.safetensors").write_bytes(b"")
    for args in (["dry_run=true"], ["train.max_steps=1"]):
        proc = run_cli("model=llama2-7b", f"model.path={model}", *args, f"hydra.run.dir={tmp_path / 'run'}")
        assert proc.returncode == 1 and "model.trust_remote_code=true" in proc.stderr, proc.stderr[-2000:]
        assert not marker.exists()


def _calls(func_name: str):
    """Every call ``*.{func_name}(...)`` in runner/ and recipes/, as (file, line, {keyword: ast node})."""
    for path in sorted([*(REPO / "runner").rglob("*.py"), *(REPO / "recipes").rglob("*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == func_name:
                yield path.relative_to(REPO), node.lineno, {k.arg: k.value for k in node.keywords}


def test_every_torch_load_is_weights_only():
    """Our code never unpickles arbitrary objects: each ``torch.load`` passes ``weights_only=True`` (the HF Trainer's
    resume path in transformers 5.24 does the same for optimizer, scheduler, scaler and RNG states)."""
    for path, line, kw in _calls("load"):
        src = (REPO / path).read_text().splitlines()[line - 1]
        if "torch.load" in src:
            assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
                f"{path}:{line} torch.load without weights_only=True"


def test_trust_remote_code_only_from_the_model_config():
    """No ``from_pretrained`` call turns on remote code by itself: the flag, when passed, comes from the model
    config (``model.trust_remote_code``, off by default); weights are loaded with ``use_safetensors=True``."""
    seen = 0
    for path, line, kw in _calls("from_pretrained"):
        seen += 1
        flag = kw.get("trust_remote_code")
        assert not (isinstance(flag, ast.Constant) and flag.value is True), f"{path}:{line} hard-codes remote code"
        if flag is not None and not isinstance(flag, ast.Constant):
            assert "trust_remote_code" in ast.unparse(flag), f"{path}:{line}: {ast.unparse(flag)}"
    assert seen >= 3
    from runner.config import ModelConfig

    assert ModelConfig().trust_remote_code is False
    src = (REPO / "runner" / "models.py").read_text()
    assert '"use_safetensors": True' in src


@pytest.mark.parametrize("recipe", ["os:system", "subprocess:run", "recipes.sft.recipe:SFTRecipe", "runner.cli:main"])
def test_recipes_only_through_the_registry(recipe, tmp_path):
    from runner import registry

    proc = run_cli(f"method.recipe={recipe}", f"hydra.run.dir={tmp_path / 'run'}")
    valid = f"valid recipes: {', '.join(sorted(registry.RECIPES))}."
    assert proc.returncode == 1 and valid in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()
    from runner.errors import ConfigError

    with pytest.raises(ConfigError, match="not a registered recipe"):
        registry.get_recipe(recipe)
