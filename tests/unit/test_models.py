"""Models: meta-device parameter counts of real architectures, the tiny-model round trip, the tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from runner.errors import ModelError
from runner.models import build_on_meta, check_local_dir, count_params, ensure_tiny, load_model, tiny_cache_key


@pytest.mark.parametrize("name,total", [
    ("llama2-7b", 6_738_415_616), ("llama2-13b", 13_015_864_320), ("qwen2.5-math-1.5b", 1_543_714_304),
    ("qwen2.5-math-7b", 7_615_616_512), ("llama3.1-8b-instruct", 8_030_261_248),
    ("deepseek-r1-distill-qwen-1.5b", 1_777_088_000),
])
def test_meta_build_counts_real_models_exactly(compose_cfg, name, total):
    model = build_on_meta(compose_cfg(f"model={name}").model)
    assert count_params(model) == (total, total)
    assert next(model.parameters()).device.type == "meta"


def test_tiny_model_round_trip_through_from_pretrained(compose_cfg):
    cfg = compose_cfg("model=tiny-qwen2")
    path = ensure_tiny(cfg.model, cfg.cache_dir)
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()
    assert ensure_tiny(cfg.model, cfg.cache_dir) == path  # built once, then reused
    model, tok = load_model(cfg.model, cfg.hardware, cfg.cache_dir)
    from safetensors.torch import load_file

    saved = load_file(str(path / "model.safetensors"))
    state = model.state_dict()
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert count_params(model)[0] == 1_716_352
    assert tok.pad_token_id == 0 and tok.pad_token_id != tok.eos_token_id
    assert tok.chat_template and "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)


def test_tiny_build_is_deterministic(compose_cfg, tmp_path):
    cfg = compose_cfg("model=tiny-llama", f"cache_dir={tmp_path / 'a'}")
    a = ensure_tiny(cfg.model, tmp_path / "a")
    b = ensure_tiny(cfg.model, tmp_path / "b")
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((a / "tokenizer.json").read_text())["model"] == json.loads(
        (b / "tokenizer.json").read_text())["model"]
    other = compose_cfg("model=tiny-llama", "model.init_seed=1").model
    assert tiny_cache_key(other) != tiny_cache_key(cfg.model)


@pytest.mark.parametrize("text", [
    "Question: Anna has 5 apples.", "রাহুল-এর কাছে 13টি আপেল আছে।", "สมชายมีแอปเปิล 5 ผล", "小明有41个苹果。",
    "さくらはりんごを3個持っています。", "Здравствуйте, 12 яблок", "emoji 🤖 and ĳ", "∫ x² dx = x³/3",
])
def test_builtin_tokenizer_round_trips_any_script(compose_cfg, text):
    cfg = compose_cfg()
    _, tok = load_model(cfg.model, cfg.hardware, cfg.cache_dir)
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert max(ids) < cfg.model.architecture.vocab_size


def test_builtin_tokenizer_splits_digits(compose_cfg):
    cfg = compose_cfg()
    _, tok = load_model(cfg.model, cfg.hardware, cfg.cache_dir)
    pieces = tok.convert_ids_to_tokens(tok("1234", add_special_tokens=False)["input_ids"])
    assert pieces == ["1", "2", "3", "4"]


def test_local_dir_checks(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        check_local_dir(tmp_path / "nope", "m")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="no \\*.safetensors weights.*pytorch_model.bin"):
        check_local_dir(tmp_path, "m")


def test_tokenizer_without_pad_token_is_fixed_safely(tmp_path, compose_cfg):
    cfg = compose_cfg()
    src = ensure_tiny(cfg.model, cfg.cache_dir)
    _, tok = load_model(cfg.model, cfg.hardware, cfg.cache_dir)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    from runner.models import load_tokenizer

    fixed = load_tokenizer(cfg.model, str(tmp_path))
    assert fixed.pad_token == "<unk>" and fixed.pad_token_id != fixed.eos_token_id
    assert src.exists()


def test_one_tiny_cache_entry_serves_causal_lm_and_base(compose_cfg, tmp_path):
    base = compose_cfg("model.auto_class=base", f"cache_dir={tmp_path}")
    causal = compose_cfg(f"cache_dir={tmp_path}")
    backbone, _ = load_model(base.model, base.hardware, base.cache_dir)  # built first, as a base model would be
    lm, _ = load_model(causal.model, causal.hardware, causal.cache_dir)
    assert type(backbone).__name__ == "LlamaModel" and type(lm).__name__ == "LlamaForCausalLM"
    assert torch.equal(backbone.embed_tokens.weight, lm.model.embed_tokens.weight)
