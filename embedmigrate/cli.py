"""Command line: parses arguments, calls ``embedmigrate.commands``, prints.

Exit codes: 0 ok / PASS, 1 FAIL or a failed step, 2 usage (bad arguments, plan
or URI), 3 WARN, 4 not found, 5 conflict (target exists, job locked),
6 unavailable (server unreachable), 7 bad data, 8 apply stopped by a budget
(--max-docs/--max-seconds/--max-tokens; progress saved, re-run to resume), 130 interrupted.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import sys
import warnings

import click

from . import __version__
from .errors import EmbedMigrateError, ExitCode, file_error

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
# Qdrant local mode warns, mid-progress-bar, when a collection passes 20,000 points: it is
# about query speed, which a migration does not need (docs/benchmarks.md has its apply costs)
warnings.filterwarnings("ignore", message="Local mode is not recommended", category=UserWarning)

# a write failing for lack of space or permission (write() errors carry no file name)
FILE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS)

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for machines).")


_json_out = None  # the real stdout while a --json command runs (see json_stdout)


def emit(result: dict, as_json: bool, human) -> None:
    if as_json:
        echo_json(json.dumps(result, indent=2, default=str))
    else:
        human(result)


def echo_json(text: str) -> None:
    click.echo(text, file=_json_out)


@contextlib.contextmanager
def json_stdout(active: bool):
    """With --json, stdout carries exactly one JSON object: anything else written
    to it meanwhile (library chatter such as Ray's worker notices, also from
    threads and child processes) is sent to stderr at the file-descriptor level."""
    global _json_out
    try:
        fd = sys.stdout.fileno() if active else -1
    except (AttributeError, OSError, ValueError):  # captured stdout (click's CliRunner)
        fd = -1
    if fd != 1:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    _json_out = os.fdopen(os.dup(saved), "w")
    try:
        yield
    finally:
        sys.stdout.flush()
        _json_out.flush()
        _json_out.close()
        _json_out = None
        os.dup2(saved, 1)
        os.close(saved)


def handled(fn):
    """Turn library errors into one line + exit code (JSON with --json)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        as_json = kwargs.get("as_json", False)
        with json_stdout(as_json):
            return _run_handled(fn, as_json, args, kwargs)
    return wrapper


