"""The reference side of the dry-run benchmark: the least a script does to learn a model's parameter count offline.

Reads the ``architecture:`` fields of a ``conf/model/<name>.yaml`` with PyYAML, builds the model with
``AutoModelForCausalLM.from_config`` on the meta device (no weights, no download) and counts its parameters. It
imports nothing from the runner. Prints one JSON line: ``{"model", "params"}``.

    python bench/reference/meta_build.py conf/model/llama2-7b.yaml
"""

import json
import sys

import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    arch = dict(spec["architecture"])
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    print(json.dumps({"model": spec["name"], "params": sum(p.numel() for p in model.parameters())}))


if __name__ == "__main__":
    main()
