"""Preference pairs: (prompt, chosen, rejected) rows for reward models (GRAM), probes (MRMBench, LRHP) and RL.

Sources: Anthropic HH-RLHF (``<subset>_<split>.jsonl.gz`` files with full ``chosen``/``rejected`` transcripts; the
hub copy ``Anthropic/hh-rlhf`` with ``data_dir=<subset>``), or a JSON Lines file with ``prompt``, ``chosen`` and
``rejected`` fields.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from runner.data import round_robin
from runner.errors import DataError

HH_SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
ASSISTANT = "\n\nAssistant:"


@dataclass(frozen=True)
class PreferencePair:
    """One comparison: ``chosen`` was preferred over ``rejected`` as a reply to ``prompt``."""

    id: str
    prompt: str
    chosen: str
    rejected: str
    subset: str = ""
    margin: float | None = None
    """How strongly ``chosen`` is preferred (a score difference), where the source gives one; None otherwise."""


def split_hh(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two HH-RLHF transcripts into (prompt, chosen reply, rejected reply).

    The prompt is the longest common prefix of the two transcripts cut just after its last ``"\\n\\nAssistant:"``;
    the replies are what follows (stripped). Usually the transcripts differ only in the final Assistant turn; in the
    few rows where they diverge earlier (7 of 8,552 test rows), the replies carry the rest of each dialogue.

    Raises:
        ValueError: the transcripts share no Assistant turn.
    """
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    cut = chosen.rfind(ASSISTANT, 0, n)
    if cut < 0 or cut + len(ASSISTANT) > n:
        cut = chosen.rfind(ASSISTANT, 0, max(n - 1, 0))
    if cut < 0:
        raise ValueError("the transcripts share no '\\n\\nAssistant:' turn")
    end = cut + len(ASSISTANT)
    return chosen[:end], chosen[end:].strip(), rejected[end:].strip()


def _read_gz_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise DataError(f"'{path}' does not exist; HH-RLHF files are named <subset>_<split>.jsonl.gz with subsets "
                        f"{', '.join(HH_SUBSETS)}.")
    rows = []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as ex:
                        raise DataError(f"'{path}' line {i} is not valid JSON ({ex.msg}).") from None
    except (OSError, EOFError, UnicodeDecodeError) as ex:
        raise DataError(f"'{path}' cannot be read as gzip-compressed UTF-8 JSON Lines ({ex}).") from None
    if not rows:
        raise DataError(f"'{path}' is empty.")
    return rows


def load_hh_rlhf(path: str | Path | None, subsets: list[str] | None = None, split: str = "test",
                 max_per_subset: int | None = None, drop_ties: bool = True,
                 hub_id: str = "Anthropic/hh-rlhf") -> list[PreferencePair]:
    """HH-RLHF pairs of ``subsets`` (all four when None), in file order.

    Args:
        path: a dir with ``<subset>_<split>.jsonl.gz`` files; None loads ``hub_id`` (needs the network).
        subsets: subset names from :data:`HH_SUBSETS`.
        split: ``test`` (the local copy has only test) or ``train``.
        max_per_subset: keep the first N usable pairs of each subset.
        drop_ties: skip rows whose chosen and rejected replies are identical.

    Raises:
        DataError: unknown subset, missing or unreadable file, a row without the fields or the shared prompt.
    """
    subsets = list(subsets or HH_SUBSETS)
    bad = [s for s in subsets if s not in HH_SUBSETS]
    if bad:
        raise DataError(f"HH-RLHF subsets {bad} do not exist; valid subsets: {', '.join(HH_SUBSETS)}.")
    out: list[PreferencePair] = []
    for subset in subsets:
        if path is None:
            import datasets

            try:
                rows = [dict(r) for r in datasets.load_dataset(hub_id, data_dir=subset, split=split)]
            except Exception as ex:
                raise DataError(f"could not load {hub_id} ({subset}, {split}) from the hub: "
                                f"{' '.join(str(ex).split())[:200]}; set a local path instead.") from None
            where = f"{hub_id}/{subset}"
        else:
            file = Path(path) / f"{subset}_{split}.jsonl.gz"
            rows, where = _read_gz_jsonl(file), f"'{file}'"
        kept = 0
        for i, row in enumerate(rows, 1):
            if not isinstance(row.get("chosen"), str) or not isinstance(row.get("rejected"), str):
                raise DataError(f"{where} row {i} needs string fields 'chosen' and 'rejected'.")
            try:
                prompt, chosen, rejected = split_hh(row["chosen"], row["rejected"])
            except ValueError as ex:
                raise DataError(f"{where} row {i}: {ex}.") from None
            if drop_ties and chosen == rejected:
                continue
            out.append(PreferencePair(f"{subset}-{split}-{i - 1}", prompt, chosen, rejected, subset))
            kept += 1
            if max_per_subset is not None and kept >= max_per_subset:
                break
    return out