def _run_handled(fn, as_json, args, kwargs):
    try:
        return fn(*args, **kwargs)
    except EmbedMigrateError as e:
        if as_json:
            echo_json(json.dumps(e.to_dict()))
        else:
            click.echo(f"error: {e.one_line()}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:  # a file the library did not anticipate: disk full, permissions
        if e.filename is None and e.errno not in FILE_ERRNOS:  # a socket ...: show it in full
            raise
        err = file_error(e, action="use")
        if as_json:
            echo_json(json.dumps(err.to_dict()))
        else:
            click.echo(f"error: {err.one_line()}", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        msg = "interrupted; progress is saved: re-run the same command to resume"
        if as_json:
            echo_json(json.dumps({"error": "Interrupted", "message": msg, "exit_code": 130}))
        else:
            click.echo(f"error: {msg}", err=True)
        sys.exit(130)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="embedmigrate")
def main():
    """Migrate a vector collection to a new embedding model without re-encoding it.

    \b
    embedmigrate plan SOURCE_URI --to-model MODEL -o plan.toml
    embedmigrate train plan.toml
    embedmigrate apply plan.toml --dry-run     # quality report, writes nothing
    embedmigrate apply plan.toml               # rewrite, verify, gate, cut over
    embedmigrate rollback plan.toml
    """


@main.command()
@click.argument("source")
@click.option("--to-model", required=True, help="New model: minilm, mpnet, sre, e5-small, wordllama, "
              "st:/path, openai+http://host/v1?model=M&key_env=VAR.")
@click.option("--from-model", default="", help="Old model (optional): enables query-text checks.")
@click.option("--texts", default="", help="File of fresh texts for the new model (.txt/.jsonl/.csv/.parquet).")
@click.option("--text-column", default="", help="Column/field of --texts holding the text.")
@click.option("--text-field", default=None, help="Field of the source holding each point's text (pairs).")
@click.option("--target", default="", help="Target collection name (default SOURCE__MODEL).")
@click.option("--live-name", default="", help="Name the application queries (cutover target).")
@click.option("--method", default="auto", help="Translator: auto, linear, vec2vec, procrustes, ridge, mlp, semi.")
@click.option("--sample", "sample_old", type=int, default=None, help="Vectors to sample from the source.")
@click.option("--sample-new", type=int, default=None, help="Fresh texts to encode.")
@click.option("--pairs", type=int, default=None, help="Stored texts to re-encode as pairs.")
@click.option("--queries", default="", help="Labelled queries for the gate: BEIR queries.jsonl "
              "({\"_id\", \"text\"}) with --qrels, or .jsonl lines with text and doc_id.")
@click.option("--qrels", default="", help="BEIR qrels .tsv (query-id, corpus-id = point id, score).")
@click.option("--group-field", default="", help="Payload field grouping points by source document: "
              "its siblings are the gate's evidence when there are no labels.")
@click.option("--baseline", type=click.Choice(["today", "none"]), default="today", show_default=True,
              help="none: the old model is being retired; compare with a full re-embed instead.")
@click.option("--checkpoint", default="", help="Checkpoint dir (default checkpoints/SOURCE-to-MODEL).")
@click.option("--strategy", type=click.Choice(["translate", "reembed", "hybrid", "auto"]), default="auto",
              show_default=True, help="translate the stored vectors; reembed the stored texts with the new "
              "model; hybrid: translate, cut over, then re-embed in the background (embedmigrate run).")
@click.option("-o", "--output", default="plan.toml", show_default=True)
@json_option
@handled
def plan(source, to_model, from_model, texts, text_column, text_field, target, live_name, method,
         sample_old, sample_new, pairs, queries, qrels, group_field, baseline, checkpoint,
         strategy, output, as_json):
    """Inspect SOURCE and write a commented plan file."""
    from . import commands
    from .plan import load_plan
    result = commands.plan(source, to_model, output=output, texts=texts, text_column=text_column,
                           text_field=text_field, from_model=from_model, target=target,
                           live_name=live_name, method=method, sample_old=sample_old,
                           sample_new=sample_new, pairs=pairs, queries=queries, checkpoint=checkpoint,
                           qrels=qrels, group_field=group_field, baseline=baseline,
                           strategy=strategy)

    def human(r):
        s, e = r["source"], r["estimate"]
        click.echo(f"source   {s['engine']} '{s['name']}': {s['count']} vectors, dim {s['dim']}, {s['metric']}")
        click.echo(f"target   {r['target']} (dim {r['new_dim']}, model {r['new_model']})")
        smp = r["sample"]
        click.echo(f"train    {r['method']} on {smp['old']} sampled vectors, {smp['pairs']} pairs "
                   f"({smp['holdout']} held out), {smp['new']} fresh texts; "
                   f"~{e['train_minutes_cpu']} min CPU (~{e['train_minutes_gpu_estimate']} min GPU, estimated)")
        click.echo(f"apply    ~{e['apply_minutes']} min, target ~{e['target_disk_mb']} MB")
        if r.get("decision"):
            from .report import decision_lines
            for line in decision_lines(r["decision"]):
                click.echo(f"  {line}")
        click.echo(f"strategy {r['strategy_resolved']} ({r['strategy_reason']})")
        click.echo(f"cutover  {r['cutover']} (only after the quality gate passes)")
        click.echo(f"evidence {r['evidence']}" + ("" if r["evidence"] != "none" else
                   ": the gate can say at most WARN (unproven); give --queries/--qrels or --group-field"))
        prop = r.get("group_field_proposed")
        if prop:
            st = prop["stats"]
            click.echo(f"proposed --group-field {prop['field']} ({st['groups_of_2_or_more']} groups of "
                       f"2+ in a sample of {st['points']}; commented out in the plan: uncomment to use)")
        field = load_plan(r["plan"]).source.text_field
        if texts and text_field is None and field:  # --texts given, the pairs came on their own
            click.echo(f"pairs    the source's field '{field}' holds each point's text, so "
                       f"{smp['pairs']} stored texts are re-encoded as pairs beside --texts (a paired "
                       "migration); for the unpaired path pass --text-field \"\"")
        click.echo(f"wrote    {r['plan']}; next: embedmigrate train {r['plan']}")
    emit(result, as_json, human)


@main.command()
@click.argument("plan_file", metavar="PLAN")
@click.option("--retrain", is_flag=True, help="Train again even if a checkpoint exists.")
@json_option
@handled
def train(plan_file, retrain, as_json):
    """Sample, encode and fit the translator; save it under checkpoints/."""
    from . import commands
    result = commands.train(plan_file, progress=not as_json, retrain=retrain)

    def human(r):
        if r.get("skipped"):
            click.echo(f"{r['skipped']}: {r['checkpoint']}")
        click.echo(f"checkpoint {r['checkpoint']}")
        choice = r.get("auto_choice") or {}
        click.echo(f"method     {r.get('method')}" + (f" chose {choice['method']}: {choice.get('reason', '')}"
                                                      if choice.get("method") else ""))
        if "pairs_source" in r:
            click.echo(f"pairs      {r.get('pairs_used', 0)} from {r['pairs_source']}")
        conf = r.get("confidence")
        if conf:
            click.echo(f"confidence {conf}")
        for k, v in (r.get("metrics") or {}).items():
            click.echo(f"  {k:32s} {v}")
    emit(result, as_json, human)


def parallel_options(fn):
    fn = click.option("--executor", type=click.Choice(["local", "ray"]), default=None,
                      help="Copy parts on local threads or as Ray tasks (default: the plan's "
                           "[apply] executor; Ray's address is [apply] ray_address).")(fn)
    return click.option("--workers", type=click.IntRange(min=1), default=None,
                        help="Parts copied at once (default: the plan's [apply] workers).")(fn)


BUDGET_STOPPED = 8  # apply stopped by a budget: progress saved, re-run to resume


def budget_options(fn):
    fn = click.option("--max-tokens", type=int, default=None,
                      help="Stop (resumably) after about this many encoder tokens (HTTP encoders: "
                           "the endpoint's usage, else an estimate).")(fn)
    fn = click.option("--max-seconds", type=float, default=None,
                      help="Stop (resumably) after this many seconds of copying.")(fn)
    return click.option("--max-docs", type=int, default=None,
                        help="Stop (resumably) after about this many points (whole batches).")(fn)


def _budget(max_docs, max_seconds, max_tokens) -> dict:
    """The budget options given; zero or less is a usage error (omit one for no limit)."""
    from .errors import UsageError
    given = {"max_docs": max_docs, "max_seconds": max_seconds, "max_tokens": max_tokens}
    for name, value in given.items():
        if value is not None and not value > 0:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} {value:g} is not a budget: it must be more than 0",
                             f"give {flag} a positive number, or leave it out for no limit")
    return {k: v for k, v in given.items() if v is not None}


