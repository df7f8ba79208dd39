"""runner/hardware.py: GPU checks and precision, the DeepSpeed config, the per-GPU memory estimate and its fit check;
the launcher checks of validate()."""

from __future__ import annotations

import pytest

from runner import hardware
from runner.config import validate
from runner.errors import ConfigError, HardwareError

# LLaMA-2-7B (conf/model/llama2-7b.yaml) and SLAM's default selection on it (tests/cli/test_cli.py).
PSI, PSI_SLAM, EMBED = 6_738_415_616, 541_065_216, 32_000 * 4096
GiB = 1024**3


def test_gpu_without_a_visible_gpu_is_a_clear_error(compose_cfg, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    hw = compose_cfg("hardware=gpu").hardware
    with pytest.raises(HardwareError) as info:
        hardware.setup(hw)
    text = info.value.paragraph()
    assert "hardware=gpu asks for a GPU (hardware.device=cuda) but torch sees none" in text
    assert "CUDA_VISIBLE_DEVICES=''" in text and "hardware=cpu" in text
    # planning for a GPU needs none
    assert hardware.setup(hw, dry_run=True) == "bf16"


def test_fewer_gpus_than_processes_is_refused_before_launch(compose_cfg, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    with pytest.raises(HardwareError, match="'hardware.nproc_per_node' is 8 but this node has 4 visible GPU"):
        hardware.setup(compose_cfg("hardware=deepspeed", "hardware.nproc_per_node=8").hardware)
    assert hardware.setup(compose_cfg("hardware=deepspeed", "hardware.nproc_per_node=4").hardware) == "bf16"


@pytest.mark.parametrize("bf16,expected", [(True, "bf16"), (False, "fp16")])
def test_auto_precision_on_gpu_is_bf16_where_supported(compose_cfg, monkeypatch, bf16, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    cfg = compose_cfg("hardware=gpu")
    assert cfg.hardware.attn_implementation == "sdpa" and cfg.hardware.device == "cuda"
    assert hardware.resolve_precision(cfg.hardware) == expected
    assert hardware.resolve_precision(compose_cfg("hardware=cpu").hardware) == "fp32"


def test_weights_are_fp32_masters_under_amp_and_16_bit_under_deepspeed(compose_cfg):
    assert hardware.weights_precision(compose_cfg("hardware=gpu", "train.max_steps=5"), "bf16") == "fp32"
    assert hardware.weights_precision(compose_cfg("hardware=gpu", "train.max_steps=0"), "bf16") == "bf16"
    assert hardware.weights_precision(compose_cfg("hardware=deepspeed", "train.max_steps=5"), "bf16") == "bf16"
    assert hardware.weights_precision(compose_cfg("hardware=cpu"), "fp32") == "fp32"


def test_deepspeed_config_from_the_yaml(compose_cfg):
    cfg = compose_cfg("hardware=deepspeed", "hardware.nproc_per_node=8", "hardware.nnodes=2",
                      "hardware.master_addr=node0", "hardware.zero_stage=3", "hardware.offload_optimizer=true",
                      "hardware.offload_param=true", "train.micro_batch_size=4", "train.grad_accum_steps=2",
                      "train.max_grad_norm=0.5")
    validate(cfg)
    ds = hardware.deepspeed_config(cfg, "bf16")
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (
        4, 2, 4 * 2 * 16)
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert ds["gradient_clipping"] == 0.5
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    assert ds["optimizer"]["type"] == "AdamW"  # DeepSpeed's CPU Adam runs the offloaded step
    plain = hardware.deepspeed_config(compose_cfg("hardware=deepspeed", "hardware.zero_stage=2"), "fp16")
    assert "optimizer" not in plain and "offload_param" not in plain["zero_optimization"]
    assert plain["fp16"] == {"enabled": True} and plain["train_batch_size"] == 4


@pytest.mark.parametrize("overrides,needle", [
    (["hardware=ddp", "hardware.zero_stage=2"], "'hardware.zero_stage' is 2 but 'hardware.distributed' is 'ddp'"),
    (["hardware=deepspeed", "hardware.zero_stage=2", "hardware.offload_param=true"],
     "'hardware.offload_param' is true but it needs DeepSpeed ZeRO-3"),
    (["hardware=deepspeed", "hardware.zero_stage=0", "hardware.offload_optimizer=true"],
     "'hardware.offload_optimizer' is true"),
    (["hardware=deepspeed", "hardware.device=cpu", "hardware.precision=fp32", "hardware.backend=nccl"],
     "'hardware.backend' is nccl but 'hardware.device' is cpu"),
    (["hardware=deepspeed", "hardware.nnodes=2"], "'hardware.master_addr' is 127.0.0.1"),
    (["hardware=deepspeed", "hardware.nproc_per_node=8", "train.micro_batch_size=4", "train.global_batch_size=64"],
     "'train.global_batch_size' is 64 but train.micro_batch_size=4 x train.grad_accum_steps=1 x world size 8"),
])
def test_launcher_mismatches_are_refused_naming_the_keys(compose_cfg, monkeypatch, overrides, needle):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg(*overrides))
    assert needle in info.value.paragraph()


# ---- memory ------------------------------------------------------------------------------------------------------


def _states(total, trainable, **kw):
    out = hardware.model_states_bytes(total, trainable, precision="bf16", **kw)
    return {k: int(v) for k, v in out.items()}


def test_zero3_states_of_slam_on_llama2_7b_by_hand():
    # ZeRO-3 over 8 GPUs: 16-bit weights 2 Psi / 8, 16-bit grads 2 Psi_t / 8, K=14 Psi_t / 8, 4 x embedding gathered
    s = _states(PSI, PSI_SLAM, zero_stage=3, world_size=8, largest_layer_params=EMBED)
    assert s == {"weights": 1_684_603_904, "gradients": 135_266_304, "optimizer": 946_864_128,
                 "gathered_layer": 524_288_000, "cpu_offload": 0}
    # ZeRO-1: only the optimizer states are partitioned; ZeRO-2 also the gradients
    s1 = _states(PSI, PSI_SLAM, zero_stage=1, world_size=8)
    assert s1 == {"weights": 2 * PSI, "gradients": 2 * PSI_SLAM, "optimizer": 2 * PSI_SLAM, "gathered_layer": 0,
                  "cpu_offload": 0}
    s2 = _states(PSI, PSI_SLAM, zero_stage=2, world_size=8, offload_optimizer=True)
    assert s2["weights"] == 2 * PSI and s2["gradients"] == s2["optimizer"] == 0
    assert s2["cpu_offload"] == (2 + 16) * PSI_SLAM // 8
    # without DeepSpeed (PyTorch AMP): fp32 weights 4, grads 4, Adam 8
    assert _states(PSI, PSI_SLAM, zero_stage=None) == {"weights": 4 * PSI, "gradients": 4 * PSI_SLAM,
                                                       "optimizer": 8 * PSI_SLAM, "gathered_layer": 0,
                                                       "cpu_offload": 0}


@pytest.mark.parametrize("stage,offload_optimizer,offload_param", [(2, False, False), (2, True, False),
                                                                   (3, False, False), (3, True, False),
                                                                   (3, True, True)])
def test_full_fine_tuning_equals_deepspeeds_estimators(stage, offload_optimizer, offload_param):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    s = _states(PSI, PSI, zero_stage=stage, world_size=16, offload_optimizer=offload_optimizer,
                offload_param=offload_param, largest_layer_params=EMBED)
    ours = sum(v for k, v in s.items() if k != "cpu_offload")
    if stage == 2:
        _, theirs = estimate_zero2_model_states_mem_needs(PSI, 8, 2, cpu_offload=offload_optimizer)
    else:
        _, theirs, _ = estimate_zero3_model_states_mem_needs(PSI, EMBED, 8, 2, cpu_offload=offload_optimizer,
                                                             cpu_offload_params=offload_param, zero_init=False)
    assert abs(ours - theirs) <= 2  # DeepSpeed truncates each term to an int


def test_activation_bytes_by_hand():
    arch = {"hidden_size": 4, "intermediate_size": 8, "num_hidden_layers": 2, "vocab_size": 10}
    # per layer v (8 s b h + 4 s b f) = 4 (8*6*4 + 4*6*8) = 1536; logits (v + 8) s b V = 12*6*10 = 720
    assert hardware.activation_bytes(arch, micro_batch_size=2, seq_len=3, precision="fp32") == 2 * 1536 + 720
    # checkpointing keeps each layer's input (v s b h = 96) plus one layer's full set
    assert hardware.activation_bytes(arch, 2, 3, "fp32", gradient_checkpointing=True) == 2 * 96 + 1536 + 720
    assert hardware.activation_bytes(arch, 2, 3, "bf16") == (2 * 1536 + 720) / 2 + 2 * 6 * 10 * 2  # 16-bit values
    assert hardware.activation_bytes({}, 2, 3, "fp32") == 0.0


def test_per_gpu_estimate_and_fit(compose_cfg):
    cfg = compose_cfg("model=llama2-7b", "method=slam", "hardware=deepspeed", "hardware.nproc_per_node=8",
                      "hardware.zero_stage=3")
    mem = hardware.estimate_memory_per_gpu(cfg, PSI, PSI_SLAM, largest_layer_params=EMBED)
    assert mem["zero_stage"] == 3 and mem["world_size"] == 8
    assert mem["weights_gb"] == round(1_684_603_904 / GiB, 3)
    acts = hardware.activation_bytes(cfg.model.architecture, 4, 512, "bf16") / GiB
    assert mem["activations_gb"] == round(acts, 3)
    assert mem["total_gb"] == pytest.approx((1_684_603_904 + 135_266_304 + 946_864_128 + 524_288_000) / GiB + acts,
                                            abs=1e-3)
    assert "deepspeed_estimate_gb" not in mem  # SLAM freezes parameters: DeepSpeed's estimators do not apply
    assert hardware.fit_problems(cfg, mem) == []

    one_gpu = compose_cfg("model=llama2-7b", "method=sft", "hardware=gpu")
    mem = hardware.estimate_memory_per_gpu(one_gpu, PSI, PSI)
    assert mem["total_gb"] > 100  # 16 bytes per parameter under AMP, before activations
    (problem,) = hardware.fit_problems(one_gpu, mem)
    assert "hardware.gpu_memory_gb is 80" in problem and "hardware=deepspeed with hardware.zero_stage=2 or 3" in problem
    assert hardware.fit_problems(compose_cfg("model=llama2-7b", "hardware=gpu", "hardware.gpu_memory_gb=null"),
                                 mem) == []


def test_full_fine_tuning_plan_reports_deepspeeds_own_figure(compose_cfg):
    cfg = compose_cfg("model=llama2-7b", "hardware=deepspeed", "hardware.nproc_per_node=8", "hardware.zero_stage=2")
    mem = hardware.estimate_memory_per_gpu(cfg, PSI, PSI)
    model_states = mem["weights_gb"] + mem["gradients_gb"] + mem["optimizer_gb"]
    assert mem["deepspeed_estimate_gb"] == pytest.approx(model_states, abs=2e-3)
    assert mem["deepspeed_estimate_gb"] == pytest.approx((2 * PSI + 18 * PSI / 8) / GiB, abs=1e-3)


@pytest.mark.parametrize("overrides,expected", [
    (["hardware=deepspeed"], "nccl"),
    (["hardware=deepspeed", "hardware.device=cpu", "hardware.precision=fp32"], "gloo"),
    (["hardware=ddp", "hardware.backend=gloo"], "gloo"),
])
def test_backend_is_nccl_on_gpu_and_gloo_on_cpu(compose_cfg, overrides, expected):
    assert hardware.backend(compose_cfg(*overrides).hardware) == expected
