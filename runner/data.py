"""Datasets: loaders by ``data.format``, language selection, row limits and prompt/completion rendering.

Every loader returns :class:`Example` rows with the same canonical fields, whatever the source layout:
``question`` (the problem text), ``solution`` (the training target, e.g. a chain of thought ending in the answer),
``answer`` (the gold final answer as a string) and ``lang`` (ISO 639-1 code). Sources are a local ``data.path``
(file or directory) or, when it is null, the hub id ``data.hub_id`` through ``datasets.load_dataset``.

Errors name the file or row at fault (:class:`runner.errors.DataError`) and are raised before any model is loaded.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from runner.errors import DataError

T = TypeVar("T")
_GAP = object()


@dataclass
class Example:
    """One row in canonical form."""

    id: str
    question: str
    solution: str
    answer: str
    lang: str = "en"
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------------------------
# Reading helpers
# --------------------------------------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    if not path.exists():
        raise DataError(f"data file '{path}' does not exist; check data.path (it should point at the dataset's "
                        "directory or file).")
    if path.is_dir():
        raise DataError(f"'{path}' is a directory where a data file was expected.")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"data file '{path}' is empty; it should hold at least one row.")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as ex:
        line = raw[: ex.start].count(b"\n") + 1
        raise DataError(f"data file '{path}' is not valid UTF-8 (line {line}, byte {ex.start}); re-encode it as "
                        "UTF-8.") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON Lines file (blank lines skipped). Raises DataError naming the file and line of a bad row."""
    rows = []
    for i, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as ex:
            raise DataError(f"'{path}' line {i} is not valid JSON ({ex.msg}); every line must be one JSON "
                            "object.") from None
        if not isinstance(row, dict):
            raise DataError(f"'{path}' line {i} is a {type(row).__name__}, not a JSON object.")
        rows.append(row)
    return rows


def read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as ex:
        raise DataError(f"'{path}' is not valid JSON (line {ex.lineno}: {ex.msg}).") from None


def _field(row: dict[str, Any], name: str, where: str, types: tuple[type, ...] = (str,)) -> Any:
    if name not in row:
        raise DataError(f"{where} has no field '{name}' (fields present: {', '.join(sorted(row)) or 'none'}); map "
                        f"the right source field with data.fields, e.g. +data.fields.{name}=<name> (a new entry takes "
                        "the leading '+').")
    value = row[name]
    if not isinstance(value, types) or isinstance(value, bool):
        valid = " or ".join(t.__name__ for t in types)
        article = "an" if type(value).__name__[:1] in "aeiou" else "a"
        raise DataError(f"{where} field '{name}' is {article} {type(value).__name__} ({str(value)[:40]!r}); it must be a "
                        f"{valid}.")
    return value


def normalize_number(text: str) -> str:
    """A gold numeric answer in canonical form: commas stripped, ``8.0`` -> ``8``."""
    s = str(text).strip().replace(",", "")
    try:
        value = float(s)
    except ValueError:
        return s
    if value.is_integer():
        return str(int(value))
    return repr(value)


# --------------------------------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------------------------------

MGSM_LANGS = ("bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")
MSVAMP_LANGS = {"bn": "Bengali", "zh": "Chinese", "en": "English", "fr": "French", "de": "German", "ja": "Japanese",
                "ru": "Russian", "es": "Spanish", "sw": "Swahili", "th": "Thai"}
_PREFIX = re.compile(r"^[^:：\n]{1,40}[:：]\s*")


def _hub_rows(cfg: Any, split: str, name: str | None = None) -> list[dict[str, Any]]:
    """Rows of ``cfg.hub_id`` (config ``name``) split ``split`` via ``datasets.load_dataset`` (needs the network)."""
    if not cfg.hub_id:
        raise DataError(f"data '{cfg.name}' has neither data.path nor data.hub_id; set data.path to a local copy.")
    import datasets

    try:
        ds = datasets.load_dataset(cfg.hub_id, name, split=split)
    except Exception as ex:  # network, missing config or split: all are the user's to fix
        raise DataError(f"could not load '{cfg.hub_id}' (config {name}, split {split}) from the hub: "
                        f"{' '.join(str(ex).split())[:300]}. Without network access, set data.path to a local "
                        "copy.") from None
    return [dict(r) for r in ds]


