"""Config composition, typed schemas and cross-field validation (Compose API, no torch)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from runner import registry
from runner.config import GROUPS, MethodConfig, compose, global_batch_size, group_options, steps_for, validate
from runner.errors import ConfigError


@pytest.mark.parametrize("group", [g for g in GROUPS if g != "experiment"])
def test_every_group_option_composes_and_validates(group, tmp_path):
    for option in group_options(group):
        cfg = compose([f"{group}={option}", f"run_dir={tmp_path}"])
        validate(cfg)
        assert cfg[group].name == option


@pytest.mark.parametrize("option", group_options("experiment"))
def test_every_experiment_composes(option, tmp_path):
    validate(compose([f"experiment={option}", f"run_dir={tmp_path}"]))


def test_every_method_yaml_is_typed_by_its_registered_schema(tmp_path):
    for option in group_options("method"):
        cfg = compose([f"method={option}", f"run_dir={tmp_path}"])
        schema = OmegaConf.get_type(cfg.method)
        assert schema is registry.method_schema(option)
        assert issubclass(schema, MethodConfig)
        assert registry.METHODS[option][0] == cfg.method.recipe


def test_defaults(compose_cfg):
    cfg = compose_cfg()
    assert (cfg.model.name, cfg.method.name, cfg.data.name, cfg.hardware.name, cfg.logger.name) == (
        "tiny-llama", "sft", "arith", "cpu", "none")
    assert cfg.train.lr == 2e-5 and cfg.seed == 0 and cfg.dry_run is False


def _error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        validate(compose(["run_dir=/tmp/unused", *overrides]))
    return info.value.paragraph()


def test_wrong_type_names_the_key():
    msg = _error("train.lr=abc")
    assert "'train.lr'" in msg and "'abc'" in msg and "Float" in msg


def test_unknown_key_names_it_and_suggests():
    msg = _error("train.lrr=1e-4")
    assert "'train.lrr'" in msg and "Did you mean 'train.lr'?" in msg


def test_unknown_method_key_lists_the_methods_keys():
    msg = _error("method=slam", "method.layerz=[0]")
    assert "'method.layerz'" in msg and "method.layers" in msg and "modules" in msg


def test_unknown_group_option_lists_options():
    msg = _error("model=nope")
    assert "'model=nope'" in msg
    for option in ("tiny-llama", "tiny-qwen2", "llama2-7b", "llama2-13b"):
        assert option in msg


def test_unknown_top_level_key():
    assert "Unknown top-level key 'sed'" in _error("+sed=1")


def test_batch_arithmetic_is_checked_naming_the_keys():
    msg = _error("train.micro_batch_size=3", "train.grad_accum_steps=2", "train.global_batch_size=8")
    assert "train.global_batch_size" in msg and "train.micro_batch_size=3" in msg and "= 6" in msg


def test_every_problem_is_listed_at_once():
    msg = _error("train.micro_batch_size=0", "eval.num_samples=2", "eval.pass_at_k=[4]", "train.warmup_ratio=1.5")
    assert "(1)" in msg and "(4)" in msg
    assert "train.micro_batch_size" in msg and "eval.pass_at_k" in msg and "train.warmup_ratio" in msg


def test_slam_layers_must_exist_in_the_model():
    assert "outside [0, 31]" in _error("model=llama2-7b", "method=slam", "method.layers=[0,32]")
    assert "FFN sub-layers" in _error("method=slam", "method.modules=[q_proj]")


def test_lora_knobs_are_checked():
    assert "'method.lora_r' is 0" in _error("method=lora", "method.lora_r=0")


def test_recipe_must_match_the_method():
    assert "runs under recipe 'sft'" in _error("method.recipe=rl")


def test_choice_keys():
    assert "'hardware.precision' is 'fp8'" in _error("hardware.precision=fp8")


def test_batch_and_step_arithmetic(compose_cfg):
    cfg = compose_cfg("train.micro_batch_size=4", "train.grad_accum_steps=2", "train.epochs=2")
    assert global_batch_size(cfg) == 8
    # 100 rows: ceil(100/4)=25 micro-batches, ceil(25/2)=13 steps per epoch, 2 epochs -> 26
    assert steps_for(100, cfg) == 26
    assert steps_for(100, compose_cfg("train.max_steps=7")) == 7
