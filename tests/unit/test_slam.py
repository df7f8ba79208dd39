"""SLAM's parameter selection (METHODS.md Part A 1 minimal tests) and its layer analysis."""

from __future__ import annotations

import pytest
import torch

from recipes.sft.slam import apply_slam, choose_layers, layer_statistics, slam_trainable_count
from runner.errors import ConfigError
from runner.models import build_on_meta, count_params
from tests.conftest import tiny_model

EXPECTED = [f"model.layers.{i}.mlp.{m}.weight" for i in range(6) for m in ("up_proj", "down_proj")]


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_exactly_the_ffn_up_down_of_layers_0_5_train(kind):
    model = tiny_model(kind)
    names = apply_slam(model, list(range(6)), ["up_proj", "down_proj"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(names) == sorted(trainable) == sorted(EXPECTED)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 6 * 2 * 64 * 128 == 98_304
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "model.layers.0.mlp.gate_proj.weight" in frozen and "model.embed_tokens.weight" in frozen
    assert "model.layers.0.self_attn.q_proj.weight" in frozen and "model.norm.weight" in frozen


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_one_trainer_step_changes_only_the_selected_tensors(kind, tmp_path):
    from transformers import TrainingArguments

    from recipes.sft.data import CompletionCollator
    from runner.trainer import RunnerTrainer

    model = tiny_model(kind)
    apply_slam(model, list(range(6)), ["up_proj", "down_proj"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(3, 500, (12,), generator=g).tolist()} for _ in range(4)]
    for r in rows:
        r["labels"] = [-100] * 4 + r["input_ids"][4:]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, learning_rate=1e-2,
                             use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True)
    trainer = RunnerTrainer(model=model, args=args, train_dataset=rows, data_collator=CompletionCollator(0))
    trainer.train()
    for name, p in model.named_parameters():
        if name in EXPECTED:
            assert not torch.equal(p, before[name]), f"{name} should have changed"
        else:
            assert torch.equal(p, before[name]), f"{name} should be bit-identical"
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    expected_ids = {id(p) for n, p in model.named_parameters() if n in EXPECTED}
    assert in_optimizer == expected_ids


@pytest.mark.parametrize("name,layers,fraction,count", [
    ("llama2-7b", 6, 0.0803, 541_065_216), ("llama2-13b", 6, 0.0653, 849_346_560),
])
def test_paper_shares_on_meta_models(compose_cfg, name, layers, fraction, count):
    model = build_on_meta(compose_cfg(f"model={name}").model)
    apply_slam(model, list(range(layers)), ["up_proj", "down_proj"])
    total, trainable = count_params(model)
    arch = compose_cfg(f"model={name}").model.architecture
    assert trainable == count == slam_trainable_count(layers, arch.hidden_size, arch.intermediate_size,
                                                      ["up", "down"])
    assert round(trainable / total, 4) == fraction


def test_qwen2_architecture_selection_on_meta(compose_cfg):
    model = build_on_meta(compose_cfg("model=qwen2.5-math-1.5b").model)
    apply_slam(model, list(range(6)), ["up_proj", "down_proj"])
    assert count_params(model)[1] == 6 * 2 * 1536 * 8960


def test_missing_layers_are_refused():
    with pytest.raises(ConfigError, match="missing layers \\[9\\]"):
        apply_slam(tiny_model("llama"), [0, 9], ["up_proj"])


def test_layer_statistics_by_hand():
    # 2 layers, 2 languages, 2 neurons. Layer 0: rates differ across languages; layer 1: identical.
    rates = torch.tensor([[[1.0, 0.0], [0.0, 0.0]],
                          [[0.6, 0.2], [0.6, 0.2]]])
    stats = layer_statistics(rates, ["en", "de"])
    # layer 0: neuron 0 mean 0.5, deviations +-0.5 -> 0.25; neuron 1: 0 -> msd = (0.25 + 0) / 2 = 0.125
    assert stats["msd"] == pytest.approx([0.125, 0.0])
    assert stats["activated"] == {"en": [1, 1], "de": [0, 1]}
    assert stats["overlap_en"]["de"] == pytest.approx([0.0, 1.0])
    assert choose_layers(stats["msd"], 1) == [0]


def test_choose_layers_orders_and_breaks_ties_low():
    assert choose_layers([0.1, 0.5, 0.5, 0.3, 0.0], 3) == [1, 2, 3]
    assert choose_layers([0.2, 0.2, 0.2], 2) == [0, 1]
