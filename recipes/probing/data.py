"""Probing data: the MRMBench layout, probing tasks derived from HH-RLHF, and preference pairs for LRHP.

MRMBench (github.com/wangclnlp/MRMBench ``data/README.md``): ``mrm_{easy,hard}/<dimension>/{train,test}.json``, each a
JSON list of ``{"input": str, "output": str, "label": int}``. The probed text is ``input + output`` (raw strings, no
chat template, no separator), as ``TextDataset`` in the repo's ``src/task1_discriminant_rm_deepspeed_cate_2.py`` builds
it. ``data.path`` is the ``data`` directory (holding ``mrm_easy``/``mrm_hard``) or a ``mrm_<level>`` directory itself;
without it, the files are fetched from the hub dataset ``data.hub_id`` (``ifnoc/MRMBench``) with
``huggingface_hub.snapshot_download``, assuming the hub copy mirrors that layout (unverified offline: the error names
what was found instead).

HH-RLHF probing tasks (``data.format=hh_probe``), built from :func:`runner.pairs.load_hh_rlhf`:

* ``helpful_vs_harmless``: (prompt, chosen reply) of helpful-base (label 1) and harmless-base (label 0) pairs: does
  the representation separate the two kinds of conversation?
* ``harmlessness``: harmless-base chosen (1) vs rejected (0) replies, pointwise.
* ``helpfulness``: helpful-base chosen (1) vs rejected (0) replies, pointwise.

Errors name the file and row (:class:`runner.errors.DataError`) and are raised before any model is loaded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipes.probing.config import HH_PROBE_TASKS, LEVEL_CLASSES, MRMBENCH_DIMENSIONS
from runner.data import read_json
from runner.errors import DataError
from runner.pairs import HH_SUBSETS, PreferencePair, load_hh_rlhf, load_pair_split


@dataclass(frozen=True)
class ProbeRow:
    """One probing sample: the text is ``input + output``; ``index`` is its row in the source (0-based)."""

    input: str
    output: str
    label: int
    index: int

    @property
    def text(self) -> str:
        return self.input + self.output


@dataclass
class ProbeTask:
    """The train and test rows of one dimension, and where they came from."""

    dimension: str
    train: list[ProbeRow] = field(default_factory=list)
    test: list[ProbeRow] = field(default_factory=list)
    source: str = ""


def _subsample(rows: list[ProbeRow], n: int | None, seed: int) -> list[ProbeRow]:
    """At most ``n`` rows drawn without replacement (seeded), kept in source order; all rows when ``n`` is None."""
    if n is None or len(rows) <= n:
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def parse_probe_rows(blob: Any, where: str, num_classes: int) -> list[ProbeRow]:
    """Rows of one MRMBench file (a JSON list of ``{input, output, label}``).

    Raises:
        DataError: not a list, a row without the string fields, a label outside ``[0, num_classes)``.
    """
    if not isinstance(blob, list):
        raise DataError(f"{where} holds a JSON {type(blob).__name__}; MRMBench files are a JSON list of "
                        "{\"input\", \"output\", \"label\"} objects.")
    rows = []
    for i, row in enumerate(blob):
        at = f"{where} row {i}"
        if not isinstance(row, dict):
            raise DataError(f"{at} is a {type(row).__name__}, not an object with input, output and label.")
        for key in ("input", "output"):
            if not isinstance(row.get(key), str):
                raise DataError(f"{at} needs a string field '{key}' (fields present: {', '.join(sorted(row))}).")
        label = row.get("label")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < num_classes:
            raise DataError(f"{at} has label {label!r}; with {num_classes} classes a label is an integer in "
                            f"[0, {num_classes - 1}] (method.level={'hard' if num_classes == 3 else 'easy'}).")
        rows.append(ProbeRow(row["input"], row["output"], label, i))
    if not rows:
        raise DataError(f"{where} is an empty list; it should hold at least one row.")
    return rows


def _mrmbench_root(cfg: Any, level: str, dims: list[str]) -> Path:
    """The ``mrm_<level>`` directory: under ``data.path`` or in a hub snapshot."""
    if cfg.path is not None:
        root = Path(cfg.path)
        if not root.exists():
            raise DataError(f"'data.path' is '{root}', which does not exist; point it at MRMBench's data directory "
                            f"(holding mrm_easy/ and mrm_hard/).")
        for cand in (root / f"mrm_{level}", root / "data" / f"mrm_{level}", root):
            if all((cand / d).is_dir() for d in dims):
                return cand
        have = sorted(p.name for p in (root / f"mrm_{level}").iterdir() if p.is_dir()) if (
            root / f"mrm_{level}").is_dir() else []
        raise DataError(f"'data.path' '{root}' has no mrm_{level}/<dimension>/ directories for {dims} (found "
                        f"{have or 'none'}); MRMBench's layout is data/mrm_{{easy,hard}}/<dimension>/{{train,test}}"
                        ".json. To probe fewer dimensions, list them in data.subsets.")
    if not cfg.hub_id:
        raise DataError(f"data '{cfg.name}' has neither data.path nor data.hub_id; set data.path to MRMBench's data "
                        "directory.")
    from huggingface_hub import snapshot_download

    try:
        snap = Path(snapshot_download(cfg.hub_id, repo_type="dataset",
                                      allow_patterns=[f"*mrm_{level}/{d}/*.json" for d in dims]))
    except Exception as ex:  # network or access: the user's to fix
        raise DataError(f"could not fetch '{cfg.hub_id}' from the hub ({' '.join(str(ex).split())[:200]}); without "
                        "network access set data.path to a local copy of MRMBench's data directory.") from None
    found = sorted({p.parent.parent for p in snap.rglob(f"mrm_{level}/*/*.json")})
    if not found:
        files = sorted(str(p.relative_to(snap)) for p in snap.rglob("*") if p.is_file())[:5]
        raise DataError(f"the hub dataset '{cfg.hub_id}' has no mrm_{level}/<dimension>/*.json files (found "
                        f"{files or 'nothing'}); download MRMBench's data directory and set data.path.")
    return found[0]


def load_mrmbench(cfg: Any, level: str, max_train: int | None = None, max_test: int | None = None,
                  splits: tuple[str | None, str | None] = ("train", "test")) -> dict[str, ProbeTask]:
    """MRMBench tasks of ``data.subsets`` (all six dimensions when null) at ``level``.

    Args:
        cfg: the ``data`` config node (``path``, ``hub_id``, ``subsets``, ``train_split``, ``eval_split``, ``seed``).
        level: ``easy`` (labels 0/1) or ``hard`` (labels 0/1/2).
        max_train: cap on training rows per dimension (a seeded sample, kept in file order).
        max_test: cap on test rows per dimension.
        splits: file names (without ``.json``) of the train and test splits; None skips one.

    Raises:
        DataError: a missing directory or file, a malformed row, a label outside the level's classes.
    """
    dims = list(cfg.subsets or MRMBENCH_DIMENSIONS)
    root = _mrmbench_root(cfg, level, dims)
    num_classes = LEVEL_CLASSES[level]
    tasks = {}
    for d in dims:
        task = ProbeTask(d, source=str(root / d))
        for attr, split, cap in (("train", splits[0], max_train), ("test", splits[1], max_test)):
            if split is None:
                continue
            path = root / d / f"{split}.json"
            rows = parse_probe_rows(read_json(path), f"'{path}'", num_classes)
            setattr(task, attr, _subsample(rows, cap, cfg.seed))
        tasks[d] = task
    return tasks


def _hh_split_pairs(cfg: Any, subsets: list[str]) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train pairs, test pairs) per the data config: two HH splits, or one split partitioned disjointly."""
    path = cfg.path
    if path is not None and not Path(path).exists():
        raise DataError(f"'data.path' is '{path}', which does not exist; point it at a directory of HH-RLHF "
                        "<subset>_<split>.jsonl.gz files (e.g. ../shared/data/hh_rlhf).")
    n_train, n_test = cfg.train_size, cfg.eval_size
    train: list[PreferencePair] = []
    test: list[PreferencePair] = []
    for subset in subsets:
        if cfg.train_split == cfg.eval_split:
            pairs = load_hh_rlhf(path, [subset], split=cfg.train_split, hub_id=cfg.hub_id or "Anthropic/hh-rlhf")
            random.Random(cfg.seed).shuffle(pairs)
            k = n_test if n_test is not None else len(pairs) // 5
            test += pairs[:k]
            train += pairs[k:][:n_train] if n_train is not None else pairs[k:]
        else:
            tr = load_hh_rlhf(path, [subset], split=cfg.train_split, hub_id=cfg.hub_id or "Anthropic/hh-rlhf")
            te = load_hh_rlhf(path, [subset], split=cfg.eval_split, hub_id=cfg.hub_id or "Anthropic/hh-rlhf")
            random.Random(cfg.seed).shuffle(tr)
            random.Random(cfg.seed).shuffle(te)
            train += tr[:n_train] if n_train is not None else tr
            test += te[:n_test] if n_test is not None else te
    return train, test


