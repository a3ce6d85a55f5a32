"""The migration workflow as library functions; ``embedmigrate.cli`` only wraps them.

    plan(source, to_model, ...)   inspect the source, write a commented plan file
    train(plan)                   sample, encode, fit and save the translator
    dry_run(plan)                 quality report on a sample; writes no database
    apply(plan)                   streamed rewrite -> verify -> gate -> cutover
    rollback(plan), cleanup(plan) undo the cutover; drop what is no longer needed
    run(plan)                     advance a scheduled job by one idempotent step
    status(plan)                  where a job stands

Each returns a JSON-serialisable dict (what ``--json`` prints). Nothing touches
the source collection except reads, until an explicit cutover. Each runs in one
``job.Job`` (plan, state, lock, transform), which opens the source and the target
once and closes them when the command ends.
"""

from __future__ import annotations

import functools
import json
import re
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import metrics, parallel
from .connectors import Batch, open_collection, parse_uri
from .errors import ConflictError, DataError, NotFoundError, UsageError
from .job import Job, job_of
from .plan import Plan, has_labels, load_plan
from .state import JobState, RunLock
from .translators import Translator, make_translator

DEFAULT_PAIRS = 2000
DEFAULT_SAMPLE = 20000


# --- plan ---------------------------------------------------------------------------

def plan(source: str, to_model: str, *, output="plan.toml", texts: str = "", text_column: str = "",
         text_field: str | None = None, from_model: str = "", target: str = "", live_name: str = "",
         method: str = "auto", sample_old: int | None = None, sample_new: int | None = None,
         pairs: int | None = None, queries: str = "", checkpoint: str = "", qrels: str = "",
         group_field: str = "", baseline: str = "today", strategy: str = "auto") -> dict:
    """Inspect the source and write a plan file. Returns the plan and its estimates.

    Evidence for the gate: ``queries`` (+ ``qrels``, BEIR layout) are labelled
    queries; ``group_field`` names the payload field whose points are siblings.
    Without either, a field that looks like a grouping is proposed (commented
    out) in the plan."""
    src_uri = parse_uri(source)
    with open_collection(src_uri) as src:  # closed when the plan is written, or on an error
        return _plan(src_uri, src, to_model, output=output, texts=texts, text_column=text_column,
                     text_field=text_field, from_model=from_model, target=target,
                     live_name=live_name, method=method, sample_old=sample_old,
                     sample_new=sample_new, pairs=pairs, queries=queries, checkpoint=checkpoint,
                     qrels=qrels, group_field=group_field, baseline=baseline, strategy=strategy)


