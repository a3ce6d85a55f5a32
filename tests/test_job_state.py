"""state.json as a typed record: old files still read (unknown keys kept), and a stage
that may not follow the current one is refused before anything is written."""

from __future__ import annotations

import json

import pytest

from embedmigrate.errors import ConflictError, UsageError
from embedmigrate.state import JobRecord, JobState

# what an older embedmigrate wrote: before parts existed (one cursor), and a key this
# version does not know
OLD_STATE = {"stage": "applying", "apply_started": True, "cursor": 1234, "written": 1234,
             "id_hash": 99, "train_metrics": {"holdout_top1": 0.97}, "updated_at": 1.0,
             "a_key_from_elsewhere": {"kept": True}}


def test_an_old_state_file_reads_and_keeps_what_it_does_not_know(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps(OLD_STATE))
    state = JobState(tmp_path)
    assert isinstance(state.record, JobRecord)
    assert (state.stage, state.record.cursor, state.get("written")) == ("applying", 1234, 1234)
    assert state.get("parts") is None and state.get("parts", []) == []  # never written
    assert state.get("a_key_from_elsewhere") == {"kept": True}
    assert state.reached("trained") and not state.reached("applied")
    state.update(stage="applied", written=1300)
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["a_key_from_elsewhere"] == {"kept": True} and saved["written"] == 1300
    assert "parts" not in saved and "catch_up" not in saved  # unset fields are not written
    assert JobState(tmp_path).record == state.record


@pytest.mark.parametrize("path,last_allowed", [
    (["trained", "applying", "applied", "verified", "cut_over", "rolled_back", "cut_over"], True),
    (["trained", "applied", "applying", "applied", "trained"], True),  # catch-up; cleanup
    (["cut_over"], False),  # planned -> cut_over: nothing was trained or written
    (["trained", "applying", "applied", "cut_over", "trained"], False),  # retrain when live
    (["trained", "verified"], False),  # verified without a rewrite
])
def test_stage_transitions_are_guarded(tmp_path, path, last_allowed):
    state = JobState(tmp_path)
    for stage in path[:-1]:
        state.update(stage=stage)
    last = path[-1]
    if last_allowed:
        state.update(stage=last)
        assert JobState(tmp_path).stage == last
        return
    before = (tmp_path / "state.json").read_text() if (tmp_path / "state.json").exists() else None
    with pytest.raises(ConflictError, match=f"cannot go to '{last}'") as e:
        state.update(stage=last, written=5)
    assert e.value.fix
    after = (tmp_path / "state.json").read_text() if (tmp_path / "state.json").exists() else None
    assert after == before  # nothing written


def test_a_stage_this_version_does_not_know_is_not_guarded(tmp_path):
    state = JobState(tmp_path)
    state.update(stage="trained")
    state.update(stage="encoding")  # a newer tool's stage
    state.update(stage="applied")
    assert JobState(tmp_path).stage == "applied"


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"stage": "applied", "written": '])
def test_a_corrupt_state_file_is_one_line_naming_the_fix(tmp_path, text):
    (tmp_path / "state.json").write_text(text)
    with pytest.raises(UsageError, match="corrupt") as e:
        JobState(tmp_path)
    assert "delete" in e.value.fix