def hh_probe_rows(task: str, pairs: list[PreferencePair]) -> list[ProbeRow]:
    """The rows of one HH-RLHF probing task (see the module docstring) from ``pairs``; ``index`` numbers the rows.

    The output is the reply with one leading space, so ``input + output`` reads ``"...Assistant: <reply>"``.
    """
    rows: list[tuple[str, str, int]] = []
    for p in pairs:
        if task == "helpful_vs_harmless" and p.subset in ("helpful-base", "harmless-base"):
            rows.append((p.prompt, " " + p.chosen, int(p.subset == "helpful-base")))
        elif (task, p.subset) in (("harmlessness", "harmless-base"), ("helpfulness", "helpful-base")):
            rows += [(p.prompt, " " + p.chosen, 1), (p.prompt, " " + p.rejected, 0)]
    return [ProbeRow(i, o, y, k) for k, (i, o, y) in enumerate(rows)]


def load_hh_probe(cfg: Any, max_train: int | None = None, max_test: int | None = None) -> dict[str, ProbeTask]:
    """HH-RLHF probing tasks of ``data.subsets`` (all of :data:`HH_PROBE_TASKS` when null).

    ``data.train_size`` / ``data.eval_size`` are pairs per HH subset for the train / test split. When
    ``data.train_split == data.eval_split`` (the local copy has only ``test``), that split's pairs are shuffled with
    ``data.seed`` and partitioned: the first ``eval_size`` pairs of each subset are test, the next ``train_size``
    train, so no conversation is in both.

    Raises:
        DataError: missing files or malformed rows (from :func:`runner.pairs.load_hh_rlhf`), an empty task.
    """
    tasks_named = list(cfg.subsets or HH_PROBE_TASKS)
    uses = {"helpful_vs_harmless": {"helpful-base", "harmless-base"}, "harmlessness": {"harmless-base"},
            "helpfulness": {"helpful-base"}}
    need = set().union(*(uses[t] for t in tasks_named))
    train_pairs, test_pairs = _hh_split_pairs(cfg, [s for s in HH_SUBSETS if s in need])
    source = str(cfg.path or cfg.hub_id)
    tasks = {}
    for name in tasks_named:
        task = ProbeTask(name, _subsample(hh_probe_rows(name, train_pairs), max_train, cfg.seed),
                         _subsample(hh_probe_rows(name, test_pairs), max_test, cfg.seed), source)
        if not task.train or not task.test:
            raise DataError(f"HH-RLHF probing task '{name}' has {len(task.train)} train and {len(task.test)} test "
                            "rows; raise data.train_size / data.eval_size.")
        tasks[name] = task
    return tasks