def _echo_budget_stop(r) -> None:
    click.echo(r["message"])


@main.command()
@click.argument("plan_file", metavar="PLAN")
@click.option("--dry-run", is_flag=True, help="Quality report on a sample only; writes no database.")
@click.option("--force", is_flag=True, help="Cut over even if the gate says WARN or FAIL.")
@click.option("--no-cutover", is_flag=True, help="Rewrite and verify, but do not cut over.")
@click.option("--report-dir", default=None, help="Where the dry-run report goes (default PLAN.state/report).")
@parallel_options
@budget_options
@json_option
@handled
def apply(plan_file, dry_run, force, no_cutover, report_dir, workers, executor, max_docs, max_seconds,
          max_tokens, as_json):
    """Rewrite the collection into the target; cut over on PASS."""
    from . import commands
    from .gate import exit_code_for
    budget = _budget(max_docs, max_seconds, max_tokens)
    if dry_run:
        report, paths = commands.dry_run(plan_file, out_dir=report_dir, progress=not as_json)
        d = report.to_dict()
        result = {"dry_run": True, "verdict": report.verdict, "evidence": d["evidence"],
                  "answer": d["answer"], "search_quality": d["search_quality"],
                  "recommendation": (d["decision"] or {}).get("recommendation"),
                  "decision": d["decision"], "report": {k: str(v) for k, v in paths.items()},
                  "checks": d["checks"]}

        def human(r):
            for c in r["checks"]:
                click.echo(_check_line(c))
            _echo_answer(r)
            click.echo(f"verdict {r['verdict']}; report {r['report'].get('html')}")
        emit(result, as_json, human)
        sys.exit(exit_code_for(report.verdict))
    result = commands.apply(plan_file, force=force, progress=not as_json, cutover=not no_cutover,
                            workers=workers, executor=executor, budget=budget)
    if result.get("budget_exhausted"):
        emit(result, as_json, _echo_budget_stop)
        sys.exit(BUDGET_STOPPED)

    if result.get("cutover") == "already done":
        emit(result, as_json, lambda r: click.echo(
            f"already cut over: {r['target']} serves (verdict {r['verdict']}); nothing to do "
            "(embedmigrate rollback undoes it)"))
        sys.exit(ExitCode.OK)

    def human(r):
        click.echo(f"wrote {r['written']} vectors to {r['target']}; ids match: {r['ids_match']}")
        for c in r["failed_checks"]:
            click.echo(_check_line(c))
        _echo_answer(r, table=False)
        click.echo(f"verdict {r['verdict']}; report {r['report'].get('html')}")
        click.echo(f"cutover {r.get('cutover', 'skipped (--no-cutover)')}")
    emit(result, as_json, human)
    if result.get("cutover") == "done" or result["verdict"] == "PASS":
        sys.exit(ExitCode.OK)
    sys.exit(exit_code_for(result["verdict"]))


