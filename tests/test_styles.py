"""The style suite through the real loop (bench/style_suite.py as a user runs it): scripted edits into a house style
whose fixed element is not the opening words -> `run_once` -> the promoted adapter answers prompts never seen in
training in the style *and* still answers (distinct, relevant, no loops).

The loop test runs when KAIZEN_STYLE_SUITE is set (a style name, a comma-separated list, or `all`): one style
through the loop costs ~10 minutes of CPU, five about an hour, more than `make test` should take. The pure checks
of the styles always run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from adapters.styles import STYLES
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_styles_edits_follow_their_own_checker_and_the_fixed_text_alone_does_not(shared_data):
    from lab.tasks import oasst_first_turns

    trees = [json.loads(line) for line in (shared_data / "oasst_en_100" / "en_100_tree.jsonl").open()]
    answers = [a for _, a in oasst_first_turns(trees)]
    for style in STYLES.values():
        edited = [style.edit(a) for a in answers]
        assert sum(map(style.follows, edited)) / len(edited) >= 0.9, style.name
    assert not STYLES["signoff"].follows("Hope this helps! - Kaizen")
    assert not STYLES["opening"].follows("Kaizen here:")
    assert not STYLES["tldr"].follows("TL;DR: nothing to say here")
    assert not STYLES["bullets"].follows("- ok\n- yes")
    assert not STYLES["short"].follows("Yes.")


def test_a_house_style_is_learned_through_the_loop_and_the_adapter_still_answers(shared_data, base_model_dir,
                                                                                  tmp_path):
    wanted = os.environ.get("KAIZEN_STYLE_SUITE", "")
    if not wanted:
        pytest.skip("set KAIZEN_STYLE_SUITE=signoff (or a list, or all) to run styles through the real loop")
    styles = ",".join(STYLES) if wanted == "all" else wanted
    out = tmp_path / "suite.json"
    run = subprocess.run([sys.executable, "bench/style_suite.py", "--styles", styles, "--edits", "48", "--eval",
                          "24", "--base-model", str(base_model_dir), "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=5400)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["eval_prompts"] == 24 and report["edits"] == 48
    for r in report["styles"]:
        print(json.dumps({k: r.get(k) for k in ("style", "status", "version", "goals", "reason")}))
        base, adapter = r["base"], r.get("adapter") or {}
        assert r["status"] == "promoted", r["reason"]
        assert r["served"] == r["version"]
        assert adapter["compliance"] >= 0.75 and adapter["compliance"] - base["compliance"] >= 0.5, r["style"]
        assert adapter["distinct"] >= 0.9 and adapter["loops"] <= base["loops"] + 0.1
        assert adapter["relevance"] >= base["relevance"] - 0.1