def _plan(src_uri, src, to_model: str, *, output, texts, text_column, text_field, from_model,
          target, live_name, method, sample_old, sample_new, pairs, queries, checkpoint, qrels,
          group_field, baseline, strategy) -> dict:
    from .encoders import open_encoder

    info = src.describe()
    if info.count == 0:
        raise DataError(f"source collection '{src_uri.collection}' is empty",
                        "point the plan at a collection that holds vectors")
    field = _choose_text_field(info, text_field)
    if strategy in ("reembed", "hybrid") and not field:
        raise UsageError(f"--strategy {strategy} encodes each point's stored text, but the source "
                         "has no text field", "pass --text-field NAME (the field that holds each "
                         "point's text), or --strategy translate")
    if not texts and not field:
        raise UsageError("no texts for the new model: the source stores no text field and no "
                         "--texts file was given", "pass --texts FILE (one text per line, .jsonl, "
                         ".csv or .parquet) or --text-field NAME")
    encoder = open_encoder(to_model)
    speed = _encode_speed(encoder)
    n_old = min(info.count, sample_old or DEFAULT_SAMPLE)
    n_pairs = min(n_old, DEFAULT_PAIRS if pairs is None else pairs) if field else 0
    holdout = min(500, n_pairs // 5) if n_pairs >= 50 else 0
    n_new = 0
    if texts:
        from .texts import count_texts
        n_new = min(count_texts(texts, text_column), sample_new or DEFAULT_SAMPLE)
    slug = _slug(to_model)
    target_name = target or f"{src_uri.collection}__{slug}"
    target_uri = src_uri.with_collection(target_name)
    p = Plan()
    p.source.uri = src_uri.without_password()
    p.source.count, p.source.dim, p.source.metric = info.count, info.dim, info.metric
    p.source.text_field = field or ""
    p.target.uri = target_uri.without_password()
    p.target.live_name = live_name or _default_live_name(src_uri, info)
    p.model.new, p.model.old = to_model, from_model
    p.sample.old, p.sample.new, p.sample.pairs, p.sample.holdout = n_old, n_new, n_pairs, holdout
    p.sample.texts = str(Path(texts).resolve()) if texts else ""
    p.sample.text_column = text_column
    p.train.method = method
    p.train.checkpoint = checkpoint or f"checkpoints/{src_uri.collection}-to-{slug}"
    p.gate.sample = min(info.count, 2000)
    p.gate.queries = str(Path(queries).resolve()) if queries else ""
    p.gate.qrels = str(Path(qrels).resolve()) if qrels else ""
    p.gate.group_field, p.gate.baseline = group_field, baseline
    evidence_found = _check_evidence_inputs(p, src, info)
    if not group_field and not evidence_found.get("labels"):
        p.group_proposal = evidence_found.get("proposal") or {}
    n_weak = n_new if from_model and not n_pairs else 0  # train encodes these with the old model too
    p.estimate = estimate(info.count, info.dim, encoder.dim, n_old, n_pairs + n_new, speed, method,
                          n_pairs, n_weak, _encode_speed(open_encoder(from_model)) if n_weak else None)
    p.strategy.name = strategy
    p.strategy.reason = resolve_strategy(p)[1]
    decision = plan_decision(p, src, info, encoder)
    from .plan import validate
    validate(p, str(output))  # before writing: a bad plan leaves no file behind
    out = p.write(output)
    return {"plan": str(out), "source": info.to_dict(), "target": p.target.uri,
            "evidence": evidence_found.get("kind", "none"),
            "group_field_proposed": p.group_proposal or None,
            "live_name": p.target.live_name, "new_model": to_model, "new_dim": encoder.dim,
            "sample": p.to_dict()["sample"], "method": method, "estimate": p.estimate,
            "strategy": strategy, "strategy_resolved": resolve_strategy(p)[0],
            "strategy_reason": p.strategy.reason, "decision": decision,
            "cutover": _cutover_description(src_uri.engine, p.target.live_name, target_name)}


def _check_evidence_inputs(p: Plan, src, info) -> dict:
    """Read and check the gate's evidence before the plan is written: labels must
    name points of the collection; a group field must exist and hold a group of 2.
    Proposes a group field when none is given. Returns what was found."""
    from . import evidence as E
    found: dict = {"kind": E.NONE}
    sample = src.sample(min(info.count, 2000), seed=p.sample.seed)
    if p.gate.queries:
        from .texts import read_records
        read_records(p.gate.queries)  # a bad file is refused before the plan is written
        if has_labels(p):
            if p.gate.baseline == "today" and not p.model.old:
                raise UsageError("labelled queries need the old model to search today's index",
                                 "pass --from-model OLD_MODEL, or --baseline none if the old model "
                                 "is being retired")
            labelled = E.read_labelled_queries(p.gate.queries, p.gate.qrels or None)
            E.labelled_eval_set(src, labelled, sample.__class__([], sample.vectors[:0], []),
                                p.source.text_field)  # raises if a corpus-id is not in the collection
            found.update(kind=E.LABELS, labels=len(labelled.ids))
    elif p.gate.qrels:
        raise UsageError("--qrels needs --queries", "pass the BEIR queries.jsonl with --queries")
    fields = sorted({k for pl in sample.payloads if isinstance(pl, dict) for k in pl})
    if p.gate.group_field:
        if p.gate.group_field not in fields and p.gate.group_field not in info.payload_fields:
            raise NotFoundError(f"the source has no field '{p.gate.group_field}'",
                                "pass --group-field with one of: " + (", ".join(fields) or "(none)"))
        stats = E.group_statistics(sample.payloads, p.gate.group_field)
        if stats["groups_of_2_or_more"] == 0:  # the sample may miss siblings: read whole groups
            E.sibling_eval_set(src, p.gate.group_field, sample, batch_size=p.apply.batch_size)
        if found["kind"] == E.NONE:
            found["kind"] = E.SIBLINGS
    else:
        exclude = (p.source.text_field,) if p.source.text_field else ()
        proposal = E.propose_group_field(sample.payloads, fields, exclude=exclude)
        if proposal:
            found["proposal"] = {"field": proposal[0], "stats": proposal[1]}
    return found


def _choose_text_field(info, requested: str | None) -> str | None:
    if requested == "":
        return None
    if requested:
        if requested not in info.text_fields and requested not in info.payload_fields:
            raise NotFoundError(f"the source has no field '{requested}'",
                                "use one of: " + ", ".join(info.text_fields or info.payload_fields
                                                          or ["(none)"]))
        return requested
    for name in ("document", "text", "content", "body", "chunk", "page_content"):
        if name in info.text_fields:
            return name
    return None


def _default_live_name(uri, info) -> str:
    from .connectors import connector_class
    return connector_class(uri.engine).default_live_name(uri, info)


def _cutover_description(engine: str, live: str, target: str) -> str:
    from .connectors import connector_class
    return connector_class(engine).cutover_description(live, target)


def _slug(spec: str) -> str:
    base = re.split(r"[?#]", spec)[0].rstrip("/").split("/")[-1].split(":")[-1]
    return re.sub(r"[^a-zA-Z0-9]+", "-", base).strip("-").lower()[:40] or "new"


def _encode_speed(encoder) -> float | None:
    """Texts per second on this machine; None for precomputed vectors (a lookup,
    which holds no probe sentence)."""
    from .encoders import ArrayEncoder
    if isinstance(encoder, ArrayEncoder):
        return None
    probe = ["a short probe sentence to time the encoder"] * 16
    encoder.encode(probe[:1])  # loads the model: timing the load made estimates 10-30x too high
    start = time.perf_counter()
    encoder.encode(probe)
    return 16 / max(time.perf_counter() - start, 1e-6)


FIT_SECONDS_PER_10K = {"linear": 75.0, "vec2vec": 1800.0, "mlp": 60.0, "semi": 30.0}


def estimate(count: int, old_dim: int, new_dim: int, n_old: int, n_texts: int,
             texts_per_s: float | None, method: str, n_pairs: int, weak_pairs: int = 0,
             old_texts_per_s: float | None = None) -> dict:
    """Rough time / memory / disk figures for the plan (CPU measured by a probe; GPU assumed).
    ``weak_pairs``: fresh texts that train also encodes with the old model (no stored
    texts, the old model named): old-model encoding time (at ``old_texts_per_s``, the
    new model's speed when unknown), and pairs for the method ``auto`` will pick."""
    encode_s = 0.0 if texts_per_s is None else n_texts / max(texts_per_s, 1e-6)
    old_speed = old_texts_per_s or texts_per_s
    if weak_pairs and old_speed:
        encode_s += weak_pairs / max(old_speed, 1e-6)
    held = min(WEAK_HOLDOUT, weak_pairs // 5) if weak_pairs >= 50 else 0  # as _add_weak_pairs
    n_pairs = n_pairs + weak_pairs - held
    eff = method if method != "auto" else ("procrustes" if n_pairs >= 1000 else "semi" if n_pairs else "linear")
    fit_s = FIT_SECONDS_PER_10K.get(eff, 5.0) * max(n_old, 10000) / 10000
    apply_rate = 3000.0  # vectors/s, conservative; see docs/benchmarks.md per engine
    bytes_per_vec = 4 * new_dim
    speed = "precomputed" if texts_per_s is None else round(texts_per_s, 1)
    return {
        "encode_texts": n_texts, "encoder_texts_per_s_cpu": speed,
        "train_minutes_cpu": round((encode_s + fit_s) / 60, 1),
        "train_minutes_gpu_estimate": round((encode_s / 20 + fit_s / 10) / 60, 1),
        "apply_minutes": round(count / apply_rate / 60, 1),
        "train_memory_mb": round((n_old * old_dim + (n_texts + n_old) * new_dim) * 4 * 4 / 2**20),
        "target_disk_mb": round(count * bytes_per_vec * 1.5 / 2**20),
        "method_expected": eff,
        "encode_texts_old_model": weak_pairs,
    }


# --- train --------------------------------------------------------------------------

def train(plan: Plan | str, *, progress: bool = True, retrain: bool = False) -> dict:
    with Job(plan, lock=True) as job:
        return _train(job, progress=progress, retrain=retrain)


def _train(job: Job, *, progress: bool, retrain: bool) -> dict:
    plan, state = job.plan, job.state
    if state.reached("trained") and not retrain and (plan.checkpoint_dir / "translator.json").exists():
        return {"stage": state.stage, "checkpoint": str(plan.checkpoint_dir),
                "metrics": state.get("train_metrics", {}), "skipped": "already trained (--retrain to redo)"}
    data = training_data(job, progress=progress)
    job.heartbeat()
    options = dict(plan.train.options)
    if plan.train.method in ("vec2vec",) and "checkpoint_dir" not in options:
        options["checkpoint_dir"] = str(plan.state_dir / "vec2vec-train")
    translator = make_translator(plan.train.method, **options)
    start = time.perf_counter()
    translator.fit(data["old"], data["new"], pairs=data["pairs"])
    fit_seconds = time.perf_counter() - start
    scores = training_metrics(translator, data)
    scores["fit_seconds"] = round(fit_seconds, 2)
    pairs_used = 0 if data["pairs"] is None else len(data["pairs"][0])
    translator.meta.update({"old_model": plan.model.old or "(unknown, from the source)",
                            "new_model": plan.model.new, "source": plan.source.uri,
                            "metrics": scores, "pairs_used": pairs_used,
                            "pairs_source": data["pairs_source"]})
    translator.save(plan.checkpoint_dir)
    _save_eval_data(plan, data)
    state.update(stage="trained", checkpoint=str(plan.checkpoint_dir), train_metrics=scores,
                 method=translator.meta.get("auto_choice", {}).get("method", translator.method))
    return {"stage": "trained", "checkpoint": str(plan.checkpoint_dir), "method": translator.method,
            "selection": translator.meta.get("selection"), "confidence": translator.meta.get("confidence"),
            "auto_choice": translator.meta.get("auto_choice"), "metrics": scores,
            "pairs_used": pairs_used, "pairs_source": data["pairs_source"]}


def training_data(plan: Plan | Job, *, progress: bool = True) -> dict:
    """Sample the source, encode the text sample with the new model (cached on disk).
    Pairs come from the source's stored texts; failing those, from the fresh
    texts encoded by the old model too, when the plan names it (weak pairs)."""
    with job_of(plan) as job:
        return _training_data(job, progress=progress)


def _training_data(job: Job, *, progress: bool) -> dict:
    from .encoders import encode_cached, open_encoder

    plan, src = job.plan, job.source
    info = src.describe()
    _check_source_unchanged(plan, info)
    sample = src.sample(plan.sample.old, seed=plan.sample.seed)
    if len(sample) < 2:
        raise DataError(f"sampled {len(sample)} vectors from the source", "the source needs at least "
                        "2 points; check [source] uri")
    cache = plan.state_dir / "cache"
    encoder = None
    paired_idx = np.zeros(0, dtype=np.int64)
    paired_new = np.zeros((0, 0), np.float32)
    if plan.sample.pairs and plan.source.text_field:
        texts = sample.texts(plan.source.text_field)
        has_text = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
        paired_idx = np.asarray(has_text[: plan.sample.pairs], dtype=np.int64)
        if len(paired_idx) == 0:
            raise DataError(f"none of the sampled points has text in '{plan.source.text_field}'",
                            "set [source] text_field to a field that holds text, or pairs = 0")
        encoder = open_encoder(plan.model.new)
        paired_new = encode_cached(encoder, [texts[i] for i in paired_idx], cache,
                                   show_progress=progress)
    unpaired_new = np.zeros((0, paired_new.shape[1] if paired_new.size else 0), np.float32)
    fresh = []
    weak = not len(paired_idx) and plan.model.old and plan.sample.texts and plan.sample.new
    old_encoder = _old_model_encoder(plan, info.dim) if weak else None  # fail before encoding
    if plan.sample.texts and plan.sample.new:
        from .texts import read_texts
        encoder = encoder or open_encoder(plan.model.new)
        fresh = read_texts(plan.sample.texts, column=plan.sample.text_column or None,
                           limit=plan.sample.new, seed=plan.sample.seed)
        unpaired_new = encode_cached(encoder, fresh, cache, show_progress=progress)
    if len(paired_new) + len(unpaired_new) < 2:
        raise DataError("the new-model sample is empty", "give --texts FILE with texts, or a source "
                        "text_field, and sample.new / sample.pairs > 0")
    holdout = min(plan.sample.holdout, len(paired_idx))
    hold_idx, train_idx = paired_idx[:holdout], paired_idx[holdout:]
    keep = np.ones(len(sample), bool)
    keep[hold_idx] = False  # held-out points are never trained on, on either side
    old = sample.vectors[keep]
    new_parts = [paired_new[holdout:], unpaired_new] if len(unpaired_new) else [paired_new[holdout:]]
    new = np.concatenate([p for p in new_parts if len(p)]) if any(len(p) for p in new_parts) else paired_new
    pairs = (sample.vectors[train_idx], paired_new[holdout:]) if len(train_idx) else None
    data = {"old": old, "new": new, "pairs": pairs,
            "holdout": (sample.vectors[hold_idx], paired_new[:holdout]) if holdout else None,
            "holdout_ids": [sample.ids[i] for i in hold_idx], "metric": info.metric,
            "pairs_source": "stored texts" if pairs is not None else "none", "weak_holdout": None}
    if old_encoder is not None and len(fresh):
        _add_weak_pairs(data, plan, old_encoder, fresh, unpaired_new, progress)
    return data


WEAK_HOLDOUT = 500  # weak pairs kept back to score the fit (train metrics only)


def _old_model_encoder(plan: Plan, source_dim: int):
    """The plan's [model] old, opened and checked against the source's dimension."""
    from .encoders import open_encoder

    encoder = open_encoder(plan.model.old)
    if encoder.dim != source_dim:
        raise DataError(f"the old model '{plan.model.old}' makes {encoder.dim}-d vectors, the "
                        f"source holds {source_dim}-d ones: it is not the model that wrote them",
                        "set [model] old in the plan to the collection's model, or clear it")
    return encoder


def _add_weak_pairs(data: dict, plan: Plan, old_encoder, fresh: list, fresh_new: np.ndarray,
                    progress: bool) -> None:
    """Weak pairs: the fresh texts encoded by the old model too (issue #13). The
    collection stores no texts, but when the model that wrote it can still be
    called, every fresh text becomes a pair, which beats any unsupervised
    alignment across model families. A few are held back for the train metrics
    only: they have no ids in the source, so the quality gate never sees them."""
    from .encoders import encode_cached

    fresh_old = encode_cached(old_encoder, fresh, plan.state_dir / "cache", show_progress=progress)
    n_hold = min(WEAK_HOLDOUT, len(fresh) // 5) if len(fresh) >= 50 else 0
    data["pairs"] = (fresh_old[n_hold:], fresh_new[n_hold:])
    data["weak_holdout"] = (fresh_old[:n_hold], fresh_new[:n_hold]) if n_hold else None
    data["pairs_source"] = "old model"


EVAL_FILE = "eval.npz"


def _save_eval_data(plan: Plan, data: dict) -> None:
    """What the quality gate needs from training (held-out pairs, the new-model
    sample), kept so dry runs and verify do not sample and encode again."""
    from . import files
    from .state import STATE_ELSEWHERE

    path = plan.state_dir / EVAL_FILE  # with the job, not in cache/ (cleanup clears that)
    arrays = {"new": data["new"], "holdout_ids": np.asarray([str(i) for i in data["holdout_ids"]])}
    if data["holdout"] is not None:
        arrays["holdout_old"], arrays["holdout_new"] = data["holdout"]
    files.atomic_write_with(path, lambda fh: np.savez(fh, **arrays), elsewhere=STATE_ELSEWHERE)


def _load_eval_data(plan: Plan) -> dict | None:
    has_texts = (plan.sample.pairs and plan.source.text_field) or (plan.sample.texts and plan.sample.new)
    if not has_texts:
        return None
    path = plan.state_dir / EVAL_FILE
    if not path.exists():
        path = plan.state_dir / "cache" / EVAL_FILE  # where jobs trained before kept it
    if not path.exists():
        # drawing "held-out" pairs again could pick rows the translator was trained on:
        # measure without them (retrain to get them back)
        return None
    with np.load(path, allow_pickle=False) as z:
        held = (z["holdout_old"], z["holdout_new"]) if "holdout_old" in z else None
        return {"new": z["new"], "holdout": held, "holdout_ids": z["holdout_ids"].tolist()}


def training_metrics(translator: Translator, data: dict) -> dict:
    old = data["old"]
    some = old[: min(len(old), 4000)]
    translated = translator.translate(some)
    scores = {"neighbourhood_overlap@10": round(metrics.neighbourhood_overlap(some, translated, 10,
                                                                             data["metric"]), 4),
              "cycle_error": round(metrics.cycle_error(translator, some), 4)}
    held = data["holdout"] if data["holdout"] is not None else data.get("weak_holdout")
    if held is not None:
        ho, hn = held
        pred = translator.translate(ho)
        ranks = metrics.rank_metrics(pred, hn, chunk=8192)
        if data["holdout"] is None:
            scores["holdout_source"] = "old model (weak pairs)"
        scores.update({"holdout_pairs": len(ho), "holdout_mean_cosine": round(metrics.mean_cosine(pred, hn), 4),
                       "holdout_top1": round(ranks["top1"], 4), "holdout_mean_rank": round(ranks["mean_rank"], 3),
                       "holdout_recall@10_retained": round(metrics.recall_retained(hn, pred, hn, 10), 4)})
    return scores


def _check_source_unchanged(plan: Plan, info) -> None:
    if info.dim != plan.source.dim:
        raise DataError(f"the source now has dimension {info.dim}, the plan says {plan.source.dim}",
                        "re-run embedmigrate plan for this collection")
    if info.count == 0:
        raise DataError("the source collection is empty", "check [source] uri")


def _load_translator(plan: Plan, info=None) -> Translator:
    if not (plan.checkpoint_dir / "translator.json").exists():
        raise NotFoundError(f"no trained translator at {plan.checkpoint_dir}",
                            f"run: embedmigrate train {plan.path}")
    translator = Translator.load(plan.checkpoint_dir)
    if info is not None and translator.old_dim != info.dim:
        raise DataError(f"the translator expects dimension {translator.old_dim}, the source has "
                        f"{info.dim}", "retrain with embedmigrate train --retrain")
    return translator


# --- dry run: the quality report ------------------------------------------------------

def dry_run(plan: Plan | str, *, out_dir=None, progress: bool = True):
    """The quality report on a sample of the source. Writes no database."""
    with Job(plan) as job:
        return _dry_run(job, out_dir=out_dir, progress=progress)


def _dry_run(job: Job, *, out_dir, progress: bool):
    plan, src = job.plan, job.source
    info = src.describe()
    translator = _load_translator(plan, info)
    sample = src.sample(plan.gate.sample, seed=plan.sample.seed + 1)
    report = _evaluate(job, translator, sample, info, progress=progress)
    paths = report.write(Path(out_dir) if out_dir else plan.state_dir / "report")
    state = job.state
    state.update(last_report=str(paths.get("html")), last_verdict=report.verdict)
    if not state.get("apply_started") and report.decision:  # what an `auto` strategy will follow
        state.update(recommendation=report.decision.get("recommendation"),
                     recommendation_reason=report.decision.get("reason"))
    return report, paths


def _evaluate(job: Job, translator: Translator, sample: Batch, info, written: Batch | None = None,
              target=None, progress: bool = False):
    """Every check the data allows, and the evidence: search quality of today's
    index, the migrated one and a full re-embed on labelled queries or sibling
    chunks. ``target``: the written collection (verify), searched as it is."""
    from .gate import Thresholds, evaluate
    plan = job.plan
    thresholds = Thresholds.from_dict(plan.gate.thresholds)
    data = _load_eval_data(plan)
    held_out = data["holdout"] if data else None
    q_new = q_old = None
    if plan.gate.queries:
        # query texts feed the agreement checks; their labels feed the evidence
        q_new, q_old, _ = _query_vectors(plan, data["holdout_ids"] if held_out else sample.ids)
    summary, decision = gather_evidence(plan, translator, sample, info, target=target,
                                        progress=progress, source=job.source)
    report = evaluate(translator, sample.vectors, metric=info.metric, held_out_pairs=held_out,
                      queries_new=q_new, queries_old=q_old, relevant=None,
                      new_sample=data["new"] if data else None, thresholds=thresholds,
                      cost=dict(plan.estimate), evidence=summary, decision=decision)
    if written is not None:
        from .transform import expected_vectors
        strategy = resolve_strategy(plan)[0]
        expected = expected_vectors(job.transform, sample, written)
        _add_written_check(report, expected, written.vectors,
                           "translation" if strategy == "translate" else
                           "encoding of their stored text (or translation, per provenance)")
    return report


def gather_evidence(plan: Plan, translator: Translator, sample: Batch, info, *, target=None,
                    progress: bool = False, source=None) -> tuple[dict, dict]:
    """(evidence summary, decision) for the report: the evaluation set is built
    from labelled queries or sibling chunks, encoded for every road, measured.
    ``source``: the job's source connector (else one is opened for the call)."""
    from . import evidence as E
    from .encoders import open_encoder
    src = source or open_collection(plan.source.uri)
    try:
        if has_labels(plan):
            labelled = E.read_labelled_queries(plan.resolve_path(plan.gate.queries),
                                               plan.resolve_path(plan.gate.qrels) if plan.gate.qrels else None)
            es = E.labelled_eval_set(src, labelled, sample, plan.source.text_field)
        elif plan.gate.group_field:
            bar = tqdm(total=info.count, unit="pt", desc="reading sibling groups", disable=not progress)
            try:
                es = E.sibling_eval_set(src, plan.gate.group_field, sample, plan.source.text_field,
                                        batch_size=plan.apply.batch_size, seed=plan.sample.seed,
                                        progress=bar.update)
            finally:
                bar.close()
        else:
            summary = E.no_evidence()
            return summary, E.decide(summary, None, count=info.count, baseline=plan.gate.baseline)
    finally:
        if source is None:
            src.close()
    if es.kind == E.LABELS and not plan.model.old and plan.gate.baseline == "today":
        raise UsageError("labelled queries need the old model to search today's index",
                         "set [model] old (--from-model), or [gate] baseline = \"none\"")
    old_encoder = open_encoder(plan.model.old) if plan.model.old else None
    enc = E.encode_for_roads(es, translator, open_encoder(plan.model.new), old_encoder,
                             plan.state_dir / "cache")
    migrated = _migrated_road(plan)
    if target is not None:
        written = target.fetch(list(es.doc_ids))
        by_id = {str(i): k for k, i in enumerate(written.ids)}
        if all(str(i) in by_id for i in es.doc_ids):
            enc.docs_written = written.vectors[[by_id[str(i)] for i in es.doc_ids]]
            migrated = "written"
    roads = E.measure_roads(es, enc, translator, metric=info.metric, seed=plan.sample.seed)
    summary = E.summarise(es, enc, roads, baseline=plan.gate.baseline, migrated=migrated,
                          seed=plan.sample.seed)
    return summary, E.decide(summary, enc, count=info.count, baseline=plan.gate.baseline)


def _migrated_road(plan: Plan) -> str:
    """Which road the target will hold: native encodings (reembed), else the
    translation (hybrid cuts over its translation first)."""
    return "reembed" if resolve_strategy(plan)[0] == "reembed" else "translate"


def _query_vectors(plan: Plan, doc_ids: list):
    """Query texts encoded by both models (old side only when model.old is set);
    relevance labels (index into ``doc_ids``, -1 for none) when the query file has doc_id."""
    from .encoders import encode_cached, open_encoder
    from .texts import read_records
    records = read_records(plan.gate.queries)
    texts = [r["text"] for r in records]
    cache = plan.state_dir / "cache"
    q_new = encode_cached(open_encoder(plan.model.new), texts, cache, kind="query")
    q_old = encode_cached(open_encoder(plan.model.old), texts, cache, kind="query") if plan.model.old else None
    relevant = None
    if records and all("doc_id" in r for r in records):
        pos = {str(i): k for k, i in enumerate(doc_ids)}
        relevant = np.asarray([pos.get(str(r["doc_id"]), -1) for r in records])
    return q_new, q_old, relevant


def _add_written_check(report, expected: np.ndarray, written: np.ndarray,
                       what: str = "translation") -> None:
    """The target holds what the translator produces for those ids (catches a
    write path that mangles vectors). A zero vector written as zero matches: its
    cosine is undefined, not a mismatch."""
    both_zero = (np.linalg.norm(written, axis=1) < 1e-12) & (np.linalg.norm(expected, axis=1) < 1e-12)
    rows = np.sum(metrics.normalise(written) * metrics.normalise(expected), axis=1)
    cos = float(np.mean(np.where(both_zero, 1.0, rows))) if len(rows) else 1.0
    report.add_check("written_matches_translation", round(cos, 6), {"fail_below": 0.999}, cos >= 0.999,
                     f"mean cosine between the vectors in the target and the {what} of "
                     "their source points")


# --- apply ------------------------------------------------------------------------

def apply(plan: Plan | str, *, force: bool = False, progress: bool = True, cutover: bool = True,
          workers: int | None = None, executor: str | None = None, budget=None) -> dict:
    """Rewrite, verify, gate and (on PASS or ``force``) cut over. Resumable and idempotent.
    ``workers`` and ``executor`` ("local" threads or "ray") override the plan's [apply];
    ``budget`` (``transform.Budget``) stops the rewrite early, resumably."""
    with Job(plan, lock=True) as job:
        plan, state = job.plan, job.state
        if state.stage == "cut_over":  # idempotent: a second apply must not rewrite the live target
            return {"stage": "cut_over", "cutover": "already done", "record": state.get("cutover"),
                    "verdict": state.get("last_verdict"), "written": state.get("written"),
                    "target": plan.target.uri}
        # scan -> transform -> write, part by part
        result = rewrite(job, progress=progress, workers=workers, executor=executor,
                         budget=as_budget(plan, budget))
        if result.get("budget_exhausted"):  # not finished: nothing to verify yet
            return result
        # ids and counts, then the quality gate
        result.update(verify(job, progress=progress, with_report=True))
        report = result.pop("_report")
        if cutover and (result["verdict"] == "PASS" or force):
            result.update(do_cutover(job, forced=result["verdict"] != "PASS"))
            report.cutover = {"status": "done", "forced": result["forced"], "verdict": result["verdict"]}
        elif cutover:
            result["cutover"] = "blocked by the quality gate (re-run with --force to override)"
            report.cutover = {"status": "blocked by the quality gate", "verdict": result["verdict"]}
        else:
            report.cutover = {"status": "not requested (--no-cutover)"}
        report.write(plan.state_dir / "report")  # the report says what happened to the cutover
        return result


def cutover(plan: Plan | str, *, force: bool = False) -> dict:
    """Cut over a verified target (the gate said PASS); ``force`` overrides a
    WARN or FAIL verdict, and the job records that it did."""
    with Job(plan, lock=True) as job:
        plan, state = job.plan, job.state
        if state.stage == "cut_over":
            return {"cutover": "already done", "record": state.get("cutover")}
        if state.stage not in ("applied", "verified", "rolled_back"):
            raise UsageError(f"nothing to cut over: the job is at stage '{state.stage}'",
                             f"run: embedmigrate apply {plan.path}")
        verdict = state.get("last_verdict")
        if state.stage != "verified" and not force:
            raise ConflictError(f"the quality gate said {verdict or 'nothing yet'}, not PASS",
                                "fix the migration, or cut over anyway with --force")
        return do_cutover(job, forced=verdict != "PASS")


def rewrite(plan: Plan | Job, lock: RunLock | None = None, *, progress: bool = True,
            workers: int | None = None, executor: str | None = None, budget=None) -> dict:
    """scan -> transform (translate or re-embed, the plan's strategy) -> write over the
    source's parts, progress persisted after every batch. ``workers``/``executor``
    override the plan's [apply] for this run; ``budget`` stops it early, resumably.
    ``plan``: a Plan (the job's lock is taken unless ``lock`` is held) or the running Job."""
    with job_of(plan, lock or True) as job:
        return _rewrite(job, progress=progress, workers=workers, executor=executor, budget=budget)


def _rewrite(job: Job, *, progress: bool, workers: int | None, executor: str | None,
             budget) -> dict:
    from .transform import PROVENANCE_KEYS, Budget
    plan, state, lock = job.plan, job.state, job.lock
    if state.reached("trained") and not state.get("apply_started"):
        _fix_strategy(plan, state, job.source, progress=progress)
    strategy = resolve_strategy(plan)[0]
    if not state.reached("trained"):
        _train_for_reembed(job, strategy, progress=progress)
    kind = executor or plan.apply.executor
    if kind == "ray":
        parallel.check_ray_reachable(plan.source.uri, plan.target.uri)
    src = job.source
    info = src.describe()
    _check_source_unchanged(plan, info)
    transform = job.transform
    if strategy == "reembed" and not state.get("apply_started"):
        _check_source_has_texts(plan, src)
    dst = job.target
    started = state.get("apply_started", False)
    _create_target(state, dst, info, transform.new_dim, plan.apply.if_exists, started)
    if strategy != "translate":
        dst.add_text_fields(PROVENANCE_KEYS)
    n_workers = workers or plan.apply.workers
    if not started or not state.get("parts"):
        parts = _initial_parts(state, src, plan.apply.parts or _auto_parts(src, info.count, n_workers))
        state.update(stage="applying", apply_started=True, creating_target=False, parts=parts,
                     source_count_at_start=info.count, **_totals(parts, state))
    parts = state.get("parts")
    jobs = [parallel.PartJob(k, p["part"], p["cursor"]) for k, p in enumerate(parts) if not p["done"]]
    bar = tqdm(total=info.count, initial=min(state.get("written", 0), info.count), unit="vec",
               desc=f"{'re-embed' if strategy == 'reembed' else 'apply'} ({n_workers} worker"
                    f"{'s' * (n_workers > 1)})", disable=not progress, smoothing=0.1)
    runner = parallel.make_executor(kind, n_workers, plan.apply.ray_address)
    budget = budget if budget is not None else Budget()  # catch-up: no limit

    def on_batch(part, event):
        part["cursor"], n, h = event[:3]
        part["written"] += n
        part["id_hash"] = (part["id_hash"] + h) % (1 << 64)
        counts = event[3] if len(event) > 3 else {}
        _add_counts(part, counts)
        budget.add(n, counts.get("tokens", 0))
        bar.update(n)
    try:
        copier = runner.start(plan.source.uri, plan.target.uri, transform, plan.checkpoint_dir,
                              plan.apply.batch_size)
        stopped = _drive_parts(
            parts, jobs, runner, copier, on_batch, lock, budget,
            save=lambda: state.update(parts=parts, **_totals(parts, state), **_count_totals(parts)))
    finally:
        bar.close()
        runner.close()
    if stopped:
        return _budget_stop(plan, state, stopped, budget, info.count)
    dst.finish_write()
    state.update(stage="applied")
    return {"stage": "applied", "written": state.get("written"), "target": plan.target.uri,
            "parts": len(parts), "workers": n_workers, "executor": kind, "strategy": strategy,
            **_count_totals(parts)}


def _drive_parts(parts: list[dict], jobs: list, runner, copier, on_batch, lock: RunLock | None,
                 budget=None, *, save) -> str | None:
    """The one copy loop of apply, catch-up and hybrid passes: run the parts' jobs,
    ``on_batch(part, event)`` for each written batch, ``save()`` after every event, so a
    kill loses at most the batch in flight. Returns the budget limit that stopped it
    early, or None when every part is done."""
    started_at = time.monotonic()
    for index, event in parallel.run_parts(jobs, runner, copier):
        if event == parallel.DONE:
            parts[index]["done"] = True
        else:
            on_batch(parts[index], event)
        save()
        if lock is not None:
            lock.heartbeat()
        stopped = budget.exhausted(time.monotonic() - started_at) if budget is not None else None
        if stopped and not all(p["done"] for p in parts):
            return stopped
    return None


def _create_target(state: JobState, dst, info, dim: int, if_exists: str, started: bool) -> None:
    """Create the target, or keep it when an earlier attempt created it: a run killed
    right after create_like must not meet its own target as a conflict."""
    if started or state.get("creating_target"):
        dst.create_like(info, dim=dim, if_exists="resume")
        return
    state.update(creating_target=True)
    try:
        dst.create_like(info, dim=dim, if_exists=if_exists)
    except ConflictError:  # the user's collection, not ours: the next run must refuse it too
        state.update(creating_target=False)
        raise


def _auto_parts(src, count: int, workers: int) -> int:
    """Enough parts for any later number of workers to share, none tiny; one per
    worker where the engine pays for each part (``Connector.cheap_parts``)."""
    if not src.cheap_parts:
        return max(1, min(workers, count // 5000))
    return max(1, min(64, max(4 * workers, 16), count // 5000))


def _initial_parts(state: JobState, src, n: int) -> list[dict]:
    if state.get("apply_started"):  # a job started before parts existed: one part, its cursor
        return [{"part": None, "cursor": state.get("cursor"), "written": state.get("written", 0),
                 "id_hash": state.get("id_hash", 0), "done": False}]
    return [{"part": p, "cursor": None, "written": 0, "id_hash": 0, "done": False}
            for p in src.partitions(n)]


def _totals(parts: list[dict], state: JobState) -> dict:
    """Job totals: the parts plus what catch-up copied outside them."""
    extra = state.get("missing_copied") or {"written": 0, "id_hash": 0}
    return {"written": sum(p["written"] for p in parts) + extra["written"],
            "id_hash": (sum(p["id_hash"] for p in parts) + extra["id_hash"]) % (1 << 64)}


def catch_up(plan: Plan | Job, lock: RunLock | None = None, *, progress: bool = True) -> dict:
    """Copy points added to the source since the rewrite started (before cutover).

    First each part goes on from its saved cursor, which picks up every point
    that sorts after it. Then, when the target's count or id checksum differs
    from the job's, a full id comparison finds the rest (ids added among the
    copied ones) and copies them with the same partitioned copier, saving its
    progress after every batch: a run killed anywhere in it resumes, and a
    checksum left wrong by any earlier run is found and set right.
    """
    with job_of(plan, lock or True) as job:
        state = job.state
        before = state.get("written", 0)
        if state.get("parts"):  # each part goes on from its cursor: new points sorted after it
            state.update(parts=[{**p, "done": False} for p in state.get("parts")])
        rewrite(job, progress=progress)
        added = state.get("written", 0) - before
        added += _copy_missing(job, progress=progress)
        return {"caught_up": added}


CATCH_UP_IDS = "catch_up_ids.json"


def _copy_missing(job: Job, *, progress: bool = True) -> int:
    """Copy the source points the target lacks; returns how many were copied.

    A copy saved in state.json by a killed run is finished first. Then the
    target's ids are checked against the job's count and checksum; on any
    difference the ids are compared in full and the missing ones copied.
    """
    plan, state, src, dst = job.plan, job.state, job.source, job.target
    copied = 0
    if state.get("catch_up"):
        copied += _run_catch_up_copy(job, progress=progress)
    target_ids, target_hash = _target_ids(dst, job.lock)
    if len(target_ids) == src.count() and target_hash == state.get("id_hash"):
        return copied
    missing = [i for ids in src.scan_ids() for i in ids if str(i) not in target_ids]
    job.heartbeat()
    _start_catch_up_copy(plan, state, missing, len(target_ids), target_hash)
    return copied + _run_catch_up_copy(job, progress=progress)


def _target_ids(dst, lock: RunLock) -> tuple[set, int]:
    """The target's ids (as str) and their checksum."""
    have: set = set()
    total = 0
    for ids in dst.scan_ids():
        have.update(map(str, ids))
        total = (total + parallel.id_hash(ids)) % (1 << 64)
        lock.heartbeat()
    return have, total


def _start_catch_up_copy(plan: Plan, state: JobState, missing: list, target_count: int,
                         target_hash: int) -> None:
    """Persist the copy of ``missing`` (ids file, parts, cursors) before writing any of it.

    The job's totals become what the target was seen to hold plus what the copy
    writes: ``base`` is that observation minus the rewrite parts' own totals, so
    points the parts write later still add to it."""
    from .state import atomic_write_text
    ids_file = plan.state_dir / CATCH_UP_IDS
    atomic_write_text(ids_file, json.dumps(missing))
    parts = state.get("parts") or []
    n_parts = max(1, min(plan.apply.workers, -(-len(missing) // plan.apply.batch_size)))
    bounds = [len(missing) * k // n_parts for k in range(n_parts + 1)]
    state.update(catch_up={
        "ids_file": str(ids_file), "ids": len(missing),
        "base": {"written": target_count - sum(p["written"] for p in parts),
                 "id_hash": (target_hash - sum(p["id_hash"] for p in parts)) % (1 << 64)},
        "parts": [{"part": {"start": a, "stop": b}, "cursor": None, "written": 0, "id_hash": 0,
                   "done": a == b} for a, b in zip(bounds, bounds[1:])]})


def _run_catch_up_copy(job: Job, *, progress: bool = True) -> int:
    """Copy the saved missing ids through ``parallel.run_parts`` (the rewrite's
    driver), saving each part's cursor after every batch; then fold the copy
    into the job's totals in one atomic save. Returns the points copied."""
    plan, state, lock, transform = job.plan, job.state, job.lock, job.transform
    copy = state.get("catch_up")
    ids = json.loads(Path(copy["ids_file"]).read_text())
    parts = copy["parts"]
    jobs = [parallel.PartJob(k, p["part"], p["cursor"]) for k, p in enumerate(parts) if not p["done"]]
    bar = tqdm(total=len(ids), initial=sum(p["written"] for p in parts), unit="vec",
               desc="catch-up", disable=not progress or not jobs)
    runner = parallel.LocalExecutor(plan.apply.workers)

    def on_batch(part, event):
        part["cursor"], n, h = event
        part["written"] += n
        part["id_hash"] = (part["id_hash"] + h) % (1 << 64)
        bar.update(n)
    try:
        _drive_parts(parts, jobs, runner, _id_copier(plan, transform, ids), on_batch, lock,
                     save=lambda: state.update(catch_up=copy, **_catch_up_totals(state, copy)))
    finally:
        bar.close()
    job.target.finish_write()
    base = copy["base"]
    state.update(catch_up=None, missing_copied={
        "written": base["written"] + sum(p["written"] for p in parts),
        "id_hash": (base["id_hash"] + sum(p["id_hash"] for p in parts)) % (1 << 64)})
    state.update(**_totals(state.get("parts") or [], state))
    Path(copy["ids_file"]).unlink(missing_ok=True)
    return sum(p["written"] for p in parts)


def _catch_up_totals(state: JobState, job: dict) -> dict:
    parts = state.get("parts") or []
    written = sum(p["written"] for p in parts) + job["base"]["written"]
    id_hash = sum(p["id_hash"] for p in parts) + job["base"]["id_hash"]
    for p in job["parts"]:
        written += p["written"]
        id_hash += p["id_hash"]
    return {"written": written, "id_hash": id_hash % (1 << 64)}


def _id_copier(plan: Plan, transform, ids: list):
    """A ``run_parts`` copier over positions of ``ids``: part ``{"start", "stop"}``, the
    cursor the next position. Fetch -> transform -> write, an event per written batch
    (ids deleted from the source meanwhile are simply not there to copy)."""
    size = plan.apply.batch_size

    def copy(job: parallel.PartJob):
        start, stop = job.part["start"], job.part["stop"]
        with open_collection(plan.source.uri) as src, open_collection(plan.target.uri) as dst:
            for at in range(start if job.cursor is None else job.cursor, stop, size):
                batch = src.fetch(ids[at:min(at + size, stop)])
                if len(batch):  # the job's transform: new points with text are re-embedded natively
                    dst.write(transform(batch))
                yield min(at + size, stop), len(batch), parallel.id_hash(batch.ids)
    return copy


def verify(plan: Plan | Job, lock: RunLock | None = None, *, progress: bool = True,
           with_report: bool = False) -> dict:
    """Counts and ids of the target equal the source's; then the quality gate on the target."""
    with job_of(plan, lock) as job:
        return _verify(job, progress=progress, with_report=with_report)


def _verify(job: Job, *, progress: bool, with_report: bool) -> dict:
    plan, state, src, dst = job.plan, job.state, job.source, job.target
    info, dst_info = src.describe(), dst.describe()
    target_hash, target_count = 0, 0
    for ids in dst.scan_ids():
        target_hash = (target_hash + parallel.id_hash(ids)) % (1 << 64)
        target_count += len(ids)
        job.heartbeat()
    ids_match = target_hash == state.get("id_hash") and target_count == info.count
    translator = _load_translator(plan, info)
    sample = src.sample(plan.gate.sample, seed=plan.sample.seed + 1)
    written = dst.fetch(list(sample.ids))
    by_id = {str(i): k for k, i in enumerate(written.ids)}
    order = [by_id.get(str(i)) for i in sample.ids]
    if any(k is None for k in order):
        ids_match = False
        report = _evaluate(job, translator, sample, info, target=dst, progress=progress)
    else:
        report = _evaluate(job, translator, sample, info, target=dst, progress=progress,
                           written=Batch([written.ids[k] for k in order], written.vectors[order],
                                         [written.payloads[k] for k in order]))
    report.mode = "apply"
    report.cutover = {"status": "already done"} if state.stage == "cut_over" else {}
    report.written = {"written": state.get("written", 0), "target": plan.target.uri,
                      "target_count": target_count}
    report.add_check("ids_and_count_match", target_count, {"equal_to": info.count}, ids_match,
                     "the target holds exactly the source's ids (count and id checksum)")
    paths = report.write(plan.state_dir / "report")
    if state.stage != "cut_over":
        state.update(stage="verified" if report.verdict == "PASS" else "applied")
    state.update(last_report=str(paths.get("html")), last_verdict=report.verdict)
    return {"verdict": report.verdict, **_evidence_fields(report), "ids_match": ids_match,
            "source_count": info.count, "target_count": target_count, "target_dim": dst_info.dim,
            "report": {k: str(v) for k, v in paths.items()},
            "failed_checks": [c for c in report.checks if c["status"] != "PASS"],
            **({"_report": report} if with_report else {})}


def _evidence_fields(report) -> dict:
    """What --json carries at top level about the evidence (see report.to_dict)."""
    d = report.to_dict()
    return {"evidence": d["evidence"], "answer": d["answer"], "search_quality": d["search_quality"],
            "recommendation": (d["decision"] or {}).get("recommendation"), "decision": d["decision"]}


def do_cutover(plan: Plan | Job, *, forced: bool = False) -> dict:
    with job_of(plan) as job:
        return _do_cutover(job, forced=forced)


def _do_cutover(job: Job, *, forced: bool) -> dict:
    plan, state = job.plan, job.state
    if state.stage == "cut_over":
        return {"cutover": "already done", "record": state.get("cutover")}
    dst = job.target
    pending = dst.plan_cutover(plan.target.live_name)
    if pending is not None:  # multi-step cutover: persist the plan first, so rollback can finish it
        state.update(cutover_pending=pending)
        record = dst.cutover(plan.target.live_name, record=pending)
    else:
        record = dst.cutover(plan.target.live_name)
    state.update(stage="cut_over", cutover=record, cutover_pending=None, cutover_forced=forced,
                 cutover_at=time.time())
    return {"cutover": "done", "forced": forced, "live_name": plan.target.live_name, "record": record}


def rollback(plan: Plan | str) -> dict:
    with Job(plan, lock=True) as job:
        plan, state = job.plan, job.state
        record = state.get("cutover") or state.get("cutover_pending")  # pending: died mid-cutover
        if not record or state.stage not in ("cut_over", "verified", "applied"):
            raise UsageError(f"nothing to roll back: the job is at stage '{state.stage}'",
                             "rollback undoes a cutover; to discard the target use embedmigrate "
                             "cleanup --drop-target")
        job.target.rollback(record)
        state.update(stage="rolled_back", cutover=None, rolled_back=record, rolled_back_at=time.time())
        return {"rolled_back": True, "live_name": plan.target.live_name, "record": record,
                "outcome": job.target.rollback_outcome(record)}


def cleanup(plan: Plan | str, *, drop_old: bool = False, drop_target: bool = False,
            clear_cache: bool = True) -> dict:
    """Remove what the migration no longer needs. The old collection is dropped only
    with ``drop_old`` after a cutover; the target only with ``drop_target`` before one."""
    import shutil
    done: dict = {"dropped": []}
    with Job(plan, lock=True) as job:
        plan, state = job.plan, job.state
        if drop_old:
            record = state.get("cutover")
            if state.stage != "cut_over" or not record:
                raise UsageError("the old collection is still live (no cutover yet)",
                                 "cut over first (embedmigrate apply); the source is never dropped before")
            # the collection that served before the cutover (each engine's record names it)
            from .connectors import connector_class
            retired = connector_class(parse_uri(plan.source.uri).engine).retired_collection(record)
            if retired:
                job.open(parse_uri(plan.source.uri).with_collection(retired)).drop()
                done["dropped"].append(retired)
                state.update(old_dropped=retired)
        if drop_target:
            if state.stage == "cut_over":
                raise ConflictError("the target is live", "roll back first: embedmigrate rollback PLAN")
            job.target.drop()
            done["dropped"].append(parse_uri(plan.target.uri).collection)
            state.update(stage="trained" if state.reached("trained") else state.stage,
                         apply_started=False, creating_target=False, cursor=None, parts=None,
                         missing_copied=None, catch_up=None,
                         written=0, id_hash=0)
        if clear_cache:
            shutil.rmtree(plan.state_dir / "cache", ignore_errors=True)
            done["cache_cleared"] = True
    return done


# --- scheduled jobs -------------------------------------------------------------------

def run(plan: Plan | str, *, progress: bool = False, force: bool = False, workers: int | None = None,
        executor: str | None = None) -> dict:
    """Advance the job by one idempotent step: planned -> trained -> applied ->
    verified -> cut_over. Safe to call from cron every few minutes."""
    with Job(plan, lock=True) as job:
        state = job.state
        stage = state.stage
        if stage == "planned":
            return {"step": "train", **_train(job, progress=progress, retrain=False)}
        if stage in ("trained", "applying"):
            return {"step": "apply", **rewrite(job, progress=progress, workers=workers,
                                               executor=executor)}
        if stage == "applied":
            caught = catch_up(job, progress=progress)
            return {"step": "verify", **caught, **verify(job, progress=progress)}
        if stage == "verified":
            caught = catch_up(job, progress=progress)
            if caught["caught_up"]:  # new points since the gate: verify again first
                return {"step": "verify", **caught, **verify(job, progress=progress)}
            return {"step": "cutover", **do_cutover(job)}
        if stage == "cut_over":
            return {"step": "none", "stage": stage, "message": "migration complete"}
        if stage == "rolled_back":
            if force:
                return {"step": "cutover", **do_cutover(job, forced=True)}
            return {"step": "none", "stage": stage, "message": "rolled back; run with --force to cut over again"}
        raise UsageError(f"unknown job stage '{stage}'", f"inspect {state.path}")


def status(plan: Plan | str) -> dict:
    job = Job(plan)  # reads the state; opens nothing
    plan, state = job.plan, job.state
    lock = plan.state_dir / "lock"
    return {"plan": str(plan.path), "stage": state.stage, "written": state.get("written", 0),
            "source_count": plan.source.count, "checkpoint": str(plan.checkpoint_dir),
            "last_verdict": state.get("last_verdict"), "last_report": state.get("last_report"),
            "cutover": state.get("cutover"), "locked": lock.exists(),
            "lock_owner": json.loads(lock.read_text()) if lock.exists() else None}


def translate_file(checkpoint, input_path, output_path, *, inverse: bool = False) -> dict:
    """Translate an .npy of vectors (old -> new, or new -> old with ``inverse``)."""
    from . import files

    translator = Translator.load(checkpoint)
    try:
        x = np.load(input_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read vectors from {input_path}: {e}", "pass a .npy file of shape (n, dim)") from None
    y = translator.inverse(x) if inverse else translator.translate(x)
    files.atomic_write_with(output_path, lambda fh: np.save(fh, y), elsewhere="pass another output path")
    return {"input": str(input_path), "output": str(output_path), "rows": int(len(y)),
            "dim": int(y.shape[1]), "direction": "new->old" if inverse else "old->new"}


def _as_plan(p) -> Plan:
    return p if isinstance(p, Plan) else load_plan(p)



# --- strategies: translate, re-embed, hybrid ------------------------------------------

def resolve_strategy(plan: Plan, recommendation: str | None = None) -> tuple[str, str]:
    """The strategy the job runs (translate | reembed | hybrid) and why.

    ``auto`` follows the decision report's ``recommendation`` when one is given
    (translate, reembed, hybrid; keep and bridge migrate nothing new, so they
    resolve to translate, the reversible road, and say so); without one it
    translates."""
    name = plan.strategy.name
    if name != "auto":
        return name, f"set in the plan ([strategy] name = \"{name}\")"
    if recommendation is None and plan.path is not None:
        state = JobState(plan.state_dir)
        if state.get("strategy_chosen"):  # fixed when the rewrite started: never changes mid-job
            return state.get("strategy_chosen"), state.get("strategy_reason", "")
        recommendation = state.get("recommendation")
    if recommendation in ("translate", "reembed", "hybrid"):
        if recommendation != "translate" and not plan.source.text_field:
            return "translate", (f"auto: the decision report recommends {recommendation}, but the "
                                 "source stores no text to encode")
        return recommendation, f"auto: the decision report recommends {recommendation}"
    if recommendation in ("keep", "bridge"):
        return "translate", (f"auto: the decision report recommends {recommendation} (no rewrite); "
                             "set [strategy] name to run a migration anyway")
    if not plan.source.text_field:
        return "translate", "auto: the source stores no text, so only translation is possible"
    return "translate", ("auto: no decision report yet, so translating; set [strategy] name = "
                         "\"reembed\" or \"hybrid\" to encode the stored texts with the new model")


def _train_for_reembed(job: Job, strategy: str, *, progress: bool) -> None:
    """A re-embed needs no ``train`` command: its apply trains first. Training encodes
    the pairs sample of stored texts (``[sample] pairs``, a small share of a re-embed's
    encoding) and fits the map that writes points without text, the gate's checks and
    its held-out evaluation data. Translate and hybrid jobs are told to train."""
    plan = job.plan
    if strategy != "reembed":
        raise UsageError("the translator is not trained yet", f"run: embedmigrate train {plan.path}")
    _train(job, progress=progress, retrain=False)  # the job's state goes on from 'trained'
    _fix_strategy(plan, job.state, job.source, progress=progress)


HTTP_TIMED_TEXTS = 32
PLAN_QUALITY_LATER = "quality: measured by apply --dry-run after train"


def plan_decision(plan: Plan, src, info, encoder, n_texts: int = 64) -> dict:
    """The decision table as far as ``plan`` can price it: no translator is trained yet,
    so no road's quality is known (``apply --dry-run`` after ``train`` measures them
    all, in ``evidence.decide``'s rows). Costs: re-embedding is timed here, on up to
    ``n_texts`` of the source's stored texts, and extrapolated to the collection (tokens
    estimated for HTTP encoders); translating, bridging and the hybrids are the plan's
    estimate (train, then writing at ``APPLY_VECTORS_PER_S``) plus that encoding time."""
    from . import evidence as E
    from .encoders import ArrayEncoder
    from .transform import estimate_tokens, has_text
    count, est = info.count, plan.estimate
    train_cpu, train_gpu = 60 * est["train_minutes_cpu"], 60 * est["train_minutes_gpu_estimate"]
    write_s = count / E.APPLY_VECTORS_PER_S
    rows: list[dict] = []

    def row(road, what, cpu_s, gpu_s, note, tokens=None):
        rows.append({"road": road, "what": what, "ndcg": None, "ratio_vs_today": None,
                     "cpu_seconds": round(cpu_s, 1), "gpu_seconds_estimate": round(gpu_s, 1),
                     "note": note, **({"tokens_estimate": round(tokens)} if tokens is not None else {})})
    row("keep", "keep today's index and old model", 0.0, 0.0,
        "" if plan.gate.baseline == "today" else "not an option: the old model is being retired")
    row("bridge", "new-model queries mapped onto today's index (inverse map)", train_cpu, train_gpu,
        "cost: train (estimated)")
    row("translate", "translate every stored vector", train_cpu + write_s, train_gpu + write_s,
        "cost: train + writing (estimated)")
    timed = ""
    texts = []
    if plan.source.text_field and not isinstance(encoder, ArrayEncoder):
        sample = src.sample(min(count, 2 * n_texts), seed=plan.sample.seed)
        texts = [t for t in sample.texts(plan.source.text_field) if has_text(t)]
    if texts:
        native = len(texts) / len(sample)
        http = hasattr(encoder, "tokens_used_here")
        n_timed = min(len(texts), HTTP_TIMED_TEXTS if http else n_texts)  # an endpoint may bill them
        per_doc = E.encode_seconds_per_text(encoder, texts, n_timed)
        tokens_per_doc = estimate_tokens(texts) / len(texts) if http else None
        timed = (f"re-embedding timed on {n_timed} of the source's texts here "
                 f"({1 / max(per_doc, 1e-9):.0f} texts/s)")

        def tokens(share):
            return None if tokens_per_doc is None else share * native * count * tokens_per_doc
        for share in E.HYBRID_SHARES:
            enc_s = share / 100 * native * count * per_doc
            row(f"hybrid_{share}", f"translate, then re-embed {share}% in the background",
                train_cpu + write_s + enc_s, train_gpu + write_s + enc_s / E.GPU_ENCODE_SPEEDUP,
                "cost: translate (estimated) + re-embedding (timed)", tokens(share / 100))
        enc_s = native * count * per_doc
        row("reembed", "re-embed every stored text with the new model", train_cpu + enc_s + write_s,
            train_gpu + enc_s / E.GPU_ENCODE_SPEEDUP + write_s,
            "cost: train (estimated; pairs for the gate, points without text) + re-embedding (timed)"
            + ("" if native >= 0.999 else f"; {100 * (1 - native):.0f}% of sampled points have no "
               "text: translated"), tokens(1.0))
    return {"rows": rows, "recommendation": None, "count": count, "stage": "plan",
            "reason": f"{PLAN_QUALITY_LATER} (it needs the trained translator); no recommendation yet",
            "cost_basis": f"CPU: {timed + '; ' if timed else ''}train and writing estimated (the "
                          f"plan's estimate, {E.APPLY_VECTORS_PER_S:.0f} points/s) for {count} "
                          f"points; GPU: an estimate ({E.GPU_ENCODE_SPEEDUP:.0f}x encoding)"}


def _fix_strategy(plan: Plan, state: JobState, src, *, progress: bool = False) -> None:
    """Before the first batch: an ``auto`` plan takes the decision report's
    recommendation (measured now if no dry run recorded one), and the choice is
    recorded so every later run of this job uses the same strategy."""
    if plan.strategy.name == "auto" and state.get("recommendation") is None:
        info = src.describe()  # src: the job's source connector
        sample = src.sample(plan.gate.sample, seed=plan.sample.seed + 1)
        _, decision = gather_evidence(plan, _load_translator(plan, info), sample, info,
                                      progress=progress, source=src)
        state.update(recommendation=decision.get("recommendation"),
                     recommendation_reason=decision.get("reason"))
    chosen, reason = resolve_strategy(plan)
    state.update(strategy_chosen=chosen, strategy_reason=reason)


def make_transform(plan: Plan, info=None, strategy: str | None = None, *, only_text: bool = False):
    """The transform of the plan's strategy (``embedmigrate.transform``). Hybrid's first
    phase translates, recording provenance; its background passes re-embed."""
    from .transform import ReembedTransform, TranslateTransform
    strategy = strategy or resolve_strategy(plan)[0]
    trained = (plan.checkpoint_dir / "translator.json").exists()
    if strategy == "translate":
        return TranslateTransform(_load_translator(plan, info))
    if strategy == "hybrid" and not only_text:
        return TranslateTransform(_load_translator(plan, info), provenance=plan.model.new)
    from .encoders import open_encoder
    return ReembedTransform(open_encoder(plan.model.new), plan.source.text_field, model=plan.model.new,
                            translator=_load_translator(plan, info) if trained else None,
                            encode_batch=plan.strategy.encode_batch or None, only_text=only_text)


def _check_source_has_texts(plan: Plan, src, n: int = 256) -> None:
    """Refuse a re-embed, before anything is written, when a sample of the source holds
    no text in the plan's text field."""
    from .transform import has_text
    sample = src.sample(n, seed=plan.sample.seed)
    if not any(has_text(t) for t in sample.texts(plan.source.text_field)):
        raise DataError(f"none of {len(sample)} sampled points has text in '{plan.source.text_field}': "
                        "there is nothing to re-embed",
                        "set [source] text_field to the field that holds each point's text, or "
                        "[strategy] name = \"translate\"")


def plan_budget(plan: Plan, max_docs: int | None = None, max_seconds: float | None = None,
                max_tokens: int | None = None):
    """The budget of one apply / run: the options given, else the plan's [strategy] (0: none)."""
    from .transform import Budget
    st = plan.strategy
    return Budget(max_docs=max_docs if max_docs is not None else (st.max_docs or None),
                  max_seconds=max_seconds if max_seconds is not None else (st.max_seconds or None),
                  max_tokens=max_tokens if max_tokens is not None else (st.max_tokens or None))


def as_budget(plan: Plan, budget=None):
    """A ``Budget`` from one, from a dict of the options given (None: not given), or
    the plan's own."""
    from .transform import Budget
    if isinstance(budget, Budget):
        return budget
    return plan_budget(plan, **(budget or {}))


COUNT_KEYS = ("native", "translated", "tokens")


def _add_counts(part: dict, counts: dict) -> None:
    for k in COUNT_KEYS:
        part[k] = part.get(k, 0) + int(counts.get(k, 0))


def _count_totals(parts: list[dict]) -> dict:
    return {k: sum(p.get(k, 0) for p in parts) for k in COUNT_KEYS}


def _budget_stop(plan: Plan, state: JobState, reason: str, budget, total: int,
                 what: str = "apply") -> dict:
    used = budget.used
    written = state.get("written", 0) if what == "apply" else None
    far = (f"{written} of {total} points written ({100 * written / max(total, 1):.0f}%)"
           if written is not None else f"{used['docs']} points re-embedded")
    message = (f"stopped by --{reason.replace('_', '-')}: {used['docs']} points and ~{used['tokens']} "
               f"tokens this run; {far}; run the same command again to resume")
    state.update(last_budget_stop={"reason": reason, "used": dict(used), "at": time.time()})
    return {"stage": state.stage, "budget_exhausted": reason, "message": message,
            "written": state.get("written"), "this_run": dict(used), "strategy": resolve_strategy(plan)[0],
            **_count_totals(state.get("parts") or [])}


def live_target_uri(plan: Plan, state: JobState | None = None) -> str:
    """Where the migrated points are served: the target before cutover; after it, the
    live name on engines whose cutover renames (Chroma, PostgreSQL), the target
    collection itself behind Qdrant's alias."""
    state = state or JobState(plan.state_dir)
    uri = parse_uri(plan.target.uri)
    if state.stage == "cut_over" and uri.engine != "qdrant":
        return uri.with_collection(plan.target.live_name).without_password()
    return plan.target.uri


def reembed_pass(plan: Plan | str, lock: RunLock | None = None, *, progress: bool = False,
                 budget=None, workers: int | None = None) -> dict:
    """One background pass of a hybrid job: re-embed translated points of the live
    collection in place (their stored text, the new model), within ``budget``.

    The sweep scans the live collection in parts with saved cursors, picks the points
    whose provenance is ``translated`` and that have text, and overwrites their
    vectors (provenance ``native``); ids, payloads and documents are kept. A pass
    killed or stopped by its budget goes on from the cursors next time; a finished
    sweep is final. Writes are idempotent upserts of the same point."""
    with job_of(plan, lock or True) as job:
        return _reembed_pass(job, progress=progress, budget=budget, workers=workers)


def _reembed_pass(job: Job, *, progress: bool, budget, workers: int | None) -> dict:
    plan, state, lock = job.plan, job.state, job.lock
    if resolve_strategy(plan)[0] != "hybrid":
        raise UsageError("background re-embed passes belong to hybrid jobs",
                         "set [strategy] name = \"hybrid\" in the plan")
    if state.stage != "cut_over":
        raise UsageError(f"the job is at stage '{state.stage}': hybrid passes start after the "
                         "cutover", f"advance it first: embedmigrate run {plan.path}")
    hybrid = state.get("hybrid") or {}
    if hybrid.get("done"):
        return {"pass": hybrid.get("pass", 0), "done": True, **_hybrid_share(state)}
    live = live_target_uri(plan, state)
    conn = job.open(live)  # closed with the job
    transform = make_transform(plan, strategy="reembed", only_text=True)
    if not hybrid.get("parts"):  # a new sweep
        parts = [{"part": p, "cursor": None, "written": 0, "id_hash": 0, "done": False}
                 for p in conn.partitions(_auto_parts(conn, conn.count(), workers or plan.apply.workers))]
        hybrid = {"pass": 0, "parts": parts, "passes": [], "live": live}
    hybrid["pass"] = hybrid.get("pass", 0) + 1
    parts = hybrid["parts"]
    record = {"pass": hybrid["pass"], "started": time.time(), "native": 0}
    if not hybrid["passes"] or "finished" not in hybrid["passes"][-1]:
        # the first pass measures the translated collection; after a killed pass, what it left
        record["quality_start"] = _pass_quality(plan, state, conn)
    hybrid["passes"].append(record)
    state.update(hybrid=hybrid)
    budget = as_budget(plan, budget)
    jobs = [parallel.PartJob(k, p["part"], p["cursor"]) for k, p in enumerate(parts) if not p["done"]]
    n_workers = workers or plan.apply.workers
    runner = parallel.make_executor("local", n_workers)
    select = functools.partial(_needs_reembed, text_field=plan.source.text_field)
    bar = tqdm(total=max(state.get("translated", 0) - state.get("reembedded", 0), 0), unit="vec",
               desc=f"hybrid pass {hybrid['pass']}", disable=not progress)

    def on_batch(part, event):
        part["cursor"], n = event[0], event[1]
        part["written"] += n
        record["native"] += n
        budget.add(n, event[3].get("tokens", 0) if len(event) > 3 else 0)
        bar.update(n)
    try:
        copier = runner.start(live, live, transform, plan.checkpoint_dir, plan.apply.batch_size,
                              select=select)
        stopped = _drive_parts(
            parts, jobs, runner, copier, on_batch, lock, budget,
            save=lambda: state.update(hybrid=hybrid, reembedded=sum(p["written"] for p in parts)))
    finally:
        bar.close()
        runner.close()
    record.update(finished=time.time(), stopped_by=stopped, quality=_pass_quality(plan, state, conn))
    if not stopped:
        hybrid.update(done=True, parts=parts)
        # the sweep is over: count provenance exactly (a killed pass may have written
        # batches it never counted)
        hybrid["final_counts"] = provenance_counts(conn)
    state.update(hybrid=hybrid, reembedded=sum(p["written"] for p in parts))
    result = {"pass": hybrid["pass"], "done": bool(hybrid.get("done")), "reembedded_this_pass":
              record["native"], "live": live, **_hybrid_share(state)}
    if stopped:
        result.update(budget_exhausted=stopped, message=(
            f"hybrid pass {hybrid['pass']} stopped by --{stopped.replace('_', '-')} after "
            f"{record['native']} points; {result['share_native']:.0%} of the collection is "
            "re-embedded; run again to go on"))
    return result


HYBRID_EVAL = "hybrid_eval.npz"


def _pass_quality(plan: Plan, state: JobState, live) -> dict:
    """Search quality of the live collection as it stands, measured with the gate's
    evidence: nDCG@10 and its 95% interval. A measurement that cannot be made is
    recorded with its reason; it never stops a pass (the re-embedded points are right
    either way)."""
    from .errors import EmbedMigrateError
    try:
        evaluation = hybrid_eval_set(plan, state)
        if evaluation is None:
            return {"ndcg": None, "reason": "no evidence: the plan has no labelled queries and no "
                                            "group field"}
        return live_quality(live, evaluation, seed=plan.sample.seed)
    except EmbedMigrateError as e:
        return {"ndcg": None, "reason": e.one_line()}


def hybrid_eval_set(plan: Plan, state: JobState) -> dict | None:
    """The gate's evaluation set, prepared once for measuring the live collection after
    hybrid passes: the documents' ids, each query's relevant documents and the new
    model's query vectors. It is built from the old collection with the gate's own
    sample (size and seed as verify), labels or sibling groups, and saved in the job's
    state, so every pass is measured on the same data and costs a fetch of these
    points by id, not a re-encoding. None when the plan gives the gate no evidence."""
    from . import evidence as E
    from . import files
    from .encoders import encode_cached, open_encoder
    from .state import STATE_ELSEWHERE
    path = plan.state_dir / HYBRID_EVAL
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            queries = z["queries"]
        meta["relevant"] = [{int(k): g for k, g in rel.items()} for rel in meta["relevant"]]
        return {**meta, "queries": queries}
    if not has_labels(plan) and not plan.gate.group_field:
        return None
    src = _old_collection(plan, state)
    try:
        sample = src.sample(plan.gate.sample, seed=plan.sample.seed + 1)
        if has_labels(plan):
            labelled = E.read_labelled_queries(plan.resolve_path(plan.gate.queries),
                                               plan.resolve_path(plan.gate.qrels) if plan.gate.qrels else None)
            es = E.labelled_eval_set(src, labelled, sample, plan.source.text_field)
        else:
            es = E.sibling_eval_set(src, plan.gate.group_field, sample, plan.source.text_field,
                                    batch_size=plan.apply.batch_size, seed=plan.sample.seed)
    finally:
        src.close()
    encoder, cache = open_encoder(plan.model.new), plan.state_dir / "cache"
    if es.kind == E.LABELS:
        queries = encode_cached(encoder, es.query_texts, cache, kind="query")
    else:  # each sibling's text as a query, as the gate encodes it (no text: its translation)
        queries = E._sibling_queries(es, _load_translator(plan).translate(es.docs_old), encoder, None,
                                     cache)[0]
    meta = {"kind": es.kind, "description": es.description,
            "ids": [i if isinstance(i, str) else int(i) for i in es.doc_ids],
            "relevant": [{str(k): float(g) for k, g in rel.items()} for rel in es.relevant],
            "exclude": None if es.query_doc is None else es.query_doc.tolist()}
    files.atomic_write_with(path, lambda fh: np.savez(fh, queries=np.asarray(queries, np.float32),
                                                      meta=np.asarray(json.dumps(meta))),
                            elsewhere=STATE_ELSEWHERE)
    return hybrid_eval_set(plan, state)


def _old_collection(plan: Plan, state: JobState):
    """The collection holding the old vectors after the cutover: the source, or the name
    the cutover retired it under (engines that rename, or an alias the source was)."""
    from .connectors import connector_class
    uri = parse_uri(plan.source.uri)
    retired = connector_class(uri.engine).retired_collection(state.get("cutover") or {})
    return open_collection(uri.with_collection(retired) if retired else uri)


def live_quality(conn, evaluation: dict, *, k: int = 10, seed: int = 0) -> dict:
    """nDCG@k of the evaluation queries on the vectors ``conn`` holds now for the
    evaluation documents (fetched by id), with a bootstrap 95% interval over queries,
    and the share of those documents that are re-embedded."""
    from . import evidence as E
    from .transform import NATIVE, PROVENANCE_VECTOR
    ids = evaluation["ids"]
    got = conn.fetch(ids)
    by_id = {str(i): n for n, i in enumerate(got.ids)}
    missing = [i for i in ids if str(i) not in by_id]
    if missing:
        return {"ndcg": None, "reason": f"{len(missing)} of the {len(ids)} evaluation points are no "
                                        f"longer in the live collection (e.g. id {missing[0]})"}
    order = [by_id[str(i)] for i in ids]
    exclude = evaluation["exclude"]
    scores = E.ndcg_per_query(evaluation["queries"], got.vectors[order], evaluation["relevant"], k,
                              conn.describe().metric, None if exclude is None else np.asarray(exclude))
    interval = E.mean_interval(scores, seed=seed)
    native = sum((got.payloads[n] or {}).get(PROVENANCE_VECTOR) == NATIVE for n in order)
    return {"ndcg": round(interval["mean"], 4), "low": round(interval["low"], 4),
            "high": round(interval["high"], 4), "k": k, "evidence": evaluation["kind"],
            "queries": len(scores), "documents": len(ids), "native_share": round(native / len(ids), 4),
            "measured": time.time()}


def _needs_reembed(batch: Batch, text_field: str) -> list[int]:
    """The points of a live batch a hybrid pass re-embeds: translated by us, with text."""
    from .transform import PROVENANCE_VECTOR, TRANSLATED, has_text
    texts = batch.texts(text_field)
    return [i for i, (p, t) in enumerate(zip(batch.payloads, texts))
            if (p or {}).get(PROVENANCE_VECTOR) == TRANSLATED and has_text(t)]


def provenance_counts(conn) -> dict:
    """Points of a collection by provenance: native, translated, other (not ours)."""
    from .transform import PROVENANCE_VECTOR
    counts = {"native": 0, "translated": 0, "other": 0}
    for batch, _ in conn.scan(4096):
        for p in batch.payloads:
            kind = (p or {}).get(PROVENANCE_VECTOR)
            counts[kind if kind in ("native", "translated") else "other"] += 1
    return counts


def _hybrid_share(state: JobState) -> dict:
    hybrid = state.get("hybrid") or {}
    total = state.get("written", 0) or 0
    exact = hybrid.get("final_counts")
    native = exact["native"] if exact else state.get("native", 0) + state.get("reembedded", 0)
    return {"native_points": native, "points": total,
            "share_native": round(native / total, 4) if total else 0.0,
            "passes": len(hybrid.get("passes", []))}


def strategy_status(plan: Plan | str) -> dict:
    """What ``status`` adds for re-embed and hybrid jobs: the strategy, the points
    encoded natively and translated, and a hybrid job's share re-embedded and passes."""
    plan = _as_plan(plan)
    state = JobState(plan.state_dir)
    strategy, reason = resolve_strategy(plan)
    out = {"strategy": strategy, "strategy_reason": reason}
    if strategy == "translate":
        return out
    out.update({k: state.get(k, 0) for k in COUNT_KEYS})
    if strategy == "hybrid":
        hybrid = state.get("hybrid") or {}
        out.update(_hybrid_share(state), hybrid_done=bool(hybrid.get("done")),
                   hybrid_passes=hybrid.get("passes", []),
                   hybrid_quality=hybrid_quality(hybrid.get("passes", [])))
    if state.get("last_budget_stop"):
        out["last_budget_stop"] = state.get("last_budget_stop")
    return out


def hybrid_quality(passes: list[dict]) -> list[dict]:
    """Search quality at each stage of a hybrid job, from its pass records: after the
    cutover (translated only), after each pass that ended (and where a killed pass left
    it, measured when the next one started)."""
    out = []
    for n, record in enumerate(passes):
        if "quality_start" in record:
            after = "cutover (translated)" if n == 0 else f"pass {passes[n - 1]['pass']} (killed)"
            out.append({"after": after, **record["quality_start"]})
        if "quality" in record:
            stop = record.get("stopped_by")
            out.append({"after": f"pass {record['pass']}" + (f" (stopped by {stop})" if stop else ""),
                        **record["quality"]})
    return out


def advance(plan: Plan | str, *, progress: bool = False, force: bool = False,
            workers: int | None = None, executor: str | None = None, budget=None) -> dict:
    """``embedmigrate run``: ``run``'s next step, plus what the strategies add: the
    rewrite step within a budget, and a hybrid job's background passes after its
    cutover."""
    plan = _as_plan(plan)
    state = JobState(plan.state_dir)
    strategy = resolve_strategy(plan)[0]
    budget = as_budget(plan, budget)
    if strategy == "hybrid" and state.stage == "cut_over":
        return {"step": "reembed_pass", **reembed_pass(plan, progress=progress, budget=budget,
                                                         workers=workers)}
    if budget.any() and state.stage in ("trained", "applying"):
        with RunLock(plan.state_dir) as lock:
            return {"step": "apply", **rewrite(plan, lock, progress=progress, workers=workers,
                                               executor=executor, budget=budget)}
    return run(plan, progress=progress, force=force, workers=workers, executor=executor)
