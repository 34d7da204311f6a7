"""The 20-session load test of issue 14's Proof, on the real app (subprocess, login mode, the real default model,
24-token answers): 20 users ask one question after another through Gradio's queue while three users who never asked
join one at a time. Every answer is stored in SQLite once, for its user, with the text shown; and each newcomer is
served ahead of the sessions' queue (its first token before their median one, in the same run). The issue's ratio
(newcomer first token in idle answer-lengths) is printed, not asserted. The measurement is bench/load_sessions.py's."""
from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import ROOT, running_app

sys.path.insert(0, str(ROOT / "bench"))
import load_sessions as L  # noqa: E402

pytestmark = pytest.mark.slow
SESSIONS, NEWCOMERS = 20, 3


def test_twenty_sessions_every_answer_stored_and_a_newcomer_served_within_two_answer_lengths(tmp_path,
                                                                                            base_model_dir):
    users = [f"u{i:02d}" for i in range(1, SESSIONS + 1)]
    new = [f"new{i}" for i in range(1, NEWCOMERS + 1)]
    users_file = L.write_users(tmp_path / "users.json", ["idle", *users, *new])
    with running_app(tmp_path / "data", base_model_dir, KAIZEN_AUTH_FILE=str(users_file),
                     KAIZEN_MAX_NEW_TOKENS="24") as server:
        result = L.run_load(server["url"], session_users=users, newcomer_users=new)
        stored = L.check_stored(server["db"], result["records"])
    records = result.pop("records")
    print(json.dumps({**result, "stored": stored}, indent=2))
    assert not result["failed"], result["failed"][:3]
    assert {r["user"] for r in records} == {"idle", *users, *new}
    assert stored["problems"] == [] and stored["answers"] == len(records) == stored["stored"]
    assert result["load"]["answers"] >= 2 * SESSIONS  # every session had answers while the newcomers came
    # Fairness, relative to the same run: a user who never asked starts in the slot the gate keeps for fresh users
    # (agent/fair.py), so each newcomer's first token comes before the sessions' median one. The issue's figure,
    # first token within 2 idle answer-lengths, is reported (printed above, and by the bench), not asserted: it
    # depends on the machine. On a quiet 2-core one it was 1.47 / 0.51 / 1.07 (worst of three newcomers, three
    # runs) with the kept slot, and 2.98-4.92 without it, when a newcomer waited for the next shared slot to free
    # (answers started together end together: up to a whole answer under load). The kept slot itself is guarded
    # by tests/test_engine_llamacpp.py::test_a_newcomer_starts_in_the_kept_slot_while_the_shared_one_is_busy.
    p50 = result["load"]["first_token_p50_s"]
    assert max(result["newcomer_first_token_s"]) < p50, (
        f"newcomers' first tokens {result['newcomer_first_token_s']} s are not ahead of the sessions' median {p50} s")