def load_mgsm(cfg: Any, split: str, languages: list[str]) -> list[Example]:
    """MGSM (Shi et al. 2022). ``test``: ``mgsm_<lang>.tsv`` (question TAB answer, no header, 250 rows per language).
    ``train``: the 8 native chain-of-thought exemplars per language from ``mgsm_exemplars.json``."""
    out: list[Example] = []
    if cfg.path is None:
        for lang in languages:
            for i, row in enumerate(_hub_rows(cfg, split, lang)):
                where = f"hub dataset {cfg.hub_id}/{lang}/{split} row {i}"
                q = _field(row, cfg.fields.get("question", "question"), where)
                ans = normalize_number(str(_field(row, cfg.fields.get("answer", "answer_number"), where,
                                                  (int, float, str))))
                sol = row.get("answer") or f"The answer is {ans}."
                out.append(Example(f"mgsm-{lang}-{split}-{i}", _PREFIX.sub("", q), _PREFIX.sub("", sol), ans, lang))
        return out
    root = Path(cfg.path)
    if split == "test":
        for lang in languages:
            path = root / f"mgsm_{lang}.tsv"
            for i, line in enumerate(_read_text(path).splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split("\t")
                if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
                    raise DataError(f"'{path}' line {i} has {len(parts)} tab-separated field(s); MGSM rows are "
                                    "'question<TAB>answer'.")
                ans = normalize_number(parts[1])
                out.append(Example(f"mgsm-{lang}-{i - 1}", parts[0].strip(), f"The answer is {ans}.", ans, lang))
        return out
    if split == "train":
        path = root / "mgsm_exemplars.json"
        blob = read_json(path)
        try:
            exemplars, numbers = blob["MGSM_EXEMPLARS"], blob["EXEMPLAR_NUMBER_ANSWERS"]
        except (KeyError, TypeError):
            raise DataError(f"'{path}' lacks the keys MGSM_EXEMPLARS and EXEMPLAR_NUMBER_ANSWERS.") from None
        for lang in languages:
            if lang not in exemplars:
                raise DataError(f"'{path}' has no exemplars for language '{lang}'; it has {sorted(exemplars)}.")
            for key in sorted(exemplars[lang], key=int):
                row = exemplars[lang][key]
                where = f"'{path}' exemplar {lang}/{key}"
                q, a = _field(row, "q", where), _field(row, "a", where)
                ans = normalize_number(str(numbers[int(key) - 1]))
                out.append(Example(f"mgsm-{lang}-train-{key}", _PREFIX.sub("", q), _PREFIX.sub("", a), ans, lang))
        return out
    raise DataError(f"data=mgsm has splits 'train' (exemplars) and 'test'; got '{split}'.")


def load_msvamp(cfg: Any, split: str, languages: list[str]) -> list[Example]:
    """MSVAMP (Chen et al. 2023): ``test_<Language>.jsonl`` with ``m_query`` and ``response`` (1000 rows each)."""
    if split != "test":
        raise DataError(f"data=msvamp has only a 'test' split; got '{split}'. It is an evaluation set: train on "
                        "another dataset or set train.max_steps=0.")
    out = []
    qf, af = cfg.fields.get("question", "m_query"), cfg.fields.get("answer", "response")
    for lang in languages:
        if cfg.path is None:
            rows = _hub_rows(cfg, split, MSVAMP_LANGS[lang])
            source = f"hub dataset {cfg.hub_id}"
        else:
            path = Path(cfg.path) / f"test_{MSVAMP_LANGS[lang]}.jsonl"
            rows, source = read_jsonl(path), f"'{path}'"
        for i, row in enumerate(rows):
            where = f"{source} row {i + 1}"
            q = _field(row, qf, where)
            ans = normalize_number(str(_field(row, af, where, (str, int, float))))
            out.append(Example(f"msvamp-{lang}-{i}", q, f"The answer is {ans}.", ans, lang))
    return out


def gsm8k_final_answer(answer: str) -> str:
    """The final answer of a GSM8K solution: the text after ``####``, commas stripped."""
    if "####" not in answer:
        return ""
    return normalize_number(answer.rsplit("####", 1)[1])


def load_gsm8k(cfg: Any, split: str, languages: list[str]) -> list[Example]:
    """GSM8K (Cobbe et al. 2021): ``{split}.jsonl`` rows ``{question, answer}``; the final answer follows ``####``.

    The training target is the rationale without the calculator annotations ``<<a*b=c>>`` and with the final line
    written as ``The answer is N.``."""
    if split not in ("train", "test"):
        raise DataError(f"data=gsm8k has splits 'train' and 'test'; got '{split}'.")
    if cfg.path is None:
        rows, source = _hub_rows(cfg, split, "main"), f"hub dataset {cfg.hub_id}"
    else:
        path = Path(cfg.path) / f"{split}.jsonl"
        rows, source = read_jsonl(path), f"'{path}'"
    qf, af = cfg.fields.get("question", "question"), cfg.fields.get("answer", "answer")
    out = []
    for i, row in enumerate(rows):
        where = f"{source} row {i + 1}"
        q, a = _field(row, qf, where), _field(row, af, where)
        ans = gsm8k_final_answer(a)
        if not ans:
            raise DataError(f"{where}: field '{af}' has no '#### <answer>' line; GSM8K answers end with one.")
        rationale = re.sub(r"<<[^>]*>>", "", a.rsplit("####", 1)[0]).strip()
        out.append(Example(f"gsm8k-{split}-{i}", q, f"{rationale}\nThe answer is {ans}.", ans, "en"))
    return out


def _math_answer(value: Any, where: str, name: str) -> str:
    """A competition-math gold answer as a string: numbers normalised (``27.0`` -> ``27``), lists joined with
    ``", "`` (OlympiadBench's ``final_answer``), and a text holding ``\\boxed{}`` (Minerva's ``solution``) reduced to
    the content of its last ``\\boxed{}``."""
    from runner.metrics import last_boxed

    if isinstance(value, bool) or value is None:
        raise DataError(f"{where} field '{name}' is {value!r}; it must hold the gold answer (a string, number or "
                        "list of strings).")
    if isinstance(value, (int, float)):
        return normalize_number(str(value))
    if isinstance(value, list):
        if not value:
            raise DataError(f"{where} field '{name}' is an empty list; it must hold the gold answer.")
        return ", ".join(_math_answer(v, where, name) for v in value)
    text = str(value).strip()
    if "\\boxed" in text or "\\fbox" in text:
        boxed = last_boxed(text)
        if boxed is None:
            raise DataError(f"{where} field '{name}' has an unclosed \\boxed{{...}}; it must hold the gold answer.")
        return boxed
    if not text:
        raise DataError(f"{where} field '{name}' is empty; it must hold the gold answer.")
    return text


def load_math(cfg: Any, split: str, languages: list[str]) -> list[Example]:
    """Competition-math benchmarks (MATH-500, AIME, AMC, Minerva math, OlympiadBench): ``{split}.jsonl`` under
    ``data.path`` (or ``data.path`` itself when it is a file), or the hub dataset ``data.hub_id``.

    Canonical fields and their default source fields (override with ``data.fields``): ``question`` <- ``problem``,
    ``answer`` <- ``answer``, ``solution`` <- ``solution`` (optional; a list is joined by newlines). The gold answer
    may be a string, a number or a list (see :func:`_math_answer`); answers are compared with ``math-verify``
    (``data.answer_match=math_verify``).
    """
    if cfg.path is None:
        rows, source = _hub_rows(cfg, split), f"hub dataset {cfg.hub_id}"
    else:
        root = Path(cfg.path)
        path = root if root.is_file() else root / f"{split}.jsonl"
        rows, source = read_jsonl(path), f"'{path}'"
    qf = cfg.fields.get("question", "problem")
    af = cfg.fields.get("answer", "answer")
    sf = cfg.fields.get("solution", "solution")
    out = []
    for i, row in enumerate(rows):
        where = f"{source} row {i + 1}"
        q = _field(row, qf, where)
        if af not in row:
            _field(row, af, where)  # raises, naming the fields present
        ans = _math_answer(row[af], where, af)
        sol = row.get(sf) or ""
        if isinstance(sol, list):
            sol = "\n".join(str(x) for x in sol)
        out.append(Example(f"{cfg.name}-{split}-{i}", q, str(sol), ans, "en"))
    return out


def load_arith(cfg: Any, split: str, languages: list[str]) -> list[Example]:
    """The built-in synthetic multilingual arithmetic word problems (see :mod:`runner.arith`)."""
    from runner import arith

    if split not in ("train", "test"):
        raise DataError(f"data=arith has splits 'train' and 'test'; got '{split}'.")
    return arith.generate(split, languages, train_size=cfg.train_size or 256, eval_size=cfg.eval_size or 16,
                          seed=cfg.seed)


@dataclass(frozen=True)
class Loader:
    """A dataset format: its load function and the languages it has."""

    load: Callable[[Any, str, list[str]], list[Example]]
    languages: tuple[str, ...]


def _arith_langs() -> tuple[str, ...]:
    from runner import arith

    return tuple(arith.LANGUAGES)


LOADERS: dict[str, Callable[[], Loader]] = {
    "arith": lambda: Loader(load_arith, _arith_langs()),
    "mgsm": lambda: Loader(load_mgsm, MGSM_LANGS),
    "msvamp": lambda: Loader(load_msvamp, tuple(MSVAMP_LANGS)),
    "gsm8k": lambda: Loader(load_gsm8k, ("en",)),
    "math": lambda: Loader(load_math, ("en",)),
}
"""``data.format`` -> loader. Other families register their own formats here."""


def register_format(name: str, load: Callable[[Any, str, list[str]], list[Example]], languages: Iterable[str]) -> None:
    """Register a loader for ``data.format=name`` (used by recipes whose data is not math word problems)."""
    langs = tuple(languages)
    LOADERS[name] = lambda: Loader(load, langs)


def get_loader(cfg: Any) -> Loader:
    if cfg.format not in LOADERS:
        from runner.pairs import PAIR_FORMATS

        hint = (" It holds preference pairs, which only pair methods read (e.g. method=gram)."
                if cfg.format in PAIR_FORMATS else "")
        raise DataError(f"'data.format' is '{cfg.format}'; valid formats of question/answer data: "
                        f"{', '.join(sorted(LOADERS))}.{hint}")
    return LOADERS[cfg.format]()


def resolve_languages(cfg: Any) -> list[str]:
    """``data.languages`` checked against the dataset's languages (all of them when null)."""
    loader = get_loader(cfg)
    if not cfg.languages:
        return list(loader.languages)
    bad = [x for x in cfg.languages if x not in loader.languages]
    if bad:
        raise DataError(f"'data.languages' has {bad}, which data={cfg.name} does not have; valid languages: "
                        f"{', '.join(loader.languages)}.")
    return list(cfg.languages)


def check_path(cfg: Any) -> None:
    if cfg.path is not None and not Path(cfg.path).exists():
        raise DataError(f"'data.path' is '{cfg.path}', which does not exist; point it at the dataset's directory "
                        "or file (or set data.path=null to use data.hub_id).")


def load_split(cfg: Any, split: str, max_per_lang: int | None = None, max_total: int | None = None) -> list[Example]:
    """Rows of ``split`` for the selected languages.

    Args:
        cfg: the ``data`` config node.
        split: split name (``train``, ``test``...).
        max_per_lang: keep at most this many rows per language (the first ones, in file order).
        max_total: keep at most this many rows overall, taken round-robin over languages so each stays represented.

    Raises:
        DataError: missing file, empty file, bad row, unknown language or split.
    """
    check_path(cfg)
    languages = resolve_languages(cfg)
    rows = get_loader(cfg).load(cfg, split, languages)
    if not rows:
        raise DataError(f"data={cfg.name} split '{split}' has no rows for languages {languages}.")
    by_lang: dict[str, list[Example]] = {}
    for ex in rows:
        by_lang.setdefault(ex.lang, []).append(ex)
    if max_per_lang is not None:
        by_lang = {k: v[:max_per_lang] for k, v in by_lang.items()}
    ordered = [ex for lang in languages for ex in by_lang.get(lang, [])]
    if max_total is not None and len(ordered) > max_total:
        ordered = round_robin([by_lang.get(lang, []) for lang in languages], max_total)
    return ordered


def round_robin(groups: Iterable[Sequence[T]], limit: int) -> list[T]:
    """Items taken one from each group in turn (group order, then item order) until ``limit`` are taken or every
    group is used up: a cut that keeps each group (language, preference subset) represented."""
    out: list[T] = []
    for layer in itertools.zip_longest(*groups, fillvalue=_GAP):
        for item in layer:
            if item is not _GAP:
                if len(out) == limit:
                    return out
                out.append(item)
    return out


def render(ex: Example, cfg: Any) -> tuple[str, str]:
    """(prompt, completion) of a row from ``data.prompt_template`` and ``data.completion_template``."""
    values = {"question": ex.question, "solution": ex.solution, "answer": ex.answer, "lang": ex.lang}
    try:
        return cfg.prompt_template.format(**values), cfg.completion_template.format(**values)
    except (KeyError, IndexError, ValueError) as ex_:
        raise DataError(f"'data.prompt_template' / 'data.completion_template' use a field that does not exist "
                        f"({ex_}); valid fields: {{question}}, {{solution}}, {{answer}}, {{lang}}.") from None
