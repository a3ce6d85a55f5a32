"""The quality gate: thresholds, checks, evidence and the verdict (rendering: ``report``).

    >>> rep = evaluate(translator, old_sample, thresholds=Thresholds(),
    ...                new_sample=new_sample, held_out_pairs=(old_h, new_h),
    ...                queries_new=qn, queries_old=qo, relevant=rel)
    >>> rep.verdict                      # "PASS" | "WARN" | "FAIL"
    >>> rep.write("reports/docs")        # report.html, report.json, report.md
    >>> sys.exit(exit_code_for(rep.verdict))

Everything is computed on a *sample* of the collection; nothing is written to
any database. Each check compares one number with a FAIL line and a WARN
line; the verdict is the worst status. What is measured, from always to
only-when-given:

- label-free (always): the translator's own confidence (``meta["confidence"]
  ["aligned"]``), retrieval overlap@k with stored vectors as queries (before:
  old index, after: translated index), neighbourhood preservation, cycle error;
  with a fresh new-model sample, whether translated vectors land where real
  new-model vectors live (``distribution_match``: catches a rotation into the
  void that every structural check above passes);
- with query texts encoded by both models: old-model results today vs
  new-model queries on the translated index;
- with held-out pairs (same texts, both models): the vec2vec metrics (mean
  cosine, top-1, rank), recall@k retained against the true new-model index,
  and the "beats doing nothing" rule: the translated index must retain more of
  the true new-model results than the old index does today (old-native) and,
  when dimensions match, than querying old vectors with the new model
  (identity);
- with relevance labels: nDCG@k of the translated index against old-native.

- evidence (``embedmigrate.evidence``): nDCG@k of today's index and the
  migrated one on labelled queries or sibling chunks, judged by the bootstrap
  interval of their ratio. It is the only check that can PASS the gate:
  without it the verdict is at most WARN (unproven), because every agreement
  check above favours a translation that makes search worse.

A translator worse than doing nothing FAILS. The score distributions before
and after give a threshold mapping (quantile matching) for users who filter
on a fixed similarity.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from . import metrics as M
from .errors import DataError, ExitCode, UsageError
from .report import FAIL, PASS, SKIP, WARN, _SEVERITY, QualityReport, _fmt, _scrub
from .translators.base import check_vectors

# --- thresholds ----------------------------------------------------------------

@dataclass
class Thresholds:
    """Gate thresholds (plan section ``gate``). ``min_*`` / ``max_*`` are the
    FAIL lines, ``warn_*`` the WARN lines. Overlaps and recalls are fractions
    of the k results; ratios compare the translated index with doing nothing.

    Defaults are deliberately loose on the structural checks: even a perfect
    translation only keeps the neighbourhoods the two models share (about 0.4
    to 0.6 for MiniLM vs MPNet), while a collapsed or misaligned map scores
    near 0.
    """

    require_aligned: bool = True          # translator's meta confidence must say aligned
    min_overlap_at_k: float = 0.10        # stored-vector / query-text overlap before vs after
    warn_overlap_at_k: float = 0.25
    min_neighbourhood_overlap: float = 0.10
    warn_neighbourhood_overlap: float = 0.25
    max_cycle_error: float = 0.40         # 1 - cos(x, inverse(translate(x)))
    warn_cycle_error: float = 0.20
    min_distribution_match: float = 0.70  # needs a new-model sample
    warn_distribution_match: float = 0.85
    min_top1: float = 0.50                # held-out pairs, among up to 8,192 candidates
    warn_top1: float = 0.80
    min_recall_retained: float = 0.10     # overlap with the true new-model top-k
    warn_recall_retained: float = 0.25
    min_ratio_vs_baseline: float = 0.95   # translated / doing nothing (old-native, identity)
    warn_ratio_vs_baseline: float = 1.00
    # evidence (labelled queries or sibling chunks): nDCG@10 migrated / today, judged by
    # its bootstrap interval: FAIL when it lies below min_, PASS only when it lies at or
    # above warn_, WARN when it straddles
    min_evidence_ratio: float = 0.95
    warn_evidence_ratio: float = 1.00
    # baseline = "none" (the old model is being retired): migrated / full re-embed
    min_ratio_vs_reembed: float = 0.50
    warn_ratio_vs_reembed: float = 0.80

    def __post_init__(self):
        for name in ("overlap_at_k", "neighbourhood_overlap", "distribution_match", "top1",
                     "recall_retained", "ratio_vs_baseline", "evidence_ratio", "ratio_vs_reembed"):
            fail, warn = getattr(self, "min_" + name), getattr(self, "warn_" + name)
            if warn < fail:
                raise UsageError(f"gate threshold warn_{name}={warn} is below min_{name}={fail}",
                                 f"set warn_{name} >= min_{name} in the plan's gate section")
        if self.warn_cycle_error > self.max_cycle_error:
            raise UsageError(f"gate threshold warn_cycle_error={self.warn_cycle_error} is above "
                             f"max_cycle_error={self.max_cycle_error}",
                             "set warn_cycle_error <= max_cycle_error in the plan's gate section")

    @classmethod
    def from_dict(cls, d: dict | None) -> "Thresholds":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d or {}) - known)
        if unknown:
            raise UsageError(f"unknown gate threshold(s): {', '.join(unknown)}",
                             "use: " + ", ".join(sorted(known)))
        return cls(**(d or {}))


def exit_code_for(verdict: str) -> int:
    """PASS -> 0, WARN -> 3, FAIL -> 1 (``errors.ExitCode``)."""
    codes = {PASS: ExitCode.OK, WARN: ExitCode.WARN, FAIL: ExitCode.FAIL}
    if verdict not in codes:
        raise ValueError(f"unknown verdict {verdict!r}")
    return codes[verdict]


# --- checks --------------------------------------------------------------------------

def _check(name, value, threshold, status, explanation) -> dict:
    return {"name": name, "value": value, "threshold": threshold, "status": status,
            "explanation": explanation}


def _not_a_number(name: str, what: str, threshold: dict) -> dict:
    # NaN compares False with everything: without this a broken translator would PASS
    return _check(name, None, threshold, FAIL, f"{what} is not a number (NaN/inf)")


def _at_least(name: str, value: float, fail: float, warn: float, what: str) -> dict:
    if not np.isfinite(value):
        return _not_a_number(name, what, {"fail_below": fail, "warn_below": warn})
    if value < fail:
        status, why = FAIL, f"{what} is {value:.3f}, below the FAIL line {fail}"
    elif value < warn:
        status, why = WARN, f"{what} is {value:.3f}, below the WARN line {warn}"
    else:
        status, why = PASS, f"{what} is {value:.3f} (FAIL below {fail}, WARN below {warn})"
    return _check(name, round(float(value), 4), {"fail_below": fail, "warn_below": warn}, status, why)


def _at_most(name: str, value: float, fail: float, warn: float, what: str) -> dict:
    if not np.isfinite(value):
        return _not_a_number(name, what, {"fail_above": fail, "warn_above": warn})
    if value > fail:
        status, why = FAIL, f"{what} is {value:.3f}, above the FAIL line {fail}"
    elif value > warn:
        status, why = WARN, f"{what} is {value:.3f}, above the WARN line {warn}"
    else:
        status, why = PASS, f"{what} is {value:.3f} (FAIL above {fail}, WARN above {warn})"
    return _check(name, round(float(value), 4), {"fail_above": fail, "warn_above": warn}, status, why)


def _beats(name: str, translated: float, baseline: float, th: Thresholds, what: str,
           baseline_name: str) -> dict:
    """Translated vs doing nothing, as a ratio (1.0 = as good as doing nothing)."""
    ratio = translated / baseline if baseline > 1e-9 else (np.inf if translated > 0 else 1.0)
    fail, warn = th.min_ratio_vs_baseline, th.warn_ratio_vs_baseline
    if np.isnan(ratio):
        return _not_a_number(name, what, {"fail_below": fail, "warn_below": warn})
    numbers = (f"{what}: translated {translated:.3f} vs {baseline_name} {baseline:.3f} "
               f"(ratio {ratio:.2f})")
    if ratio < fail:
        status, why = FAIL, f"{numbers}, below the FAIL line {fail}: worse than doing nothing"
    elif ratio < warn:
        status, why = WARN, f"{numbers}, below the WARN line {warn}: no better than doing nothing"
    else:
        status, why = PASS, f"{numbers} (FAIL below {fail}, WARN below {warn})"
    value = round(float(ratio), 4) if np.isfinite(ratio) else None
    return _check(name, value, {"fail_below": fail, "warn_below": warn}, status, why)


def _skip(name: str, why: str) -> dict:
    return _check(name, None, None, SKIP, why)


def _evidence_check(summary: dict, th: Thresholds) -> dict:
    """The only check that can make the verdict PASS: search quality measured on
    evidence (labelled queries or sibling chunks), migrated vs the baseline, judged
    by the bootstrap interval of the nDCG ratio. Without evidence: WARN, unproven."""
    from .evidence import NONE, UNPROVEN
    ratio = summary.get("ratio") if summary else None
    if not summary or summary.get("kind", NONE) == NONE or not ratio:
        reason = (summary or {}).get("reason") or UNPROVEN
        return _check("search quality (evidence)", None, None, WARN,
                      f"{reason}: agreement checks alone cannot show that search is as good as "
                      "today; pass --queries/--qrels or --group-field (or --force to cut over anyway)")
    vs, k = ratio["vs"], summary.get("k", 10)
    if vs == "today":
        fail, warn, baseline = th.min_evidence_ratio, th.warn_evidence_ratio, "today"
    else:
        fail, warn, baseline = th.min_ratio_vs_reembed, th.warn_ratio_vs_reembed, "a full re-embed"
    threshold = {"fail_if_interval_below": fail, "pass_if_interval_at_or_above": warn}
    name = f"search quality vs {baseline} (nDCG@{k}, {summary['kind']})"
    lo, hi, r = ratio["low"], ratio["high"], ratio["ratio"]
    if not all(np.isfinite([lo, r])):
        return _not_a_number(name, "the nDCG ratio", threshold)
    numbers = (f"nDCG@{k} migrated / {baseline} = {r:.2f} (95% interval {lo:.2f}-{hi:.2f}) on "
               f"{summary.get('n_queries')} {summary['kind']} queries")
    if hi < fail:
        status, why = FAIL, f"{numbers}: the whole interval is below {fail}: search gets worse"
    elif lo >= warn:
        status, why = PASS, f"{numbers}: the whole interval is at or above {warn}"
    else:
        status, why = WARN, f"{numbers}: the interval straddles {fail}-{warn}: not shown as good"
    return _check(name, round(float(r), 4), threshold, status, why)


def _confidence_check(translator, th: Thresholds, has_pairs: bool = False) -> dict:
    conf = (translator.meta or {}).get("confidence")
    aligned = conf.get("aligned") if isinstance(conf, dict) else None
    threshold = {"required": th.require_aligned}
    if aligned is None and has_pairs:
        return _skip("translator confidence", "the translator reports no label-free confidence; "
                     "it is measured on held-out pairs instead (checks below)")
    if aligned is None:
        status = WARN if th.require_aligned else PASS
        return _check("translator confidence", None, threshold, status,
                      "the translator reports no label-free confidence (meta['confidence']"
                      "['aligned']); its alignment is unverified")
    detail = ", ".join(f"{k}={_fmt(v)}" for k, v in conf.items()
                       if k != "aligned" and isinstance(v, (int, float, str, bool)))
    detail = f" ({detail})" if detail else ""
    if aligned:
        return _check("translator confidence", True, threshold, PASS,
                      f"the translator's label-free confidence says aligned{detail}")
    status = FAIL if th.require_aligned else WARN
    return _check("translator confidence", False, threshold, status,
                  f"the translator's label-free confidence says NOT aligned{detail}: the "
                  "unsupervised alignment failed, refusing to write it")


# --- evaluate ------------------------------------------------------------------------

def evaluate(translator, old_sample, *, thresholds: Thresholds | None = None,
             metric: str = "cosine", held_out_pairs: tuple | None = None,
             queries_new=None, queries_old=None, relevant=None, new_sample=None,
             cost: dict | None = None, k: int = 10, n_queries: int = 1000,
             score_thresholds=None, seed: int = 0, evidence: dict | None = None,
             decision: dict | None = None) -> QualityReport:
    """Run every check the given data allows and return the report.

    old_sample       (n, d_old) stored vectors sampled from the collection.
    held_out_pairs   (old_h, new_h): the same texts encoded by both models.
    queries_new/old  query texts encoded by the new / old model (same rows).
    relevant         (n_queries,) index of each query's relevant document in
                     the documents searched by query texts: ``held_out_pairs[0]``
                     when given, else ``old_sample``; -1 for none.
    new_sample       a fresh new-model sample (enables distribution_match).
    score_thresholds old-space similarity thresholds the user filters on; the
                     report maps each to the new space.
    evidence         ``embedmigrate.evidence.summarise(...)``: search quality on
                     labelled queries or sibling chunks. Without it the verdict is
                     at most WARN (unproven): agreement checks can FAIL a broken
                     map but never PASS one on their own.
    """
    th = thresholds if thresholds is not None else Thresholds()
    if metric not in ("cosine", "dot", "l2"):
        raise UsageError(f"unknown metric '{metric}'", "use cosine, dot or l2")
    if k < 1:
        raise UsageError(f"k must be at least 1, got {k}", "pass k=10")
    old = check_vectors(old_sample, "old-model sample", translator.old_dim, min_rows=2 * k + 2)
    rng = np.random.default_rng(seed)
    translated = translator.translate(old)
    checks, mets, series = ([_confidence_check(translator, th, held_out_pairs is not None)],
                            {"k": k, "n_sample": len(old)}, {})
    broken = int((~np.isfinite(translated)).any(axis=1).sum())
    if broken:  # nothing else is meaningful; the gate refuses
        checks.append(_check("finite output", broken, {"max": 0}, FAIL,
                             f"{broken} of {len(old)} translated vectors contain NaN or inf"))
        return QualityReport(verdict=FAIL, checks=checks, metrics=mets,
                             translator=_translator_summary(translator), cost=_scrub(cost or {}),
                             evidence=_scrub(evidence or {}), decision=_scrub(decision or {}))

    # 1. stored vectors as queries, left out of the index so they don't find themselves
    nq = min(n_queries, len(old) // 5) or 1
    perm = rng.permutation(len(old))
    q, rest = perm[:nq], perm[nq:]
    before = M.top_k(old[q], old[rest], k, metric)
    after = M.top_k(translated[q], translated[rest], k, metric)
    per_query = M.overlap_per_row(before, after)
    series["overlap_per_query"] = per_query
    mets["overlap_at_k_stored"] = float(per_query.mean())
    checks.append(_at_least(f"overlap@{k} (stored vectors as queries)", per_query.mean(),
                            th.min_overlap_at_k, th.warn_overlap_at_k,
                            f"mean overlap of each stored vector's top-{k} before and after "
                            f"translation ({nq} queries)"))
    scores_before = M.top_k_scores(old[q], old[rest], before, metric)
    scores_after = M.top_k_scores(translated[q], translated[rest], after, metric)
    score_source = "stored vectors as queries"

    # 2. neighbourhoods, cycle, distribution
    nb = M.neighbourhood_overlap_per_point(old, translated, k, metric, seed=seed)
    series["neighbourhood_per_point"] = nb
    mets["neighbourhood_overlap"] = float(nb.mean())
    checks.append(_at_least(f"neighbourhood overlap@{k}", nb.mean(), th.min_neighbourhood_overlap,
                            th.warn_neighbourhood_overlap,
                            f"share of each point's {k} nearest neighbours kept "
                            f"({len(nb)} points)"))
    checks.append(_cycle_check(translator, old[perm[:5000]], th, mets))
    if new_sample is not None:
        new_s = check_vectors(new_sample, "new-model sample", translator.new_dim, min_rows=4)
        dm = M.distribution_match(translated, new_s, seed=seed)
        mets["distribution_match"] = dm
        checks.append(_at_least("distribution match", dm["score"], th.min_distribution_match,
                                th.warn_distribution_match,
                                "nearest-neighbour similarity of translated vectors to real "
                                f"new-model vectors, relative to new-to-new (precision "
                                f"{dm['precision']:.3f}, coverage {dm['coverage']:.3f})"))
    else:
        checks.append(_skip("distribution match", "no fresh new-model sample given"))

    # 3. ground truth from held-out pairs
    docs_old, docs_tr, docs_new = old, translated, None
    if held_out_pairs is not None:
        old_h = check_vectors(held_out_pairs[0], "held-out old vectors", translator.old_dim,
                              min_rows=2 * k + 2)
        new_h = check_vectors(held_out_pairs[1], "held-out new vectors", translator.new_dim)
        if len(new_h) != len(old_h):
            raise DataError(f"{len(old_h)} held-out old vectors but {len(new_h)} new ones",
                             "held-out pairs need one new-model vector per old-model vector")
        docs_old, docs_tr, docs_new = old_h, translator.translate(old_h), new_h
        checks += _ground_truth_checks(translator, docs_old, docs_tr, docs_new, th, k, metric,
                                       n_queries, rng, mets, series,
                                       with_query_texts=queries_new is not None)
    else:
        checks.append(_skip("ground truth top-1", "no held-out pairs given"))

    # 4. query texts
    if queries_new is not None and queries_old is not None:
        qn = check_vectors(queries_new, "new-model queries", translator.new_dim)
        qo = check_vectors(queries_old, "old-model queries", translator.old_dim)
        if len(qo) != len(qn):
            raise DataError(f"{len(qo)} old-model but {len(qn)} new-model queries",
                             "encode the same query texts with both models")
        rel = None if relevant is None else np.asarray(relevant, dtype=np.int64).ravel()
        if rel is not None and len(rel) != len(qn):
            raise DataError(f"{len(rel)} relevance labels for {len(qn)} queries",
                             "pass one relevant document index per query (-1 for none)")
        checks += _query_checks(translator, qo, qn, rel, docs_old, docs_tr, docs_new, th, k,
                                metric, mets, series)
        hits_old = M.top_k(qo, docs_old, k, metric)
        hits_new = M.top_k(qn, docs_tr, k, metric)
        scores_before = M.top_k_scores(qo, docs_old, hits_old, metric)
        scores_after = M.top_k_scores(qn, docs_tr, hits_new, metric)
        score_source = "query texts (old model on old vectors, new model on translated vectors)"
    elif queries_new is not None or queries_old is not None:
        checks.append(_skip("query-text checks", "query texts need both encodings "
                                                 "(queries_new and queries_old)"))
    else:
        checks.append(_skip("query-text checks", "no query texts given (stored vectors "
                                                 "and held-out documents serve as queries)"))

    # 5. score scale
    series["scores_before"], series["scores_after"] = scores_before.ravel(), scores_after.ravel()
    mets["score_shift"] = _score_shift(scores_before.ravel(), scores_after.ravel(), metric,
                                       score_thresholds, score_source)

    # 6. evidence last: the only check that can PASS the gate
    checks.append(_evidence_check(evidence, th))
    verdict = max((c["status"] for c in checks), key=lambda s: _SEVERITY[s])
    verdict = PASS if verdict == SKIP else verdict
    return QualityReport(verdict=verdict, checks=checks, metrics=_scrub(mets),
                         translator=_translator_summary(translator), cost=_scrub(cost or {}),
                         series=series, evidence=_scrub(evidence or {}),
                         decision=_scrub(decision or {}))


def _cycle_check(translator, old, th, mets) -> dict:
    try:
        err = M.cycle_error(translator, old)
    except NotImplementedError:
        return _skip("cycle error", "the translator has no inverse")
    mets["cycle_error"] = err
    return _at_most("cycle error", err, th.max_cycle_error, th.warn_cycle_error,
                    "1 - cosine(x, inverse(translate(x)))")


def _ground_truth_checks(translator, old_h, tr_h, new_h, th, k, metric, n_queries, rng, mets,
                         series, with_query_texts) -> list:
    ranks = M.true_ranks(tr_h, new_h)
    series["ranks"] = ranks
    gt = {"n_pairs": len(old_h), "mean_cos": M.mean_cosine(tr_h, new_h),
          "top1": float(np.mean(ranks == 1)), "mean_rank": float(np.mean(ranks)),
          "candidates": int(min(8192, len(new_h)))}
    same_dim = translator.old_dim == translator.new_dim
    if same_dim:
        id_ranks = M.true_ranks(old_h, new_h)
        gt["identity_top1"] = float(np.mean(id_ranks == 1))
        gt["identity_mean_cos"] = M.mean_cosine(old_h, new_h)
    mets["ground_truth"] = gt
    checks = [_at_least("ground truth top-1", gt["top1"], th.min_top1, th.warn_top1,
                        f"share of held-out translations whose nearest true new-model vector "
                        f"is their own, among {gt['candidates']} (mean rank "
                        f"{gt['mean_rank']:.2f}, mean cos {gt['mean_cos']:.3f})")]
    if with_query_texts:
        return checks  # recall retained and "beats doing nothing" use the query texts

    # documents as queries: new-model vectors of some held-out texts search the rest
    nq = min(n_queries, len(old_h) // 5) or 1
    perm = rng.permutation(len(old_h))
    q, rest = perm[:nq], perm[nq:]
    truth = M.top_k(new_h[q], new_h[rest], k, metric)
    retained = M.overlap_at_k(M.top_k(new_h[q], tr_h[rest], k, metric), truth)
    old_native = M.overlap_at_k(M.top_k(old_h[q], old_h[rest], k, metric), truth)
    gt.update({"recall_retained": retained, "old_native_retained": old_native,
               "recall_retained_source": "held-out documents as queries"})
    checks.append(_at_least(f"recall@{k} retained", retained, th.min_recall_retained,
                            th.warn_recall_retained,
                            f"overlap of the translated index's top-{k} with the true "
                            f"new-model top-{k} (held-out documents as queries)"))
    checks.append(_beats("beats old-native (recall retained)", retained, old_native, th,
                         f"recall@{k} retained", "old-native"))
    if same_dim:
        identity = M.overlap_at_k(M.top_k(new_h[q], old_h[rest], k, metric), truth)
        gt["identity_retained"] = identity
        checks.append(_beats("beats identity (recall retained)", retained, identity, th,
                             f"recall@{k} retained", "identity (old vectors, new queries)"))
    return checks


def _query_checks(translator, qo, qn, rel, docs_old, docs_tr, docs_new, th, k, metric, mets,
                  series) -> list:
    hits_old = M.top_k(qo, docs_old, k, metric)       # what users get today
    hits_tr = M.top_k(qn, docs_tr, k, metric)         # what they get after cutover
    per_query = M.overlap_per_row(hits_old, hits_tr)
    series["query_overlap_per_query"] = per_query
    qm = {"n_queries": len(qn), "overlap_with_old_native": float(per_query.mean())}
    mets["queries"] = qm
    checks = [_at_least(f"overlap@{k} (query texts)", per_query.mean(), th.min_overlap_at_k,
                        th.warn_overlap_at_k,
                        f"mean overlap of old-model results today and new-model results on "
                        f"the translated index ({len(qn)} queries)")]
    same_dim = translator.old_dim == translator.new_dim
    if docs_new is not None:
        truth = M.top_k(qn, docs_new, k, metric)
        qm["recall_retained"] = M.overlap_at_k(hits_tr, truth)
        qm["old_native_retained"] = M.overlap_at_k(hits_old, truth)
        checks.append(_at_least(f"recall@{k} retained", qm["recall_retained"],
                                th.min_recall_retained, th.warn_recall_retained,
                                f"overlap of the translated index's top-{k} with the true "
                                f"new-model top-{k} (query texts)"))
        checks.append(_beats("beats old-native (recall retained)", qm["recall_retained"],
                             qm["old_native_retained"], th, f"recall@{k} retained of the true "
                             "new-model results", "old-native"))
        if same_dim:
            qm["identity_retained"] = M.overlap_at_k(M.top_k(qn, docs_old, k, metric), truth)
            checks.append(_beats("beats identity (recall retained)", qm["recall_retained"],
                                 qm["identity_retained"], th, f"recall@{k} retained",
                                 "identity (old vectors, new queries)"))
    if rel is not None:
        keep = (rel >= 0) & (rel < len(docs_old))
        if not keep.any():
            checks.append(_skip(f"beats old-native (nDCG@{k})",
                                "no query has a relevant document among the searched documents"))
            return checks
        key = f"ndcg@{k}"
        translated = M.relevance_metrics(qn[keep], docs_tr, rel[keep], k, metric)
        old_native = M.relevance_metrics(qo[keep], docs_old, rel[keep], k, metric)
        qm["n_labelled"] = int(keep.sum())
        qm["translated"], qm["old_native"] = translated, old_native
        if docs_new is not None:
            qm["new_native"] = M.relevance_metrics(qn[keep], docs_new, rel[keep], k, metric)
        checks.append(_beats(f"beats old-native (nDCG@{k})", translated[key], old_native[key],
                             th, f"nDCG@{k} on {int(keep.sum())} labelled queries"
                             + (f", new-native ceiling {qm['new_native'][key]:.3f}"
                                if docs_new is not None else ""), "old-native"))
        if same_dim:
            qm["identity"] = M.relevance_metrics(qn[keep], docs_old, rel[keep], k, metric)
            checks.append(_beats(f"beats identity (nDCG@{k})", translated[key],
                                 qm["identity"][key], th, f"nDCG@{k}",
                                 "identity (old vectors, new queries)"))
    return checks


def _score_shift(before: np.ndarray, after: np.ndarray, metric: str, user_thresholds,
                 source: str) -> dict:
    shift = M.score_shift(before, after)
    if user_thresholds is not None:
        olds = np.asarray(list(user_thresholds), dtype=np.float64)
    else:  # round values spanning the observed old scores
        olds = np.unique(np.round(np.quantile(before, [0.05, 0.25, 0.5, 0.75, 0.95]), 2))
    olds = np.sort(olds)
    news = M.threshold_mapping(before, after, olds)
    shift["threshold_mapping"] = [{"old": round(float(o), 4), "new": round(float(n), 4)}
                                  for o, n in zip(olds, news)]
    shift["source"] = source
    shift["score"] = "distance (lower is closer)" if metric == "l2" else metric + " similarity"
    return shift


def _translator_summary(translator) -> dict:
    meta = dict(translator.meta or {})
    summary = {"method": translator.method or type(translator).__name__,
               "old_dim": translator.old_dim, "new_dim": translator.new_dim}
    choice = meta.get("auto_choice")
    if isinstance(choice, dict) and choice.get("method"):  # name what `auto` chose, and why
        summary["auto_chose"] = choice["method"]
        summary["auto_reason"] = choice.get("reason", "")
    for key in ("pairs_used", "pairs_source"):
        if key in meta:
            summary[key] = meta[key]
    for key in ("selection", "confidence", "n_old", "n_new", "n_pairs", "fingerprint",
                "old_model", "new_model"):
        if key in meta:
            summary[key] = meta[key]
    return _scrub(summary)


__all__ = ["Thresholds", "evaluate", "exit_code_for", "PASS", "WARN", "FAIL", "SKIP"]
