"""The reference side of the overhead benchmark: SFT written directly against ``transformers.Trainer``.

This is what a researcher writes without the runner: read prompt-completion rows from a JSON Lines file, tokenize
them with completion-only labels, pad them in a small collator, and call ``Trainer.train()``. It imports nothing from
the runner. The benchmark hands it the same model directory, the same rows, and the same training arguments as the
runner's ``run method=sft`` (steps, batch, lr, schedule, seed, sampler), so the two do the same work; their final
training losses must agree.

Prints one JSON line on stdout: ``{"train_runtime_s", "train_loss", "steps", "rows", "load_s"}``.

    python bench/reference/trainer_sft.py --model DIR --rows rows.jsonl --out DIR --max-steps 10 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments


def encode(rows, tokenizer, max_len):
    """Prompt (with BOS) + completion + EOS; labels -100 on the prompt. Rows over ``max_len`` tokens are dropped."""
    out = []
    for r in rows:
        p = tokenizer(r["prompt"])["input_ids"]
        c = tokenizer(r["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(p) + len(c) <= max_len:
            out.append({"input_ids": p + c, "labels": [-100] * len(p) + c})
    return out


def collate(batch, pad_id):
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), -100)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(b["input_ids"]), torch.tensor(b["labels"]), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--rows", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--scheduler", default="cosine")
    ap.add_argument("--sampling", default="group_by_length", help="random | group_by_length | sequential")
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    with open(a.rows, encoding="utf-8") as f:
        rows = encode([json.loads(line) for line in f], tokenizer, a.max_len)
    args = TrainingArguments(output_dir=a.out, per_device_train_batch_size=a.batch_size, max_steps=a.max_steps,
                             learning_rate=a.lr, lr_scheduler_type=a.scheduler, seed=a.seed, data_seed=a.seed,
                             train_sampling_strategy=a.sampling, use_cpu=True, save_strategy="no", report_to="none",
                             remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows,
                      data_collator=lambda b: collate(b, tokenizer.pad_token_id))
    load_s = time.perf_counter() - t0
    result = trainer.train()
    print(json.dumps({"train_runtime_s": result.metrics["train_runtime"], "train_loss": result.training_loss,
                      "steps": trainer.state.global_step, "rows": len(rows), "load_s": round(load_s, 3)}))


if __name__ == "__main__":
    main()