def _check_line(c: dict) -> str:
    """One check for a terminal: status, name, value and the lines it is judged by."""
    if c["status"] == "SKIP":
        return f"  SKIP {c['name']}: {c['explanation']}"
    value = c["value"]
    shown = f"{value:.4g}" if isinstance(value, float) else ("–" if value is None else str(value))
    lines = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in (c.get("threshold") or {}).items())
    return f"  {c['status']:4s} {c['name']}: {shown}" + (f" ({lines})" if lines else "")


def _echo_answer(r: dict, table: bool = True) -> None:
    """'Is search better after the migration?' and, on a dry run, the decision table."""
    click.echo(f"evidence {r.get('evidence')}: {r.get('answer')}")
    if table:
        from .report import decision_lines
        for line in decision_lines(r.get("decision") or {}):
            click.echo(line)


@main.command()
@click.argument("plan_file", metavar="PLAN")
@click.option("--force", is_flag=True, help="Cut over even though the gate did not say PASS.")
@json_option
@handled
def cutover(plan_file, force, as_json):
    """Make the live name serve the verified target (apply does this on PASS)."""
    from . import commands
    emit(commands.cutover(plan_file, force=force), as_json,
         lambda r: click.echo(f"cutover {r['cutover']}" + (" (forced)" if r.get("forced") else "")))


@main.command()
@click.argument("plan_file", metavar="PLAN")
@json_option
@handled
def rollback(plan_file, as_json):
    """Point the live name back at the old collection."""
    from . import commands
    emit(commands.rollback(plan_file), as_json, lambda r: click.echo(f"rolled back: {r['outcome']}"))


@main.command()
@click.argument("plan_file", metavar="PLAN")
@click.option("--drop-old", is_flag=True, help="After cutover: delete the retired old collection.")
@click.option("--drop-target", is_flag=True, help="Before cutover: delete the (partial) target.")
@json_option
@handled
def cleanup(plan_file, drop_old, drop_target, as_json):
    """Drop what the migration no longer needs (only what you ask for)."""
    from . import commands
    emit(commands.cleanup(plan_file, drop_old=drop_old, drop_target=drop_target), as_json,
         lambda r: click.echo("dropped: " + (", ".join(r["dropped"]) or "nothing") + "; cache cleared"))


@main.command()
@click.argument("plan_file", metavar="JOB")
@click.option("--force", is_flag=True, help="Cut over again after a rollback.")
@parallel_options
@budget_options
@json_option
@handled
def run(plan_file, force, workers, executor, max_docs, max_seconds, max_tokens, as_json):
    """Advance a scheduled migration by one step (for cron / Kubernetes CronJobs).
    A hybrid job goes on after its cutover with background re-embed passes.

    Exit code: 0 when the step is done (verify said PASS, or nothing is left to do),
    1 when verify's verdict is FAIL, 3 when it is WARN: a scheduler sees a migration
    that cannot go on."""
    from . import commands
    from .gate import exit_code_for
    budget = _budget(max_docs, max_seconds, max_tokens)

    def human(r):
        if r.get("budget_exhausted"):
            click.echo(f"step {r['step']}: {r['message']}")
            return
        click.echo(f"step {r['step']}: " + json.dumps({k: v for k, v in r.items() if k != 'step'},
                                                      default=str))
    result = commands.advance(plan_file, progress=not as_json, force=force, workers=workers,
                              executor=executor, budget=budget)
    emit(result, as_json, human)
    sys.exit(exit_code_for(result["verdict"]) if result.get("verdict") else ExitCode.OK)


