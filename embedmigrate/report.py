"""The quality report: the gate's verdict, evidence, decision and checks as
JSON, Markdown and a self-contained HTML page (policy: ``embedmigrate.gate``).

    >>> rep = gate.evaluate(translator, old_sample, evidence=summary, ...)
    >>> rep.answer                       # "Yes: search is at least as good ..."
    >>> rep.write("reports/docs")        # report.html, report.json, report.md

The report says whether it comes from a dry run or an apply and what was
written; secrets that slipped into any value are scrubbed from every output.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import files
from .errors import file_error
from .redact import scrub_secrets  # one redaction scheme for URIs, errors and reports

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
_SEVERITY = {PASS: 0, SKIP: 0, WARN: 1, FAIL: 2}
REPORT_FILES = {"html": "report.html", "json": "report.json", "md": "report.md"}


# --- secrets -------------------------------------------------------------------

def _scrub(obj):
    if isinstance(obj, str):
        return scrub_secrets(obj)
    if isinstance(obj, dict):
        return {str(k): _scrub(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_scrub(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return _scrub(obj.tolist())
    if isinstance(obj, Path):
        return scrub_secrets(str(obj))
    if isinstance(obj, float) and not np.isfinite(obj):
        return None  # JSON has no NaN/inf
    return obj


# --- the report -------------------------------------------------------------------

@dataclass
class QualityReport:
    verdict: str
    checks: list  # [{name, value, threshold, status, explanation}]
    metrics: dict
    translator: dict = field(default_factory=dict)  # method, selection, confidence, ...
    cost: dict = field(default_factory=dict)
    # per-point values for the plots (not serialised)
    series: dict = field(default_factory=dict, repr=False)
    evidence: dict = field(default_factory=dict)  # embedmigrate.evidence.summarise / no_evidence
    decision: dict = field(default_factory=dict)  # embedmigrate.evidence.decide
    mode: str = "dry-run"                         # "dry-run" | "apply"
    written: dict = field(default_factory=dict)   # apply: what was written where
    cutover: dict = field(default_factory=dict)   # apply: done / blocked / forced

    @property
    def answer(self) -> str:
        """One plain sentence: is search better after the migration?"""
        from .evidence import no_evidence, sentence
        return sentence(self.evidence or no_evidence(), self.verdict)

    @property
    def reasons(self) -> list[str]:
        """One line per check that did not pass, worst first."""
        bad = sorted((c for c in self.checks if c["status"] in (FAIL, WARN)),
                     key=lambda c: -_SEVERITY[c["status"]])
        return [f"{c['status']} {c['name']}: {c['explanation']}" for c in bad]

    def add_check(self, name: str, value, threshold, passed: bool, explanation: str) -> None:
        """Add a PASS/FAIL check computed outside ``evaluate`` (e.g. by apply's
        verification of the written target) and update the verdict."""
        self.checks.append({"name": name, "value": value, "threshold": threshold,
                            "status": PASS if passed else FAIL, "explanation": explanation})
        worst = max((c["status"] for c in self.checks), key=lambda st: _SEVERITY[st])
        self.verdict = PASS if worst == SKIP else worst

    @property
    def exit_code(self) -> int:
        from .gate import exit_code_for
        return exit_code_for(self.verdict)

    def to_dict(self) -> dict:
        ev = self.evidence or {}
        quality = {k: ev[k] for k in ("baseline", "migrated_road", "ndcg", "ratio", "roads",
                                      "description", "query_side", "n_queries", "k") if k in ev}
        return _scrub({"verdict": self.verdict, "evidence": ev.get("kind", "none"),
                       "answer": self.answer, "search_quality": quality, "mode": self.mode,
                       "written": self.written, "cutover": self.cutover,
                       "reasons": self.reasons, "checks": self.checks, "decision": self.decision,
                       "metrics": self.metrics, "translator": self.translator, "cost": self.cost})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def to_markdown(self) -> str:
        d = self.to_dict()
        out = [f"# embedmigrate quality report: **{d['verdict']}**", "", _what_happened(d), ""]
        out += ["## Is search better after the migration?", "", d["answer"], "",
                f"Evidence: **{d['evidence']}**"
                + (f" ({d['search_quality']['description']})" if d["search_quality"].get("description")
                   else ""), ""]
        rows = _quality_rows(d)
        if rows:
            out += ["| index | nDCG@10 | 95% interval |", "|---|---|---|"]
            out += [f"| {name} | {m:.3f} | {lo:.3f}-{hi:.3f} |" for name, m, lo, hi in rows] + [""]
        if d["decision"]:
            out += ["## Which road?", "", f"Recommendation: **{d['decision']['recommendation']}**: "
                    f"{_md_cell(d['decision']['reason'])}", "",
                    "| road | what | nDCG@10 | vs today | CPU time | GPU time (estimate) | note |",
                    "|---|---|---|---|---|---|---|"]
            for r in d["decision"]["rows"]:
                q = r["ndcg"]
                out.append(f"| {r['road']} | {_md_cell(r['what'])} | "
                           f"{'–' if not q else format(q['mean'], '.3f')} | {_fmt(r['ratio_vs_today'])} | "
                           f"{_fmt_seconds(r['cpu_seconds'])} | {_fmt_seconds(r['gpu_seconds_estimate'])} "
                           f"| {_md_cell(r['note'])} |")
            out += ["", d["decision"]["cost_basis"], ""]
        if d["reasons"]:
            out += ["## Why", ""] + [f"- {r}" for r in d["reasons"]] + [""]
        out += ["## Checks", "", "| check | value | threshold | status | explanation |",
                "|---|---|---|---|---|"]
        for c in d["checks"]:
            out.append(f"| {c['name']} | {_fmt(c['value'])} | {_fmt_threshold(c['threshold'])} "
                       f"| {c['status']} | {_md_cell(c['explanation'])} |")
        mapping = d["metrics"].get("score_shift", {}).get("threshold_mapping", [])
        if mapping:
            out += ["", "## Similarity thresholds", "",
                    "Translation keeps rankings, not score scales. A fixed threshold on the old "
                    "scores keeps the same share of hits at:", "", "| old | new |", "|---|---|"]
            out += [f"| {_fmt(m['old'])} | {_fmt(m['new'])} |" for m in mapping]
        out += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        out += [f"| {k} | {_md_cell(_fmt(v))} |" for k, v in _flatten(d["metrics"])
                if not k.startswith("score_shift.threshold_mapping")]
        out += ["", "## Translator", "", "| field | value |", "|---|---|"]
        out += [f"| {k} | {_md_cell(_fmt(v))} |" for k, v in _flatten(d["translator"])]
        if d["cost"]:
            out += ["", "## Estimated cost", "", "| item | value |", "|---|---|"]
            out += [f"| {k} | {_md_cell(_fmt(v))} |" for k, v in _flatten(d["cost"])]
        return scrub_secrets("\n".join(out) + "\n")

    def to_html(self) -> str:
        return scrub_secrets(_render_html(self))

    def write(self, out_dir) -> dict:
        """Write report.html, report.json and report.md into ``out_dir``. All three
        are written to temporary files first and renamed only when every one is
        complete, so a full disk leaves the previous report set, never a torn file
        or a mix of old and new. Returns {"html": path, ...}."""
        texts = {"json": self.to_json(), "md": self.to_markdown(), "html": self.to_html()}
        out_dir = Path(out_dir)
        staged: dict = {}
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            for kind, text in texts.items():
                staged[kind] = _write_temp(out_dir / REPORT_FILES[kind], text)
            paths = {}
            for kind in list(staged):
                paths[kind] = out_dir / REPORT_FILES[kind]
                files.commit(staged.pop(kind), paths[kind])
        except OSError as e:
            for tmp in staged.values():
                files.discard(tmp)
            raise file_error(e, out_dir, elsewhere=REPORT_ELSEWHERE) from None
        return paths


# where a report can go instead (dry runs take --report-dir; apply writes next to the plan)
REPORT_ELSEWHERE = "pass --report-dir DIR to the dry run, or keep the plan in a writable folder"


def _write_temp(path: Path, text: str) -> Path:
    """``text`` in a complete, fsynced, shareable (0644) temporary file next to
    ``path`` (removed on failure)."""
    return files.stage(path, lambda fh: fh.write(text.encode("utf-8")))


# --- formatting -------------------------------------------------------------------------

def _what_happened(d: dict) -> str:
    """Whether this report comes from a dry run or an apply, and what was written."""
    if d["mode"] != "apply":
        return "Dry run: measured on a sample; nothing was written to any database."
    w = d.get("written") or {}
    text = (f"Apply: {w.get('written', '?')} points written to {w.get('target', 'the target')}; "
            f"the source was only read.")
    c = d.get("cutover") or {}
    if c.get("status") == "done":
        text += " Cut over" + (" by --force, against the gate's verdict." if c.get("forced") else ".")
    elif c.get("status"):
        text += f" Cutover: {c['status']}."
    return text


def _quality_rows(d: dict) -> list:
    """(label, mean, low, high) of today / migrated / full re-embed, where measured."""
    q = d.get("search_quality", {}).get("ndcg") or {}
    labels = (("today", "today (old index, old queries)"), ("migrated", "after the migration"),
              ("reembed", "full re-embed"))
    return [(label, q[key]["mean"], q[key]["low"], q[key]["high"]) for key, label in labels
            if q.get(key)]


def decision_lines(decision: dict) -> list[str]:
    """The decision table for a terminal: one line per road, then the recommendation."""
    if not decision or not decision.get("rows"):
        return []
    out = [f"{'road':10s} {'nDCG@10':>8s} {'vs today':>8s} {'CPU':>9s} {'GPU (est.)':>10s}  what"]
    for row in decision["rows"]:
        q, r = row["ndcg"], row["ratio_vs_today"]
        out.append(f"{row['road']:10s} {('–' if not q else format(q['mean'], '.3f')):>8s} "
                   f"{('–' if r is None else format(r, '.2f')):>8s} "
                   f"{_fmt_seconds(row['cpu_seconds']):>9s} "
                   f"{_fmt_seconds(row['gpu_seconds_estimate']):>10s}  {row['what']}")
    if decision.get("recommendation"):
        out.append(f"recommendation: {decision['recommendation']}: {decision['reason']}")
    else:  # plan: nothing measured yet
        out.append(decision["reason"])
    return out


def _fmt_seconds(s) -> str:
    if s is None:
        return "–"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _fmt_threshold(t) -> str:
    if not t:
        return "–"
    return ", ".join(f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in t.items())


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _flatten(d, prefix="") -> list:
    out = []
    for k, v in (d or {}).items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flatten(v, name + ".")
        else:
            out.append((name, v))
    return out


# --- HTML ---------------------------------------------------------------------------------

_COLOURS = {PASS: "#1a7f37", WARN: "#b35900", FAIL: "#c62828", SKIP: "#6b7280"}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328;
background:#f6f8fa;line-height:1.45}
header{color:#fff;padding:18px 28px}
header h1{margin:0;font-size:26px}
header p{margin:4px 0 0;opacity:.95}
main{padding:8px 28px 40px;max-width:1180px}
section{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:12px 18px;margin:16px 0}
h2{font-size:18px;margin:4px 0 10px}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{border-bottom:1px solid #e5e7eb;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f3f4f6}
td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
.badge{display:inline-block;color:#fff;border-radius:4px;padding:1px 8px;font-weight:600;font-size:12px}
.plots{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;flex:1 1 520px}
figure img{width:100%;height:auto;border:1px solid #e5e7eb}
figcaption{font-size:13px;color:#57606a}
ul.reasons li{margin:3px 0}
"""