def load_probe_tasks(data_cfg: Any, level: str, max_train: int | None, max_test: int | None) -> dict[str, ProbeTask]:
    """Dispatch on ``data.format``: ``mrmbench`` or ``hh_probe``."""
    if data_cfg.format == "mrmbench":
        return load_mrmbench(data_cfg, level, max_train, max_test, (data_cfg.train_split, data_cfg.eval_split))
    if data_cfg.format == "hh_probe":
        return load_hh_probe(data_cfg, max_train, max_test)
    raise DataError(f"'data.format' is '{data_cfg.format}'; probing reads mrmbench or hh_probe.")


def load_preference_pairs(data_cfg: Any) -> list[PreferencePair]:
    """Preference pairs for LRHP: split ``data.train_split`` of a pair data config (``hh_rlhf`` or ``pairs_jsonl``,
    read by :func:`runner.pairs.load_pair_split`: ``data.subsets`` kept, at most ``data.max_samples`` pairs taken
    round-robin over the subsets).

    Raises:
        DataError: a missing file, malformed rows, no pairs, or a data config without a train split.
    """
    if data_cfg.path is not None and not Path(data_cfg.path).exists():
        raise DataError(f"'data.path' is '{data_cfg.path}', which does not exist; point it at a directory of HH-RLHF "
                        "<subset>_<split>.jsonl.gz files or a JSON Lines file of pairs.")
    if data_cfg.train_split is None:
        raise DataError(f"data={data_cfg.name} has no train split (data.train_split is null); LRHP reads its pairs "
                        "from it.")
    return load_pair_split(data_cfg, data_cfg.train_split, data_cfg.max_samples)