@main.command()
@click.argument("plan_file", metavar="PLAN")
@json_option
@handled
def status(plan_file, as_json):
    """Where a migration job stands."""
    from . import commands
    emit({**commands.status(plan_file), **commands.strategy_status(plan_file)}, as_json,
         _print_status)


def _print_status(result: dict) -> None:
    """One line per field; a record (cutover, lock owner) as indented key: value lines;
    a hybrid job's passes and search quality one line each."""
    for key, value in result.items():
        if key == "hybrid_passes":
            click.echo(f"{key:14s} {len(value)}")
            for record in value:
                click.echo("  " + _pass_line(record))
        elif key == "hybrid_quality":
            click.echo(f"{'search quality':14s} {'' if value else '-'}".rstrip())
            for row in value:
                click.echo("  " + _quality_line(row))
        elif isinstance(value, dict):
            click.echo(f"{key:14s} {'' if value else '-'}".rstrip())
            for k, v in value.items():
                click.echo(f"  {k:12s} {'-' if v is None else v}")
        else:
            click.echo(f"{key:14s} {'-' if value is None else value}")


def _pass_line(record: dict) -> str:
    """A hybrid pass: its points re-embedded and how it ended."""
    from datetime import datetime, timezone
    start = datetime.fromtimestamp(record["started"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    ended = ("killed or still running" if "finished" not in record else
             f"stopped by {record['stopped_by']}" if record.get("stopped_by") else "finished the sweep")
    return f"pass {record['pass']}: started {start} UTC, {record.get('native', 0)} re-embedded, {ended}"


def _quality_line(row: dict) -> str:
    """nDCG@10 of the live collection at one stage of a hybrid job, or why it is not known."""
    if row.get("ndcg") is None:
        return f"after {row['after']}: not measured ({row.get('reason', 'unknown')})"
    return (f"after {row['after']}: nDCG@{row['k']} {row['ndcg']:.3f} (95% {row['low']:.3f}-"
            f"{row['high']:.3f}, {row['evidence']}, {row['queries']} queries), "
            f"{100 * row['native_share']:.0f}% of the evaluation points re-embedded")


@main.command()
@click.argument("checkpoint")
@click.argument("input_npy")
@click.option("-o", "--output", required=True, help="Output .npy.")
@click.option("--inverse", is_flag=True, help="New-model vectors -> old space (query bridge).")
@json_option
@handled
def translate(checkpoint, input_npy, output, inverse, as_json):
    """Translate an .npy of vectors with a trained checkpoint."""
    from . import commands
    emit(commands.translate_file(checkpoint, input_npy, output, inverse=inverse), as_json,
         lambda r: click.echo(f"{r['rows']} vectors {r['direction']} -> {r['output']}"))


@main.command()
@click.option("--dir", "workdir", default="embedmigrate-demo", show_default=True)
@click.option("--engine", type=click.Choice(["chroma", "qdrant"]), default="chroma", show_default=True)
@click.option("--from-model", default="sre", show_default=True)
@click.option("--to-model", default="minilm", show_default=True)
@json_option
@handled
def demo(workdir, engine, from_model, to_model, as_json):
    """Full migration on an embedded store with packaged models and a shipped corpus."""
    from .demo import run_demo
    result = run_demo(workdir, engine=engine, from_model=from_model, to_model=to_model, progress=not as_json,
                      echo=(lambda m: None) if as_json else click.echo)
    emit(result, as_json, lambda r: click.echo(f"report: {r['report']}"))
    sys.exit(ExitCode.OK if result["cutover"] == "done" else ExitCode.FAIL)


if __name__ == "__main__":  # pragma: no cover
    main()
