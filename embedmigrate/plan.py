"""The plan: one human-editable TOML file that says exactly what a migration will do.

``embedmigrate plan`` writes it (with comments); every later command reads it.
It never holds a password: URIs are stored redacted and credentials come from
the environment (PGPASSWORD, QDRANT_API_KEY, ...) at run time.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from . import files
from .errors import UsageError
from .connectors.base import METRICS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class SourceSection:
    uri: str = ""
    count: int = 0
    dim: int = 0
    metric: str = "cosine"
    text_field: str = ""  # stored text of each point ("" = none): enables pairs


@dataclass
class TargetSection:
    uri: str = ""
    live_name: str = ""  # the name the application queries; cutover points it at the target


@dataclass
class ModelSection:
    new: str = ""  # encoder spec of the new model (see embedmigrate.encoders)
    old: str = ""  # optional encoder of the old model: enables query-text checks


@dataclass
class SampleSection:
    old: int = 20000  # old-model vectors sampled from the source
    new: int = 20000  # texts embedded with the new model
    texts: str = ""  # file of fresh texts for the new model ("" = use source text_field)
    text_column: str = ""  # column/field inside that file (jsonl/csv/parquet)
    pairs: int = 0  # stored texts of sampled points re-encoded: paired training data
    holdout: int = 0  # of those pairs, kept out of training to measure the translator
    seed: int = 0


@dataclass
class TrainSection:
    method: str = "auto"
    checkpoint: str = ""
    options: dict = field(default_factory=dict)


@dataclass
class ApplySection:
    batch_size: int = 1024
    if_exists: str = "error"  # target exists at the first apply: error | resume | replace
    workers: int = 1  # parts copied at once (threads; Ray tasks with executor = "ray")
    parts: int = 0  # how the source is split, fixed at the first apply; 0: automatic
    executor: str = "local"  # local | ray
    ray_address: str = ""  # "" starts a local Ray; "auto" or ray://host:10001 joins a cluster


STRATEGIES = ("translate", "reembed", "hybrid", "auto")


@dataclass
class StrategySection:
    """How the target's vectors are made (see embedmigrate.transform)."""
    name: str = "translate"  # translate | reembed | hybrid | auto (plans without it: translate)
    reason: str = ""  # why this strategy (written by `plan`; informational)
    encode_batch: int = 0  # texts per encoder call when re-embedding; 0: the encoder's default
    # budgets of one apply / run (0: none); --max-docs / --max-seconds / --max-tokens override
    max_docs: int = 0
    max_seconds: float = 0.0
    max_tokens: int = 0


@dataclass
class GateSection:
    """Evidence and thresholds of the quality gate (see embedmigrate.gate.Thresholds)."""
    thresholds: dict = field(default_factory=dict)
    sample: int = 2000  # points of the collection the report measures on
    queries: str = ""  # query texts (.jsonl): BEIR {"_id", "text"} with qrels, or {"text", "doc_id"}
    qrels: str = ""  # BEIR qrels .tsv (query-id, corpus-id = point id, score)
    group_field: str = ""  # payload field grouping points by source document (sibling evidence)
    baseline: str = "today"  # "today": must beat today's index; "none": old model retired


@dataclass
class Plan:
    source: SourceSection = field(default_factory=SourceSection)
    target: TargetSection = field(default_factory=TargetSection)
    model: ModelSection = field(default_factory=ModelSection)
    sample: SampleSection = field(default_factory=SampleSection)
    train: TrainSection = field(default_factory=TrainSection)
    apply: ApplySection = field(default_factory=ApplySection)
    strategy: StrategySection = field(default_factory=StrategySection)
    gate: GateSection = field(default_factory=GateSection)
    estimate: dict = field(default_factory=dict)  # informational, written by `plan`
    path: Path | None = None  # where it was read from (not stored)
    # a group field `plan` found in the source, written as a comment (not stored as a key)
    group_proposal: dict = field(default_factory=dict, repr=False)

    # --- where things live --------------------------------------------------
    @property
    def state_dir(self) -> Path:
        """Job state, locks, caches and reports live next to the plan file."""
        base = self.path if self.path is not None else Path("plan.toml")
        return base.with_name(base.stem + ".state")

    @property
    def checkpoint_dir(self) -> Path:
        p = Path(self.train.checkpoint)
        if not p.is_absolute() and self.path is not None:
            p = self.path.parent / p
        return p

    def resolve_path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() or self.path is None else self.path.parent / p

    # --- (de)serialisation ----------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("path")
        d.pop("group_proposal")
        return d

    def write(self, path) -> Path:
        path = Path(path)
        files.atomic_write_text(path, render(self), elsewhere="choose a writable location with -o")
        self.path = path
        return path


