"""What the job commands say: rollback names what it really did, status prints its
records readably, plan says when --texts became a paired migration, plan's encoder
probe does not time the model load, and Qdrant local mode's size warning stays out of
the progress output. (run's exit codes and the catch-up: tests/test_faults.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from embedmigrate import cli, commands
from embedmigrate.encoders import Encoder
from embedmigrate.plan import load_plan
from fault_helpers import make_job
from security_helpers import npy_corpus


def invoke(*args) -> str:
    result = CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def cut_over_on_qdrant(qdrant_memory_harness, tmp_path, fresh_name):
    """A job on Qdrant (in memory) cut over to a live alias that did not exist before."""
    job = make_job(tmp_path, qdrant_memory_harness, fresh_name("rb"), n=200, batch_size=50)
    plan = load_plan(job.plan)
    plan.target.live_name = fresh_name("rb_live")
    plan.write(job.plan)
    result = commands.apply(job.plan, force=True, progress=False)
    assert result["cutover"] == "done"
    return job, plan.target.live_name, qdrant_memory_harness


def test_rollback_of_a_new_alias_says_the_alias_is_gone(cut_over_on_qdrant):
    job, live, harness = cut_over_on_qdrant
    status = invoke("status", job.plan)
    assert "{" not in status and "'" not in status, status  # no Python dict
    assert f"  live_name    {live}" in status and "  previous     -" in status, status
    out = invoke("rollback", job.plan)
    assert out.startswith(f"rolled back: alias '{live}' removed"), out
    assert "serves the old collection again" not in out
    aliases = {a.alias_name for a in harness.client.get_aliases().aliases}
    assert live not in aliases


def test_rollback_to_a_previous_collection_says_so(qdrant_memory_harness, tmp_path, fresh_name):
    from qdrant_client import models
    job = make_job(tmp_path, qdrant_memory_harness, fresh_name("rb"), n=200, batch_size=50)
    plan = load_plan(job.plan)
    source = plan.source.uri.rsplit("/", 1)[-1]
    plan.target.live_name = fresh_name("rb_live")
    plan.write(job.plan)
    qdrant_memory_harness.client.update_collection_aliases(change_aliases_operations=[
        models.CreateAliasOperation(create_alias=models.CreateAlias(
            collection_name=source, alias_name=plan.target.live_name))])
    assert commands.apply(job.plan, force=True, progress=False)["cutover"] == "done"
    result = json.loads(invoke("rollback", job.plan, "--json"))
    assert result["outcome"].startswith(f"alias '{plan.target.live_name}' points at '{source}' again")


def test_plan_says_when_texts_became_a_paired_migration(qdrant_memory_harness, tmp_path, fresh_name):
    ids, old, payloads, spec = npy_corpus(tmp_path / "model")
    name = fresh_name("paired")
    qdrant_memory_harness.populate(name, ids, old, payloads)
    texts = tmp_path / "model" / "texts.txt"
    out = invoke("plan", qdrant_memory_harness.uri(name), "--to-model", spec, "--texts", texts,
                 "-o", tmp_path / "a.toml")
    assert "pairs    the source's field 'text'" in out and '--text-field ""' in out, out
    out = invoke("plan", qdrant_memory_harness.uri(name), "--to-model", spec, "--texts", texts,
                 "--text-field", "", "-o", tmp_path / "b.toml")
    assert "pairs    " not in out, out
    assert load_plan(tmp_path / "b.toml").sample.pairs == 0


class SlowToLoad(Encoder):
    """A model whose first call takes a second (loading weights), then is instant."""

    def __init__(self):
        super().__init__("slow-to-load")
        self.loaded = False

    def _native_dim(self) -> int:
        return 4

    def _encode(self, texts, batch_size, show_progress, kind):
        if not self.loaded:
            time.sleep(1.0)
            self.loaded = True
        return np.ones((len(texts), 4), np.float32)

    def _identity(self) -> dict:
        return {}


def test_encoder_speed_probe_does_not_time_the_load():
    # 16 texts: timing the load would say at most 16 texts/s
    assert commands._encode_speed(SlowToLoad()) > 1000


def test_qdrant_local_size_warning_is_kept_out_of_the_output():
    warning = ("import embedmigrate.cli, warnings; warnings.warn('Local mode is not recommended for "
               "collections with more than 20,000 points. Collection <c> contains 20001 points.', "
               "UserWarning)")
    proc = subprocess.run([sys.executable, "-c", warning], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Local mode" not in proc.stderr, proc.stderr