def _render_html(rep: QualityReport) -> str:
    d = rep.to_dict()
    esc = html.escape
    colour = _COLOURS[d["verdict"]]
    rows = "".join(
        f"<tr><td>{esc(c['name'])}</td><td class='num'>{esc(_fmt(c['value']))}</td>"
        f"<td>{esc(_fmt_threshold(c['threshold']))}</td>"
        f"<td><span class='badge' style='background:{_COLOURS[c['status']]}'>{c['status']}</span></td>"
        f"<td>{esc(c['explanation'])}</td></tr>" for c in d["checks"])
    reasons = "".join(f"<li>{esc(r)}</li>" for r in d["reasons"]) or "<li>all checks passed</li>"
    mapping = d["metrics"].get("score_shift", {}).get("threshold_mapping", [])
    mapping_rows = "".join(f"<tr><td class='num'>{esc(_fmt(m['old']))}</td>"
                           f"<td class='num'>{esc(_fmt(m['new']))}</td></tr>" for m in mapping)

    def kv_table(items):
        return "<table><tr><th>name</th><th>value</th></tr>" + "".join(
            f"<tr><td>{esc(k)}</td><td class='num'>{esc(_fmt(v))}</td></tr>" for k, v in items
        ) + "</table>"

    metric_items = [(k, v) for k, v in _flatten(d["metrics"])
                    if not k.startswith("score_shift.threshold_mapping")]
    figures = "".join(
        f"<figure><img alt='{esc(title)}' src='data:image/png;base64,{png}'>"
        f"<figcaption>{esc(caption)}</figcaption></figure>"
        for title, caption, png in _plots(rep))
    cost = f"<section><h2>Estimated cost</h2>{kv_table(_flatten(d['cost']))}</section>" \
        if d["cost"] else ""
    method = d["translator"].get("method", "")
    if d["translator"].get("auto_chose"):
        method = f"{method} (chose {d['translator']['auto_chose']})"
    quality_rows = "".join(f"<tr><td>{esc(name)}</td><td class='num'>{m:.3f}</td>"
                           f"<td class='num'>{lo:.3f}-{hi:.3f}</td></tr>"
                           for name, m, lo, hi in _quality_rows(d))
    quality_table = (f"<table><tr><th>index</th><th>nDCG@10</th><th>95% interval</th></tr>"
                     f"{quality_rows}</table>" if quality_rows else "")
    desc = d["search_quality"].get("description")
    decision = ""
    if d["decision"]:
        dec = d["decision"]
        drows = "".join(
            f"<tr><td>{esc(r['road'])}</td><td>{esc(r['what'])}</td>"
            f"<td class='num'>{'–' if not r['ndcg'] else format(r['ndcg']['mean'], '.3f')}</td>"
            f"<td class='num'>{esc(_fmt(r['ratio_vs_today']))}</td>"
            f"<td class='num'>{esc(_fmt_seconds(r['cpu_seconds']))}</td>"
            f"<td class='num'>{esc(_fmt_seconds(r['gpu_seconds_estimate']))}</td>"
            f"<td>{esc(r['note'])}</td></tr>" for r in dec["rows"])
        decision = (f"<section id='decision' data-recommendation='{esc(dec['recommendation'])}'>"
                    f"<h2>Which road?</h2><p>Recommendation: <b>{esc(dec['recommendation'])}</b>: "
                    f"{esc(dec['reason'])}</p><table><tr><th>road</th><th>what</th><th>nDCG@10</th>"
                    f"<th>vs today</th><th>CPU time</th><th>GPU time (estimate)</th><th>note</th></tr>"
                    f"{drows}</table><p>{esc(dec['cost_basis'])}</p></section>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>embedmigrate quality report: {d['verdict']}</title>
<style>{_CSS}</style></head>
<body>
<header id="verdict" data-verdict="{d['verdict']}" style="background:{colour}">
<h1>Quality gate: {d['verdict']}</h1>
<p>translator {esc(str(method))}, {d['metrics'].get('n_sample', 0)} sampled vectors,
k = {d['metrics'].get('k')}. {esc(_what_happened(d))}</p></header>
<main>
<section id="answer" data-evidence="{esc(d['evidence'])}"><h2>Is search better after the migration?</h2>
<p>{esc(d['answer'])}</p><p>Evidence: <b>{esc(d['evidence'])}</b>{esc(f' ({desc})' if desc else '')}</p>
{quality_table}</section>
{decision}
<section><h2>Why</h2><ul class="reasons">{reasons}</ul></section>
<section><h2>Checks</h2><table><tr><th>check</th><th>value</th><th>threshold</th>
<th>status</th><th>explanation</th></tr>{rows}</table></section>
<section><h2>Plots</h2><div class="plots">{figures}</div></section>
<section><h2>Similarity thresholds</h2><p>Translation keeps rankings, not score scales.
A fixed threshold on old scores keeps the same share of hits at the new value
({esc(str(d['metrics'].get('score_shift', {}).get('source', '')))}).</p>
<table><tr><th>old threshold</th><th>new threshold</th></tr>{mapping_rows}</table></section>
<section><h2>Metrics</h2>{kv_table(metric_items)}</section>
<section><h2>Translator</h2>{kv_table(_flatten(d['translator']))}</section>
{cost}
</main></body></html>
"""


def _plots(rep: QualityReport) -> list:
    """(title, caption, base64 PNG) for each plot the data allows."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    s, k = rep.series, rep.metrics.get("k", 10)
    out = []

    def png(fig) -> str:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        return base64.b64encode(buf.getvalue()).decode("ascii")

    bins = (np.arange(k + 2) - 0.5) / k  # one bar per possible overlap j/k
    if "overlap_per_query" in s:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.hist(s["overlap_per_query"], bins=bins, color="#4c72b0", alpha=0.8,
                label="stored vectors as queries")
        if "query_overlap_per_query" in s:
            ax.hist(s["query_overlap_per_query"], bins=bins, color="#dd8452", alpha=0.6,
                    label="query texts")
        ax.set_xlabel(f"overlap@{k} of top-{k} before vs after")
        ax.set_ylabel("queries")
        ax.legend()
        out.append(("overlap per query", f"Per-query overlap@{k}: how many of today's top-{k} "
                    "results survive the migration.", png(fig)))
    if "scores_before" in s:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        both = np.concatenate([s["scores_before"], s["scores_after"]])
        sb = np.linspace(both.min(), both.max(), 50) if both.size and np.ptp(both) > 0 else 20
        ax.hist(s["scores_before"], bins=sb, alpha=0.6, color="#4c72b0", label="before (old)")
        ax.hist(s["scores_after"], bins=sb, alpha=0.6, color="#dd8452", label="after (translated)")
        for m in rep.metrics.get("score_shift", {}).get("threshold_mapping", []):
            ax.axvline(m["old"], color="#4c72b0", ls=":", lw=1)
            ax.axvline(m["new"], color="#dd8452", ls=":", lw=1)
        ax.set_xlabel(f"top-{k} {rep.metrics.get('score_shift', {}).get('score', 'score')}")
        ax.set_ylabel("hits")
        ax.legend()
        out.append(("score distribution", "Top-k scores before and after; dotted lines pair "
                    "each old threshold with its quantile-matched new value.", png(fig)))
    if "neighbourhood_per_point" in s:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.hist(s["neighbourhood_per_point"], bins=bins, color="#55a868")
        ax.set_xlabel(f"share of {k} nearest neighbours kept")
        ax.set_ylabel("points")
        out.append(("neighbourhood overlap", "Neighbourhood preservation per sampled point.",
                    png(fig)))
    if "ranks" in s:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        r = np.asarray(s["ranks"])
        edges = np.array([e for e in (1, 2, 3, 6, 11, 101, 1001) if e <= r.max()] + [r.max() + 1])
        counts = np.histogram(r, bins=edges)[0]
        labels = [f"{a}" if b - a == 1 else f"{a}-{b - 1}" for a, b in zip(edges[:-1], edges[1:])]
        ax.bar(labels, counts, color="#8172b3")
        ax.tick_params(axis="x", labelsize=8, labelrotation=20)
        ax.set_yscale("log")  # a good translator puts nearly everything at rank 1
        ax.set_xlabel("rank of the true new-model vector (1 = best)")
        ax.set_ylabel("held-out pairs")
        out.append(("ground-truth ranks", "Rank of each held-out text's true new-model vector "
                    "among the candidates, given its translation.", png(fig)))
    return out


_GATE_NAMES = ("Thresholds", "evaluate", "exit_code_for", "_evidence_check")


def __getattr__(name):
    """The gate's policy lives in ``embedmigrate.gate``; these names stay importable
    from here (imported lazily: the gate builds on this module)."""
    if name in _GATE_NAMES:
        from . import gate
        return getattr(gate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["QualityReport", "scrub_secrets", "decision_lines", "PASS", "WARN", "FAIL", "SKIP",
           *_GATE_NAMES[:3]]
