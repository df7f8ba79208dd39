"""The probing recipe: MRMBench probes with inference-time probing, and LRHP pair representations.

Both methods read top to bottom: setup (data, then the frozen backbone and its tokenizer), extract features once
(over-length texts dropped and counted; cached in ``<run dir>/features/``), train small heads on them (the heads'
optimizer settings come from ``train.*``), evaluate, save (``predictions.jsonl``, heads as safetensors).
``plan()`` counts parameters, rows and steps on the meta device, so ``dry_run=true`` works for an 8B reward model
offline.
"""

from __future__ import annotations

import logging
from typing import Any

from recipes.base import Plan, Recipe
from recipes.probing.config import LEVEL_CLASSES, data_format_problem
from runner.errors import ConfigError, DataError, RunnerError
from runner.hardware import estimate_memory_per_gpu, resolve_precision

log = logging.getLogger("runner.probing")


def state_digest(module: Any) -> str:
    """sha256 over every tensor of ``module``'s state dict (name, dtype, shape and bytes): equal digests mean
    bit-identical weights. CPU tensors only."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class ProbingRecipe(Recipe):
    """Methods ``mrmbench`` (probes over preference dimensions + ITP) and ``lrhp`` (pair encoder + PDS + PMP)."""

    supports_resume = True

    def resume_point(self) -> Any:
        """No training checkpoint: ``resume=true`` trains again from the start, reusing the features cached in
        ``<run dir>/features/`` (extracted once), which reproduces the probes."""
        return None

    def __init__(self, cfg: Any, metrics: Any = None):
        super().__init__(cfg, metrics)
        self._tasks: dict | None = None
        self._splits: tuple | None = None

    # ---- data ----------------------------------------------------------------------------------------------------
    def probe_tasks(self) -> dict:
        """MRMBench tasks by dimension (train rows capped by ``data.max_samples``, test rows by ``eval.max_samples``)."""
        if self._tasks is None:
            from recipes.probing.data import load_probe_tasks

            self._tasks = load_probe_tasks(self.cfg.data, self.cfg.method.level, self.cfg.data.max_samples,
                                           self.cfg.eval.max_samples)
        return self._tasks

    def pair_splits(self) -> tuple[list, list, list]:
        """LRHP's (seed set, target test, pool) of preference pairs."""
        if self._splits is None:
            from recipes.probing.data import load_preference_pairs
            from recipes.probing.lrhp import split_pairs

            m = self.cfg.method
            pairs = load_preference_pairs(self.cfg.data)
            target = m.target_subset if "pds" in m.stages else None
            self._splits = split_pairs(pairs, target, m.seed_size, m.target_test_size, int(self.cfg.data.seed))
            pool = self._splits[2]
            if "pds" in m.stages and m.select_size > len(pool):
                raise ConfigError(f"'method.select_size' is {m.select_size} but the pool has {len(pool)} pairs; "
                                  "lower it or load more pairs.")
        return self._splits

    # ---- plan ----------------------------------------------------------------------------------------------------
    def _backbone_cfg(self) -> Any:
        from omegaconf import OmegaConf

        return OmegaConf.merge(self.cfg.model, {"auto_class": "base"})

    def plan(self) -> Plan:
        from recipes.probing.features import max_positions
        from recipes.probing.optim import HeadOptim
        from runner.config import global_batch_size
        from runner.models import build_on_meta, count_params

        cfg, m = self.cfg, self.cfg.method
        plan = Plan(recipe=m.recipe, method=m.name, model=cfg.model.name, global_batch_size=global_batch_size(cfg))
        hidden = 0
        try:
            meta = build_on_meta(self._backbone_cfg())
            plan.total_params, _ = count_params(meta)
            hidden = int(meta.config.hidden_size)
            limit = max_positions(meta)
            if limit is not None and cfg.train.max_seq_len > limit:
                plan.problems.append(f"'train.max_seq_len' is {cfg.train.max_seq_len} but model '{cfg.model.name}' "
                                     f"has {limit} positions; set train.max_seq_len<={limit}.")
        except RunnerError as ex:
            plan.problems.append(ex.paragraph())
        opt = HeadOptim.from_cfg(cfg)
        bad_data = data_format_problem(cfg)
        if bad_data:
            plan.problems.append(bad_data)
        try:
            if bad_data is None and m.name == "mrmbench":
                tasks = self.probe_tasks()
                out = 1 if LEVEL_CLASSES[m.level] == 2 else LEVEL_CLASSES[m.level]
                plan.trainable_params = hidden * out * len(tasks)
                plan.train_rows = sum(len(t.train) for t in tasks.values())
                plan.eval_rows = sum(len(t.test) for t in tasks.values())
                plan.steps = sum(opt.steps(len(t.train)) for t in tasks.values())
                plan.extra["dimensions"] = ", ".join(tasks)
                plan.extra["probe"] = f"Linear({hidden}, {out}, bias=False) per dimension"
                plan.extra["pooling"] = m.pooling
            elif bad_data is None:
                seed_set, test, pool = self.pair_splits()
                r = m.rep_dim if m.projection == "mlp" else hidden
                g = hidden * r + r + r * r + r if m.projection == "mlp" else 0
                encoder = g + r + (1 if m.encoder == "concat" else 0)
                heads = hidden * (3 if "pds" in m.stages else 0) + hidden * (2 if "pmp" in m.stages else 0)
                margin = (r * m.margin_hidden + 2 * m.margin_hidden + 1) if "pmp" in m.stages else 0
                plan.trainable_params = encoder + heads + margin
                plan.train_rows, plan.eval_rows = len(pool), len(test)
                plan.steps = opt.steps(2 * len(pool))
                plan.extra["seed_pairs"] = len(seed_set)
                plan.extra["encoder"] = m.encoder
                plan.extra["stages"] = ", ".join(m.stages)
        except RunnerError as ex:
            plan.problems.append(ex.paragraph())
        plan.notes.append("the backbone is frozen: its features are extracted once (texts longer than "
                          f"train.max_seq_len={cfg.train.max_seq_len} tokens are dropped and counted at run time), "
                          "then only the heads train")
        precision = resolve_precision(cfg.hardware)
        plan.memory = estimate_memory_per_gpu(self.cfg, plan.total_params, 0, training=False, precision=precision)
        plan.memory_gb = plan.memory["total_gb"]
        return plan

    # ---- run -----------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        if self.cfg.method.name == "mrmbench":
            return self.run_mrmbench()
        return self.run_lrhp()

    def _features(self, name: str, texts: list[str], backbone: Any, tokenizer: Any, precision: str) -> tuple:
        """Features of ``texts`` from the frozen backbone, extracted once and cached in ``<run dir>/features/``.

        Returns:
            ``(features (k, d) of the k kept texts, {text index: feature row}, EncodedTexts, loaded_from_cache)``.
        """
        from recipes.probing.features import cached_features, encode_texts, extract_features, fingerprint
        from runner.logging import progress
        from runner.models import model_source

        cfg, m = self.cfg, self.cfg.method
        enc = encode_texts(texts, tokenizer, cfg.train.max_seq_len, m.append_eos)
        kept = enc.kept
        if not kept:
            raise DataError(f"every text is longer than train.max_seq_len={cfg.train.max_seq_len} tokens (longest "
                            f"{enc.longest}); raise train.max_seq_len.")
        key = fingerprint([texts[i] for i in kept], model=cfg.model.name, source=model_source(cfg.model, cfg.cache_dir),
                          revision=cfg.model.revision, pooling=m.pooling, append_eos=m.append_eos,
                          max_seq_len=cfg.train.max_seq_len, precision=precision)

        def compute():
            with progress(f"features ({name})", len(kept)) as bar:
                return extract_features(backbone, [enc.ids[i] for i in kept], tokenizer.pad_token_id, m.pooling,
                                        cfg.eval.batch_size, progress=lambda done: bar.update(completed=done))

        feats, hit = cached_features(self.run_dir / "features" / f"{name}.safetensors", key, compute)
        log.info("features (%s): %d texts, %d dropped as longer than %d tokens%s", name, len(kept), enc.dropped,
                 cfg.train.max_seq_len, " (from the cache)" if hit else "")
        return feats, {t: r for r, t in enumerate(kept)}, enc, hit

    # ---- MRMBench ------------------------------------------------------------------------------------------------
    def run_mrmbench(self) -> dict[str, float]:
        import torch
        from safetensors.torch import save_file

        from recipes.probing.features import load_backbone
        from recipes.probing.mrmbench import evaluate_probe, fit_centroids, inference_time_probe, train_probe
        from recipes.probing.optim import HeadOptim

        cfg, m = self.cfg, self.cfg.method
        precision = resolve_precision(cfg.hardware)
        tasks = self.probe_tasks()
        num_classes = LEVEL_CLASSES[m.level]
        backbone, tokenizer = load_backbone(cfg, precision)
        total = sum(p.numel() for p in backbone.parameters())
        before = state_digest(backbone) if cfg.hardware.device == "cpu" else None

        index: dict[str, int] = {}
        for task in tasks.values():
            for row in task.train + task.test:
                index.setdefault(row.text, len(index))
        texts = list(index)
        feats, row_of, enc, hit = self._features("mrmbench", texts, backbone, tokenizer, precision)

        def split(rows: list) -> tuple[Any, Any, list]:
            kept = [r for r in rows if index[r.text] in row_of]
            x = feats[[row_of[index[r.text]] for r in kept]] if kept else torch.empty(0, feats.shape[1])
            return x, torch.tensor([r.label for r in kept], dtype=torch.long), kept

        metrics: dict[str, Any] = {"train/total_params": total, "train/features_cached": int(hit)}
        accs, probes, centroids, test_sets = {}, {}, {}, {}
        trainable = dropped_train = dropped_test = 0
        for dim, task in tasks.items():
            x_tr, y_tr, kept_tr = split(task.train)
            x_te, y_te, kept_te = split(task.test)
            dropped_train += len(task.train) - len(kept_tr)
            dropped_test += len(task.test) - len(kept_te)
            if not kept_tr or not kept_te:
                raise DataError(f"dimension '{dim}' has {len(kept_tr)} train and {len(kept_te)} test rows within "
                                f"train.max_seq_len={cfg.train.max_seq_len} tokens; raise it or add rows.")

            def log_step(step: int, loss: float, lr: float, dim: str = dim) -> None:
                if step % max(cfg.train.logging_steps, 1) == 0:
                    self.metrics.log({f"train/loss/{dim}": loss, f"train/lr/{dim}": lr}, step=step)

            opt = HeadOptim.from_cfg(cfg)  # the paper trains each dimension in its own run with the same seed
            probe, losses = train_probe(x_tr, y_tr, num_classes, opt, log_step)
            acc, pred = evaluate_probe(probe, x_te, y_te)
            accs[dim], probes[dim] = acc, probe
            trainable += sum(p.numel() for p in probe.parameters())
            metrics.update({f"eval/accuracy/{dim}": acc, f"train/rows/{dim}": len(kept_tr),
                            f"eval/rows/{dim}": len(kept_te), f"train/steps/{dim}": len(losses)})
            if losses:
                metrics[f"train/loss/{dim}"] = losses[-1]
            test_sets[dim] = (x_te, y_te, kept_te, pred)
            if m.itp:
                try:
                    centroids[dim] = fit_centroids(x_tr, y_tr, m.itp_clusters, seed=int(cfg.seed))
                except ValueError as ex:
                    raise ConfigError(f"'method.itp_clusters'={m.itp_clusters} does not fit dimension '{dim}': {ex}; "
                                      "lower it.") from None
            log.info("%s: accuracy %.4f on %d test rows (%d train rows, %d steps)", dim, acc, len(kept_te),
                     len(kept_tr), len(losses))
        metrics["eval/accuracy"] = sum(accs.values()) / len(accs)
        metrics.update({"train/trainable_params": trainable, "train/trainable_fraction": trainable / total,
                        "train/dropped_rows": dropped_train, "eval/dropped_rows": dropped_test})

        itp = None
        if m.itp:
            x_all = torch.cat([v[0] for v in test_sets.values()])
            itp = inference_time_probe(x_all, centroids, m.d_tau)
            own = torch.cat([torch.full((len(v[0]),), j) for j, v in enumerate(test_sets.values())])
            metrics.update({"eval/itp/discard_rate": itp.discard_rate,
                            "eval/itp/leans_on_own_dimension": float((itp.nearest_dim == own).float().mean()),
                            "eval/itp/min_distance_median": float(itp.min_distance.median())})

        preds, k = [], 0
        for dim, (_, y_te, kept_te, pred) in test_sets.items():
            for i, row in enumerate(kept_te):
                rec: dict[str, Any] = {"dimension": dim, "index": row.index, "label": int(y_te[i]),
                                       "pred": int(pred[i]), "correct": bool(pred[i] == y_te[i])}
                if itp is not None:
                    rec["itp"] = {
                        "distances": {d: [None if v != v else round(v, 4) for v in itp.distances[k, j].tolist()]
                                      for j, d in enumerate(itp.dimensions)},
                        "min_distance": round(float(itp.min_distance[k]), 4),
                        "leans_on": itp.dimensions[int(itp.nearest_dim[k])],
                        "leans_on_label": int(itp.nearest_label[k]), "keep": bool(itp.keep[k])}
                preds.append(rec)
                k += 1
        self.run_dir.write_jsonl("predictions.jsonl", preds)
        if self.run_dir.main:
            save_file({f"{d}.weight": p.linear.weight.detach().contiguous() for d, p in probes.items()},
                      str(self.run_dir / "probes.safetensors"), metadata={"level": m.level, "pooling": m.pooling})
            if centroids:
                save_file({f"{d}.{label}": c.contiguous() for d, cs in centroids.items() for label, c in cs.items()},
                          str(self.run_dir / "itp_centroids.safetensors"), metadata={"clusters": str(m.itp_clusters)})
        if before is not None:
            metrics["train/backbone_unchanged"] = int(state_digest(backbone) == before)
        return metrics

    # ---- LRHP ----------------------------------------------------------------------------------------------------
    def run_lrhp(self) -> dict[str, float]:
        import torch
        from safetensors.torch import save_file

        from recipes.probing import lrhp
        from recipes.probing.features import load_backbone
        from recipes.probing.optim import HeadOptim

        cfg, m = self.cfg, self.cfg.method
        precision = resolve_precision(cfg.hardware)
        seed_set, test, pool = self.pair_splits()
        backbone, tokenizer = load_backbone(cfg, precision)
        total = sum(p.numel() for p in backbone.parameters())

        # one text list for everything: pointwise texts (reward models, the difference encoder) and ordered pair texts
        index: dict[str, int] = {}

        def text_ids(p: Any) -> dict[str, int]:
            t = {"w": p.prompt + " " + p.chosen, "l": p.prompt + " " + p.rejected}
            if m.encoder == "concat":
                t["wl"] = lrhp.pair_text(p.prompt, p.chosen, p.rejected, m.pair_template)
                t["lw"] = lrhp.pair_text(p.prompt, p.rejected, p.chosen, m.pair_template)
            return {k: index.setdefault(v, len(index)) for k, v in t.items()}

        ids = {name: [text_ids(p) for p in group] for name, group in (("seed", seed_set), ("test", test),
                                                                        ("pool", pool))}
        feats, row_of, enc, hit = self._features("lrhp", list(index), backbone, tokenizer, precision)

        def keep(group: str, pairs: list) -> tuple[list, dict[str, Any]]:
            kept = [(p, t) for p, t in zip(pairs, ids[group]) if all(i in row_of for i in t.values())]
            cols = {k: feats[[row_of[t[k]] for _, t in kept]] for k in (ids[group][0] if ids[group] else {})}
            return [p for p, _ in kept], cols

        seed_p, seed_f = keep("seed", seed_set)
        test_p, test_f = keep("test", test)
        pool_p, pool_f = keep("pool", pool)
        dropped = len(seed_set) + len(test) + len(pool) - len(seed_p) - len(test_p) - len(pool_p)
        if not test_p or len(pool_p) < 2 or ("pds" in m.stages and (not seed_p or len(pool_p) < m.select_size)):
            raise DataError(f"after dropping pairs longer than train.max_seq_len={cfg.train.max_seq_len} tokens, "
                            f"{len(seed_p)} seed, {len(test_p)} test and {len(pool_p)} pool pairs are left; raise "
                            "train.max_seq_len or load more pairs.")

        def enc_inputs(f: dict) -> tuple[tuple, tuple]:
            if m.encoder == "concat":
                return (f["wl"],), (f["lw"],)
            return (f["w"], f["l"]), (f["l"], f["w"])

        metrics: dict[str, Any] = {"train/total_params": total, "train/features_cached": int(hit),
                                   "train/pool_pairs": len(pool_p), "eval/target_test_pairs": len(test_p),
                                   "train/seed_pairs": len(seed_p), "train/dropped_pairs": dropped}

        # 1. the pair encoder, on both orders of every pool pair
        with torch.random.fork_rng():
            torch.manual_seed(int(cfg.seed))
            encoder = lrhp.PairEncoder(feats.shape[1], m.rep_dim, m.encoder, m.projection)

        def log_step(step: int, loss: float, lr: float) -> None:
            if step % max(cfg.train.logging_steps, 1) == 0:
                self.metrics.log({"train/encoder_loss": loss, "train/lr": lr}, step=step)

        wl, lw = enc_inputs(pool_f)
        losses = lrhp.train_pair_encoder(encoder, wl, lw, HeadOptim.from_cfg(cfg), "both", log_step)
        metrics.update({"train/encoder_loss": losses[-1], "train/encoder_loss_first": losses[0],
                        "train/steps": len(losses)})
        p_wl, p_lw = lrhp.preference_probs(encoder, *enc_inputs(test_f))
        metrics["eval/lrhp/pair_accuracy"] = float(((p_wl > 0.5).float() + (p_lw < 0.5).float()).mean() / 2)
        metrics["eval/lrhp/symmetry_gap"] = float((p_wl + p_lw - 1).abs().mean())
        self.run_dir.write_jsonl("predictions.jsonl", [
            {"id": p.id, "subset": p.subset, "p_chosen_first": round(float(a), 5), "p_rejected_first": round(float(b), 5),
             "correct": bool(a > 0.5 and b < 0.5)} for p, a, b in zip(test_p, p_wl, p_lw)])
        with torch.no_grad():
            z_pool = encoder.represent(*enc_inputs(pool_f)[0])
        heads = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
        trainable = sum(p.numel() for p in encoder.parameters())
        rm_opt = HeadOptim.from_cfg(cfg, seed_offset=1)

        def rm_acc(rows: Any, margins: Any = None) -> float:
            rm = lrhp.train_reward_model(pool_f["w"][rows], pool_f["l"][rows], rm_opt, margins)
            return lrhp.pairwise_accuracy(rm, test_f["w"], test_f["l"])

        # 2. preference data selection
        if "pds" in m.stages:
            with torch.no_grad():
                z_seed = encoder.represent(*enc_inputs(seed_f)[0])
            selected, scores = lrhp.SELECTORS[m.selection](z_pool, z_seed, m.select_size)
            gen = torch.Generator().manual_seed(int(cfg.seed))
            random_rows = torch.randperm(len(pool_p), generator=gen)[:m.select_size]
            is_target = torch.tensor([p.subset == m.target_subset for p in pool_p])
            acc_sel, acc_rand = rm_acc(selected), rm_acc(random_rows)
            metrics.update({"eval/pds/precision": lrhp.precision_at(selected, is_target),
                            "eval/pds/precision_random": lrhp.precision_at(random_rows, is_target),
                            "eval/pds/base_rate": float(is_target.float().mean()),
                            "eval/pds/rm_accuracy_selected": acc_sel, "eval/pds/rm_accuracy_random": acc_rand,
                            "eval/pds/rm_accuracy_gain": acc_sel - acc_rand,
                            "eval/pds/rm_accuracy_pool": rm_acc(torch.arange(len(pool_p)))})
            chosen, rand = set(selected.tolist()), set(random_rows.tolist())
            self.run_dir.write_jsonl("pds_selection.jsonl", [
                {"id": p.id, "subset": p.subset, "score": round(float(scores[i]), 5), "selected": i in chosen,
                 "random": i in rand} for i, p in enumerate(pool_p)])
            trainable += 3 * feats.shape[1]

        # 3. preference margin prediction
        if "pmp" in m.stages:
            gen = torch.Generator().manual_seed(int(cfg.seed) + 1)
            order = torch.randperm(len(pool_p), generator=gen)
            n_test = min(max(1, round(m.pmp_test_fraction * len(pool_p))), len(pool_p) - 1)
            te, tr = order[:n_test], order[n_test:]
            if m.margin_source == "data":
                missing = [p.id for p in pool_p if p.margin is None]
                if missing:
                    raise DataError(f"method.margin_source=data but {len(missing)} pool pairs have no 'margin' field "
                                    f"(first: id {missing[0]}); add margins or use method.margin_source=reward_model.")
                gold = torch.tensor([p.margin for p in pool_p], dtype=torch.float32)
            else:
                teacher = lrhp.train_reward_model(pool_f["w"][tr], pool_f["l"][tr], rm_opt)
                with torch.no_grad():
                    gold = teacher(pool_f["w"]) - teacher(pool_f["l"])
            head = lrhp.train_margin_head(z_pool[tr], gold[tr], HeadOptim.from_cfg(cfg, seed_offset=2),
                                          m.margin_hidden)
            with torch.no_grad():
                pred = head(z_pool)
            corr = lrhp.correlations(pred[te], gold[te])
            metrics.update({"eval/pmp/spearman": corr["spearman"], "eval/pmp/pearson": corr["pearson"],
                            "eval/pmp/test_pairs": len(te),
                            "eval/pmp/rm_accuracy_bt": rm_acc(tr),
                            "eval/pmp/rm_accuracy_margin": rm_acc(tr, pred[tr].detach())})
            self.run_dir.write_jsonl("pmp_predictions.jsonl", [
                {"id": pool_p[i].id, "gold_margin": round(float(gold[i]), 5), "predicted": round(float(pred[i]), 5)}
                for i in te.tolist()])
            heads.update({f"margin_head.{k}": v for k, v in head.state_dict().items()})
            trainable += sum(p.numel() for p in head.parameters()) + 2 * feats.shape[1]
        metrics.update({"train/trainable_params": trainable, "train/trainable_fraction": trainable / total})
        if self.run_dir.main:
            save_file({k: v.detach().contiguous() for k, v in heads.items()}, str(self.run_dir / "heads.safetensors"),
                      metadata={"encoder": m.encoder, "pooling": m.pooling})
        return metrics
