"""The project's own tokenizer for tiny models: a byte-level BPE trained offline on the built-in data.

* Any script: the base alphabet is the 256 bytes (GPT-2's byte-to-unicode map), so Bengali, Thai, Chinese,
  Japanese... always encode (merges learnt from the built-in multilingual corpus make them shorter), and decoding is
  lossless.
* Deterministic: trained by HF ``tokenizers`` on a fixed corpus (:func:`runner.arith.tokenizer_corpus`) with a fixed
  vocabulary size; the same inputs give the same vocabulary and merges on every machine (tested).
* Digits are split one per token (as LLaMA and Qwen tokenizers do), which makes arithmetic learnable by tiny models.
* Special tokens: ``<pad>`` (id 0, distinct from EOS), ``<s>`` (BOS, prepended to every encoded text), ``</s>``
  (EOS), ``<unk>``, and the chat markers ``<|im_start|>``/``<|im_end|>``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
TOKENIZER_VERSION = "bytebpe-digits-v2"


def corpus_fingerprint() -> str:
    """A short hash of the training corpus and settings (part of the tiny-model cache key)."""
    from runner.arith import tokenizer_corpus

    h = hashlib.sha256(TOKENIZER_VERSION.encode())
    for line in tokenizer_corpus():
        h.update(line.encode("utf-8"))
    return h.hexdigest()[:12]


def train_tokenizer(vocab_size: int, chat_template: str | None = None):
    """Train the byte-level BPE and wrap it as a ``PreTrainedTokenizerFast``.

    Args:
        vocab_size: upper bound of the vocabulary (special tokens and the 256 bytes included); at least 300.
        chat_template: optional Jinja chat template stored on the tokenizer.

    Returns:
        ``transformers.PreTrainedTokenizerFast`` with ``len(tok) <= vocab_size``, BOS prepended on encode, pad id 0.

    Raises:
        ValueError: ``vocab_size`` is below 300 (the bytes and special tokens would not fit).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from runner.arith import tokenizer_corpus

    if vocab_size < 300:
        raise ValueError(f"vocab_size={vocab_size} is too small for a byte-level BPE (needs at least 300).")
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B:1",
                                                       special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=["<|im_start|>", "<|im_end|>"],
                                   model_max_length=1 << 20, padding_side="right", clean_up_tokenization_spaces=False)
    if chat_template:
        fast.chat_template = chat_template
    return fast


def vocab_digest(tokenizer_dir: str | Path) -> str:
    """sha256 of a saved tokenizer's ``tokenizer.json`` model section (vocabulary and merges)."""
    blob = json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text(encoding="utf-8"))
    return hashlib.sha256(json.dumps(blob["model"], sort_keys=True).encode()).hexdigest()