def load_plan(path) -> Plan:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"plan file {path} does not exist",
                         "create one with: embedmigrate plan SOURCE --to-model MODEL -o plan.toml")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"plan file {path} is not valid TOML: {e}",
                         "fix the syntax, or regenerate it with embedmigrate plan") from None
    except OSError as e:
        raise UsageError(f"cannot read plan file {path}: {e.strerror or e}",
                         "check the file's permissions") from None
    plan = from_dict(data, str(path))
    plan.path = path.resolve()
    validate(plan, str(path))
    return plan


def from_dict(data: dict, where: str = "plan") -> Plan:
    sections = {f.name: f.type for f in fields(Plan)
                if f.name not in ("path", "estimate", "group_proposal")}
    kwargs = {}
    for key, value in data.items():
        if key == "estimate":
            if not isinstance(value, dict):
                raise UsageError(f"{where}: [estimate] must be a table",
                                 "delete the estimate line (it is informational) or write it as [estimate]")
            kwargs["estimate"] = value
            continue
        cls = {"source": SourceSection, "target": TargetSection, "model": ModelSection,
               "sample": SampleSection, "train": TrainSection, "apply": ApplySection,
               "strategy": StrategySection, "gate": GateSection}.get(key)
        if cls is None:
            raise UsageError(f"{where}: unknown section [{key}]",
                             "sections are " + ", ".join(f"[{s}]" for s in sections))
        if not isinstance(value, dict):
            raise UsageError(f"{where}: [{key}] must be a table", f"write it as [{key}] with keys below")
        known = {f.name: f for f in fields(cls)}
        for k, v in value.items():
            if k not in known:
                raise UsageError(f"{where}: unknown key '{k}' in [{key}]",
                                 "valid keys: " + ", ".join(known))
            default = getattr(cls(), k)
            if not _fits(v, default):
                kind = _KINDS.get(type(default), type(default).__name__)
                raise UsageError(f"{where}: [{key}] {k} = {_short(v)} should be {kind}",
                                 f"set {k} to {kind} like {_short(default)}")
        kwargs[key] = cls(**value)
    return Plan(**kwargs)


_KINDS = {int: "a whole number", float: "a number", str: "a string", dict: "a table",
          bool: "true or false", tuple: "an array"}


def _fits(value, default) -> bool:
    """Whether a TOML value may stand where the dataclass default is (a bool is no
    number; nan is no number either)."""
    if isinstance(value, float) and math.isnan(value):
        return False
    if isinstance(value, bool) or isinstance(default, bool):
        return type(value) is type(default)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, tuple):  # TOML has arrays, not tuples
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def validate(plan: Plan, where: str = "plan") -> None:
    from .connectors import parse_uri
    if not plan.source.uri:
        raise UsageError(f"{where}: [source] uri is empty", "set the source collection URI")
    if not plan.target.uri:
        raise UsageError(f"{where}: [target] uri is empty", "set the target collection URI")
    src, dst = parse_uri(plan.source.uri), parse_uri(plan.target.uri)
    if src.raw == dst.raw or (src.engine == dst.engine and src.collection == dst.collection
                              and (src.path, src.host, src.database) == (dst.path, dst.host, dst.database)):
        raise UsageError(f"{where}: target is the source collection",
                         "name a new target collection; the source is never overwritten")
    if plan.source.metric not in METRICS:
        raise UsageError(f"{where}: [source] metric = {_short(plan.source.metric)}",
                         "use one of " + ", ".join(f'"{m}"' for m in METRICS))
    if not plan.model.new:
        raise UsageError(f"{where}: [model] new is empty", "name the new model, e.g. new = \"mpnet\"")
    for name in ("old", "new", "pairs", "holdout", "seed"):
        if getattr(plan.sample, name) < 0:
            raise UsageError(f"{where}: [sample] {name} is negative", f"set {name} >= 0")
    if plan.sample.holdout > plan.sample.pairs:
        raise UsageError(f"{where}: [sample] holdout ({plan.sample.holdout}) exceeds pairs "
                         f"({plan.sample.pairs})", "set holdout <= pairs")
    if plan.sample.pairs and not plan.source.text_field:
        raise UsageError(f"{where}: [sample] pairs = {plan.sample.pairs} but [source] has no text_field",
                         "set source.text_field to the field holding each point's text, or pairs = 0")
    if plan.gate.sample < 1:
        raise UsageError(f"{where}: [gate] sample must be >= 1", "set sample = 2000")
    _check_evidence(plan, where)
    if plan.apply.batch_size < 1:
        raise UsageError(f"{where}: [apply] batch_size must be >= 1", "set batch_size = 1024")
    if plan.apply.if_exists not in ("error", "resume", "replace"):
        raise UsageError(f"{where}: [apply] if_exists = {plan.apply.if_exists!r}",
                         "use \"error\", \"resume\" or \"replace\"")
    if plan.apply.workers < 1 or plan.apply.parts < 0:
        raise UsageError(f"{where}: [apply] workers must be >= 1 and parts >= 0",
                         "set workers = 1 (or the number of parallel copiers) and parts = 0 (automatic)")
    if plan.apply.executor not in ("local", "ray"):
        raise UsageError(f"{where}: [apply] executor = {plan.apply.executor!r}", "use \"local\" or \"ray\"")
    _check_strategy(plan, where)
    if not plan.train.checkpoint:
        raise UsageError(f"{where}: [train] checkpoint is empty", "set a checkpoint directory")
    from .translators import REGISTRY
    if plan.train.method not in REGISTRY:
        raise UsageError(f"{where}: [train] method = {_short(plan.train.method)} is unknown",
                         "use one of " + ", ".join(REGISTRY))
    _check_train_options(plan, where)
    _check_thresholds(plan, where)