def load_pairs_jsonl(path: str | Path) -> list[PreferencePair]:
    """Pairs from a JSON Lines file with string fields ``prompt``, ``chosen``, ``rejected`` (optional ``id``,
    ``subset`` and a numeric ``margin``, e.g. a score difference from UltraFeedback or HelpSteer2)."""
    from runner.data import read_jsonl

    out = []
    for i, row in enumerate(read_jsonl(Path(path)), 1):
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(row.get(key), str):
                raise DataError(f"'{path}' row {i} needs a string field '{key}' (fields present: "
                                f"{', '.join(sorted(row))}).")
        margin = row.get("margin")
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
            raise DataError(f"'{path}' row {i} field 'margin' is {margin!r}; it must be a number (or absent).")
        out.append(PreferencePair(str(row.get("id", i - 1)), row["prompt"], row["chosen"], row["rejected"],
                                  str(row.get("subset", "")), None if margin is None else float(margin)))
    return out


PAIR_FORMATS = ("hh_rlhf", "pairs_jsonl")
"""``data.format`` values whose rows are preference pairs (read by :func:`load_pair_split`, not ``runner.data``)."""


def load_pair_split(cfg, split: str, max_pairs: int | None = None) -> list[PreferencePair]:
    """Preference pairs of ``split`` as a data config describes them.

    Args:
        cfg: the ``data`` config node; ``format`` is ``hh_rlhf`` or ``pairs_jsonl``. ``data.subsets`` (when set)
            keeps only the pairs of those subsets (HH-RLHF subsets, or the ``subset`` field of JSON Lines rows).
        split: for ``hh_rlhf``: ``train`` / ``test`` (the subsets of ``data.subsets``, all four when null) or
            ``<subset>/<split>`` (one subset); for ``pairs_jsonl``: the file ``<data.path>/<split>.jsonl`` (or
            ``data.path`` itself when it is a file).
        max_pairs: keep at most this many pairs, taken round-robin over the subsets so each stays represented.

    Raises:
        DataError: an unknown format, subset or split, a missing or malformed file, or no pairs.
    """
    wanted = list(cfg.subsets) if getattr(cfg, "subsets", None) else None
    if cfg.format == "hh_rlhf":
        subsets = wanted
        name = split
        if "/" in split:
            subset, name = split.split("/", 1)
            subsets = [subset]
        if name not in ("train", "test"):
            raise DataError(f"data={cfg.name}: split '{split}' is not valid; use train, test or <subset>/<split> with "
                            f"a subset of {', '.join(HH_SUBSETS)}.")
        pairs = load_hh_rlhf(cfg.path, subsets, name, hub_id=cfg.hub_id or "Anthropic/hh-rlhf")
    elif cfg.format == "pairs_jsonl":
        if cfg.path is None:
            raise DataError(f"data={cfg.name} (format pairs_jsonl) needs data.path: a JSON Lines file, or a dir with "
                            "<split>.jsonl, of rows with prompt, chosen and rejected.")
        root = Path(cfg.path)
        pairs = load_pairs_jsonl(root if root.is_file() else root / f"{split}.jsonl")
        if wanted is not None:
            pairs = [p for p in pairs if p.subset in wanted]
    else:
        raise DataError(f"'data.format' is '{cfg.format}', which holds no preference pairs; valid pair formats: "
                        f"{', '.join(PAIR_FORMATS)}.")
    if not pairs:
        raise DataError(f"data={cfg.name} split '{split}' has no usable pairs.")
    if max_pairs is not None and len(pairs) > max_pairs:
        groups: dict[str, list[PreferencePair]] = {}
        for p in pairs:
            groups.setdefault(p.subset, []).append(p)
        pairs = round_robin(groups.values(), max_pairs)
    return pairs
