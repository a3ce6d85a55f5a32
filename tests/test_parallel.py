"""Partitioned apply: local worker threads and Ray tasks (Ray's local cluster).

Every test checks the target against the source point by point: exactly the
source's ids, each vector the translation of its source vector, payloads equal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_points

from embedmigrate import commands
from embedmigrate.connectors import open_collection, parse_uri
from embedmigrate.errors import UsageError
from embedmigrate.plan import Plan
from embedmigrate.state import JobState
from embedmigrate.translators import make_translator

DIM = 32


def setup_job(engine, tmp_path, fresh_name, n, *, parts, workers=1, executor="local",
              batch_size=100):
    """A source of n points, a trained translator and a plan, without encoders."""
    ids, vectors, payloads = make_points(n, DIM, seed=n)
    src = fresh_name("src")
    engine.populate(src, ids, vectors, payloads)
    rng = np.random.default_rng(1)
    rot = np.linalg.qr(rng.normal(size=(DIM, DIM)))[0].astype(np.float32)
    translator = make_translator("procrustes").fit(vectors, vectors @ rot,
                                                   pairs=(vectors, vectors @ rot))
    translator.save(tmp_path / "ckpt")
    p = Plan()
    p.source.uri, p.source.dim, p.source.count = engine.uri(src), DIM, n
    p.target.uri = engine.uri(src + "_new")
    p.model.new = "sre"
    p.sample.old, p.sample.new = 200, 0
    p.train.method, p.train.checkpoint = "procrustes", str(tmp_path / "ckpt")
    p.apply.batch_size, p.apply.parts, p.apply.workers = batch_size, parts, workers
    p.apply.executor = executor
    p.gate.sample = 200
    plan_path = p.write(tmp_path / "plan.toml")
    JobState(tmp_path / "plan.state").update(stage="trained")
    # plans keep no password: the process (and the Ray workers it starts) get it from the env
    password = parse_uri(engine.uri(src)).password
    env = {**os.environ, **({"PGPASSWORD": password} if password else {})}
    return plan_path, (ids, vectors, payloads), translator, env


def read_points(uri) -> dict:
    got = {}
    for batch, _ in open_collection(uri).scan(1000):
        for i, v, p in zip(batch.ids, batch.vectors, batch.payloads):
            assert str(i) not in got, f"id {i} twice"
            got[str(i)] = (v, json.dumps(p, sort_keys=True))
    return got


def check_target(plan_path, source, translator):
    """Exactly the source's ids; each vector its source vector translated; payloads
    identical to what the source store holds."""
    from embedmigrate.plan import load_plan
    plan = load_plan(plan_path)
    ids, vectors, _ = source
    got, stored = read_points(plan.target.uri), read_points(plan.source.uri)
    assert sorted(got) == sorted(map(str, ids))
    np.testing.assert_allclose(np.stack([got[str(i)][0] for i in ids]),
                               translator.translate(vectors), atol=1e-5)
    assert all(got[k][1] == stored[k][1] for k in stored)


def cli(*args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "embedmigrate.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kw)


def wait_written(state_file: Path, at_least: int, proc, timeout=180) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            written = json.loads(state_file.read_text()).get("written", 0)
        except (OSError, ValueError):
            written = 0
        if written >= at_least:
            return written
        if proc.poll() is not None:
            pytest.fail(f"apply ended before the kill: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    pytest.fail("apply made no progress")


# embedded stores too (Qdrant local mode, Qdrant Edge): local workers are threads of one process
@pytest.mark.parametrize("engine_name", ["qdrant_local_harness", "qdrant_edge_harness",
                                         "chroma_server_harness", "postgres_tcp_harness"])
def test_local_workers_copy_every_part_once(engine_name, request, tmp_path, fresh_name, monkeypatch):
    engine = request.getfixturevalue(engine_name)
    plan_path, source, translator, env = setup_job(engine, tmp_path, fresh_name, 3_000, parts=6,
                                                   workers=3)
    monkeypatch.setenv("PGPASSWORD", env.get("PGPASSWORD", ""))
    result = commands.apply(plan_path, progress=False, cutover=False)
    assert result["ids_match"] and result["written"] == 3_000
    assert (result["parts"], result["workers"]) == (6, 3)
    parts = JobState(tmp_path / "plan.state").get("parts")
    assert all(p["done"] for p in parts) and sum(p["written"] for p in parts) == 3_000
    assert min(p["written"] for p in parts) > 0  # the work was really split
    check_target(plan_path, source, translator)


def test_automatic_parts_one_per_worker_on_qdrant_local_mode(qdrant_local_harness,
                                                             postgres_tcp_harness):
    """Local mode sorts every id per scroll call, so each extra part costs a full sort:
    apply makes one part per worker there, and 16 to 64 on engines where parts are cheap."""
    local = open_collection(qdrant_local_harness.uri("any"))
    server = open_collection(postgres_tcp_harness.uri("any"))
    assert [commands._auto_parts(local, 1_000_000, w) for w in (1, 3)] == [1, 3]
    assert [commands._auto_parts(server, 1_000_000, w) for w in (1, 3, 32)] == [16, 16, 64]
    assert commands._auto_parts(server, 12_000, 3) == commands._auto_parts(local, 12_000, 3) == 2


def test_killed_parallel_run_resumes_with_another_worker_count(postgres_tcp_harness, tmp_path,
                                                               fresh_name):
    n = 6_000
    plan_path, source, translator, env = setup_job(postgres_tcp_harness, tmp_path, fresh_name, n,
                                                   parts=8, workers=4, batch_size=50)
    proc = cli("apply", plan_path, "--no-cutover", "--json", env=env)
    written = wait_written(tmp_path / "plan.state" / "state.json", 1_500, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    state = json.loads((tmp_path / "plan.state" / "state.json").read_text())
    assert written <= state["written"] < n
    assert sum(1 for p in state["parts"] if 0 < p["written"]) >= 2  # several parts were in flight
    out = cli("apply", plan_path, "--no-cutover", "--json", "--workers", "1", env=env)
    stdout, stderr = out.communicate(timeout=600)
    result = json.loads(stdout)
    assert result["ids_match"] and result["workers"] == 1, stderr[-2000:]
    check_target(plan_path, source, translator)


@pytest.fixture
def ray_installed():
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'embedmigrate[ray]')")


def test_ray_apply_survives_killed_workers(ray_installed, postgres_tcp_harness, tmp_path, fresh_name):
    n = 6_000
    plan_path, source, translator, env = setup_job(postgres_tcp_harness, tmp_path, fresh_name, n,
                                                   parts=8, workers=2, executor="ray", batch_size=50)
    proc = cli("apply", plan_path, "--no-cutover", "--json", env=env)
    state_file = tmp_path / "plan.state" / "state.json"
    killed = 0
    for at_least in (1_000, 2_500):  # kill a Ray worker twice, mid-part
        wait_written(state_file, at_least, proc)
        deadline = time.monotonic() + 30  # a worker between tasks has another title: poll
        while time.monotonic() < deadline and proc.poll() is None:
            pids = subprocess.run(["pgrep", "-f", "^ray::embedmigrate-part"], capture_output=True,
                                  text=True).stdout.split()
            if pids:
                os.kill(int(pids[0]), signal.SIGKILL)
                killed += 1
                break
            time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=600)
    assert killed == 2, "no Ray worker was running a part"
    assert proc.returncode in (0, 1, 3), stderr[-3000:]
    result = json.loads(stdout)
    assert result["executor"] == "ray" and result["ids_match"], result
    check_target(plan_path, source, translator)


def test_ray_run_killed_then_finished_by_local_workers(ray_installed, chroma_server_harness, tmp_path,
                                                      fresh_name):
    n = 5_000
    plan_path, source, translator, env = setup_job(chroma_server_harness, tmp_path, fresh_name, n,
                                                   parts=6, workers=2, executor="ray", batch_size=50)
    proc = cli("apply", plan_path, "--no-cutover", "--json", env=env)
    wait_written(tmp_path / "plan.state" / "state.json", 1_200, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray cluster it started
    proc.wait()
    out = cli("apply", plan_path, "--no-cutover", "--json", "--executor", "local", "--workers", "3",
              env=env)
    stdout, stderr = out.communicate(timeout=600)
    result = json.loads(stdout)
    assert result["ids_match"] and result["executor"] == "local", stderr[-2000:]
    check_target(plan_path, source, translator)


@pytest.mark.parametrize("engine_name", ["qdrant_local_harness", "qdrant_edge_harness"])
def test_ray_refuses_embedded_stores(engine_name, request, tmp_path, fresh_name):
    engine = request.getfixturevalue(engine_name)
    plan_path, *_ = setup_job(engine, tmp_path, fresh_name, 300, parts=2, executor="ray")
    with pytest.raises(UsageError, match="embedded store"):
        commands.apply(plan_path, progress=False, cutover=False)
    out = cli("apply", plan_path, "--json", env=os.environ)
    stdout, stderr = out.communicate(timeout=120)
    assert out.returncode == 2 and "embedded store" in json.loads(stdout)["message"]
    assert "Traceback" not in stderr


def test_run_killed_right_after_creating_the_target_resumes(chroma_embedded_harness, tmp_path,
                                                            fresh_name):
    from embedmigrate.errors import ConflictError
    from embedmigrate.plan import load_plan
    plan_path, source, translator, _ = setup_job(chroma_embedded_harness, tmp_path, fresh_name, 500,
                                                 parts=2)
    plan = load_plan(plan_path)
    info = open_collection(plan.source.uri).describe()
    open_collection(plan.target.uri).create_like(info, dim=DIM)  # as a killed first attempt left it
    with pytest.raises(ConflictError):  # a target the job did not create is never written into
        commands.apply(plan_path, progress=False, cutover=False)
    JobState(tmp_path / "plan.state").update(creating_target=True)  # this job did create it
    result = commands.apply(plan_path, progress=False, cutover=False)
    assert result["ids_match"]
    check_target(plan_path, source, translator)