def _check_evidence(plan: Plan, where: str) -> None:
    g = plan.gate
    if g.baseline not in ("today", "none"):
        raise UsageError(f"{where}: [gate] baseline = {_short(g.baseline)}",
                         'use "today" (the migration must beat today\'s index) or "none" (the old '
                         "model is being retired)")
    if g.qrels and not g.queries:
        raise UsageError(f"{where}: [gate] qrels is set but queries is empty",
                         "set queries to the BEIR queries.jsonl the qrels refer to")
    if g.queries and g.baseline == "today" and not plan.model.old and has_labels(plan):
        raise UsageError(f"{where}: labelled queries need the old model to search today's index "
                         "(baseline = \"today\")",
                         "pass --from-model OLD_MODEL (set [model] old), or set [gate] baseline = "
                         "\"none\" if the old model is being retired")


def has_labels(plan: Plan) -> bool:
    """Whether the gate's queries carry relevance labels: a qrels file, or a doc_id on
    every query. An unreadable queries file counts as none here; reading it for the
    report says what is wrong with it."""
    if plan.gate.qrels:
        return True
    if not plan.gate.queries:
        return False
    from .errors import EmbedMigrateError
    from .texts import read_records
    try:
        records = read_records(plan.resolve_path(plan.gate.queries))
    except (EmbedMigrateError, OSError):
        return False
    return bool(records) and all("doc_id" in r for r in records)


def _check_strategy(plan: Plan, where: str) -> None:
    """[strategy]: a known name; re-embedding needs the field that holds each point's text."""
    st = plan.strategy
    if st.name not in STRATEGIES:
        raise UsageError(f"{where}: [strategy] name = {_short(st.name)} is unknown",
                         "use one of " + ", ".join(f'"{s}"' for s in STRATEGIES))
    if st.name in ("reembed", "hybrid") and not plan.source.text_field:
        raise UsageError(f"{where}: [strategy] name = \"{st.name}\" needs the text of each point, "
                         "but [source] has no text_field",
                         "set source.text_field to the field holding each point's text, or use "
                         "name = \"translate\"")
    for name in ("encode_batch", "max_docs", "max_seconds", "max_tokens"):
        if getattr(st, name) < 0:
            raise UsageError(f"{where}: [strategy] {name} is negative", f"set {name} >= 0 (0: none)")


def _check_train_options(plan: Plan, where: str) -> None:
    """[train.options] are fields of the translator's Config, with the default's type
    (checked here: a wrong one would otherwise fail deep inside training)."""
    if not plan.train.options:
        return
    from .translators import translator_class
    config = getattr(translator_class(plan.train.method), "Config", None)
    defaults = config() if config is not None else None
    for k, v in plan.train.options.items():
        if defaults is None or k not in {f.name for f in fields(defaults)}:
            valid = ", ".join(f.name for f in fields(defaults)) if defaults is not None else ""
            raise UsageError(f"{where}: [train.options] {k} is not an option of method "
                             f"'{plan.train.method}'", f"remove it; valid options: {valid or 'none'}")
        default = getattr(defaults, k)
        if default is not None and not _fits(v, default):
            kind = _KINDS.get(type(default), type(default).__name__)
            raise UsageError(f"{where}: [train.options] {k} = {_short(v)} should be {kind}",
                             f"set {k} to {kind} like {_short(default)}")


def _check_thresholds(plan: Plan, where: str) -> None:
    """[gate.thresholds]: known names, numbers (require_aligned: true/false), coherent."""
    from .gate import Thresholds
    defaults = Thresholds()
    for k, v in plan.gate.thresholds.items():
        default = getattr(defaults, k, None)
        if default is not None and not _fits(v, default):
            kind = _KINDS.get(type(default), type(default).__name__)
            raise UsageError(f"{where}: [gate.thresholds] {k} = {_short(v)} should be {kind}",
                             f"set {k} to {kind} like {_short(default)}")
    Thresholds.from_dict(plan.gate.thresholds)  # unknown names, warn/fail lines in order


