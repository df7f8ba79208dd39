"""Data of the RL recipe: prompt rows for GRPO and the stored solutions of offline injection.

A prompt row is ``{"prompt": <text as the model sees it>, "answer": <gold final answer>, "id": <Example.id>}``; the
prompt text is the SFT recipe's (``data.prompt_template``, wrapped by the chat template when
``method.use_chat_template``), so training rollouts and evaluation see the same prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.data import Example, read_jsonl, render
from runner.errors import DataError


@dataclass
class PromptRows:
    """Encoded prompt rows and what was dropped."""

    rows: list[dict[str, str]]
    """``{"prompt", "answer", "id"}`` per kept example."""
    dropped: int
    """Examples whose prompt is longer than the prompt budget (dropped, not truncated)."""
    max_len: int
    """Longest prompt in tokens."""


def prompt_rows(examples: Sequence[Example], tokenizer: Any, data_cfg: Any, use_chat_template: bool,
                max_prompt_tokens: int) -> PromptRows:
    """Prompt rows of ``examples``; prompts over ``max_prompt_tokens`` tokens are dropped and counted."""
    from recipes.sft.data import encode_prompt, prompt_text

    rows, dropped, longest = [], 0, 0
    for ex in examples:
        text = prompt_text(render(ex, data_cfg)[0], tokenizer, use_chat_template)
        n = len(encode_prompt(text, tokenizer, use_chat_template))
        longest = max(longest, n)
        if n > max_prompt_tokens:
            dropped += 1
            continue
        rows.append({"prompt": text, "answer": ex.answer, "id": ex.id})
    return PromptRows(rows, dropped, longest)


def read_stored_solutions(path: str | Path) -> dict[str, list[str]]:
    """Stored correct solutions for offline injection, keyed ``id:<row id>`` or ``question:<question text>``.

    The file is JSON Lines; each row has ``id`` or ``question`` (which prompt it belongs to) and ``solutions`` (a
    list of strings) or ``solution`` (one string). Rows for the same prompt add up, in file order.

    Raises:
        DataError: the file is missing, empty or not JSON Lines, or a row lacks a key or has a wrong type (the
            message names the file and line).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"'method.offline_injection.path' is '{path}', which does not exist; give a JSON Lines file "
                        "with rows {\"id\": ..., \"solutions\": [...]}.")
    table: dict[str, list[str]] = {}
    for i, row in enumerate(read_jsonl(path), 1):
        where = f"'{path}' row {i}"
        if "id" in row:
            key = f"id:{row['id']}"
        elif isinstance(row.get("question"), str):
            key = f"question:{row['question']}"
        else:
            raise DataError(f"{where} has neither 'id' nor 'question' (fields present: {', '.join(sorted(row))}); "
                            "each row names the prompt its solutions belong to.")
        if "solutions" in row:
            sols = row["solutions"]
            if not isinstance(sols, list) or not all(isinstance(s, str) for s in sols):
                raise DataError(f"{where}: 'solutions' must be a list of strings.")
        elif isinstance(row.get("solution"), str):
            sols = [row["solution"]]
        else:
            raise DataError(f"{where} has no 'solutions' (list of strings) or 'solution' (string).")
        table.setdefault(key, []).extend(s for s in sols if s.strip())
    return table


def solutions_by_id(examples: Sequence[Example], table: dict[str, list[str]]) -> dict[str, list[str]]:
    """The stored solutions of each example (matched by id first, then by question text), keyed by ``Example.id``;
    examples without any are left out."""
    out = {}
    for ex in examples:
        sols = table.get(f"id:{ex.id}", []) + table.get(f"question:{ex.question}", [])
        if sols:
            out[ex.id] = sols
    return out