# --- rendering with comments -------------------------------------------------------

_COMMENTS = {
    "source": "The collection being migrated. It is only read: nothing here is modified "
              "or deleted before an explicit cutover.",
    "target": "The new collection the translated vectors are written to. live_name is what "
              "your application queries:\n# cutover makes it serve the target (Qdrant: atomic "
              "alias switch; Chroma: rename; Postgres: table rename\n# in one transaction; Qdrant "
              "Edge: the symbolic link live_name in the store folder switches\n# atomically to "
              "the target shard, which the application loads again) and keeps the old collection "
              "for rollback.",
    "model": "Encoder specs (minilm, mpnet, sre, e5-small, wordllama, st:/path, "
             "openai+http://host/v1?model=M&key_env=VAR, npy:/path).",
    "sample": "Training data. old: vectors sampled from the source; new: fresh texts embedded "
              "with the new model.\n# pairs: sampled points whose stored text is re-encoded "
              "(paired data beats unpaired); holdout: pairs kept to measure.",
    "train": "Translator: auto | linear (unsupervised) | vec2vec | procrustes | ridge | mlp | semi.",
    "apply": "Streamed rewrite. if_exists: what the first apply does when the target "
             "already exists (error | resume | replace).\n# The source is split into parts "
             "(parts = 0: automatic); workers copy parts at once, as threads\n# (executor = "
             "\"local\") or as Ray tasks (executor = \"ray\", ray_address: \"\" local, \"auto\", ray://...).",
    "strategy": "How the new vectors are made. name: translate (map the stored vectors) | "
                "reembed (encode each point's\n# stored text with the new model; points without "
                "text are translated) | hybrid (translate, cut over,\n# then re-embed in the "
                "background with `embedmigrate run`) | auto. Every written point of reembed and\n"
                "# hybrid records _embedmigrate_model and _embedmigrate_vector (translated | native). "
                "max_docs, max_seconds,\n# max_tokens: budget of one apply / run (0: none).",
    "gate": "Quality gate: apply cuts over only on PASS (or --force). PASS needs evidence that "
            "search is at least as\n# good as today: labelled queries (queries + qrels, BEIR "
            "layout) or a group_field whose points are\n# siblings (chunks of one source document). "
            "Without either the verdict is at most WARN (unproven).\n# baseline = \"none\" when "
            "the old model is being retired (compares with a full re-embed instead).\n# "
            "Thresholds override the defaults in embedmigrate.gate.Thresholds.",
    "estimate": "Written by `embedmigrate plan` for information; not read back.",
}


def render(plan: Plan) -> str:
    from . import __version__
    out = ["# embedmigrate migration plan (embedmigrate " + __version__ + ")",
           "# Review and edit, then: embedmigrate train PLAN; embedmigrate apply PLAN --dry-run;",
           "# embedmigrate apply PLAN. Credentials are never stored here: set PGPASSWORD,",
           "# QDRANT_API_KEY or the variable an encoder's key_env names.", ""]
    d = plan.to_dict()
    for section in ("source", "target", "model", "sample", "train", "apply", "strategy", "gate",
                    "estimate"):
        out.append("# " + _COMMENTS[section])
        out.append(f"[{section}]")
        nested = []
        for k, v in d[section].items():
            if isinstance(v, dict):
                nested.append((k, v))
            elif section == "gate" and k == "group_field" and not v and plan.group_proposal:
                out.append(_proposal_comment(plan.group_proposal))  # no live key: uncommenting adds it
            else:
                out.append(f"{k} = {_toml_value(v)}")
        for k, v in nested:
            out.append(f"[{section}.{k}]")
            for kk, vv in v.items():
                if isinstance(vv, dict):
                    out.append(f"{_toml_key(kk)} = {{ " + ", ".join(
                        f"{_toml_key(a)} = {_toml_value(b)}" for a, b in vv.items()) + " }")
                else:
                    out.append(f"{_toml_key(kk)} = {_toml_value(vv)}")
        out.append("")
    return "\n".join(out)


def _proposal_comment(proposal: dict) -> str:
    s = proposal.get("stats", {})
    return (f"# proposed: uncomment to use sibling evidence (or pass --group-field):\n"
            f"# group_field = {_toml_value(proposal['field'])}   # in a sample of {s.get('points')} "
            f"points: {s.get('groups')} values, {s.get('groups_of_2_or_more')} shared by 2 or more, "
            f"{100 * s.get('share_with_sibling', 0):.0f}% of points have a sibling, largest group "
            f"{s.get('largest_group')}")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else '"' + k + '"'


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if v is None:
        return '""'
    raise TypeError(f"cannot write {type(v)} to TOML")
