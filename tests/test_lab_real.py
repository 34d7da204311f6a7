"""The techniques lab end to end on the real default model, tiny budgets: every technique really runs."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lab.run import TECHNIQUES, Budget, run_lab
from lab.report import REPORT_FILES
from agent.settings import Settings

pytestmark = pytest.mark.slow


def test_every_technique_really_runs_on_squad(tmp_path, base_model_dir, shared_data):
    settings = Settings(data_dir=tmp_path, base_model=str(base_model_dir))
    out = tmp_path / "report"
    result = run_lab(settings, "squad", TECHNIQUES, Budget(steps=1, batch_size=2, max_length=96), limit=2,
                     out_dir=out, data_root=shared_data, max_new_tokens=8, isolate=False)
    rows = {r["technique"]: r for r in result["rows"]}
    assert list(rows) == list(TECHNIQUES)
    assert all(r["status"] == "ok" for r in rows.values()), {t: r.get("error") for t, r in rows.items()}
    base, prompt, rag, full = rows["base"], rows["prompt"], rows["rag"], rows["full"]
    n = result["task"]["items"]
    assert n == 2 and all(r["answered"] == n for r in rows.values())

    # The prompt row changed only the prompt: same weights, no training, no retrieval, its own template.
    assert prompt["trainable_params"] == 0 and prompt["train_s"] == 0 and prompt["sources_used"] == 0
    assert prompt["template"] == "lab-squad-prompt"
    assert {s["template"] for s in prompt["samples"]} == {"lab-squad-prompt"}
    assert {s["template"] for s in base["samples"]} == {"plain"}
    assert prompt["prompt_tokens"] > base["prompt_tokens"]  # the engineered system prompt, nothing else

    # The RAG row used retrieved context: sources on every answer, far longer prompts, an index on disk.
    assert rag["sources_used"] == n and base["sources_used"] == 0
    assert all(s["sources"] and s["template"] == "grounded" for s in rag["samples"])
    assert rag["prompt_tokens"] > 3 * base["prompt_tokens"]
    assert rag["trainable_params"] == 0 and rag["train_s"] > 0 and rag["disk_mb"] > 0
    assert rag["documents"] == result["task"]["documents"] > n

    # Trained rows: equal budgets; LoRA trains a sliver, the full fine-tune trains (and changes) every weight.
    for t in ("sft", "dpo", "kto", "full"):
        r = rows[t]
        assert r["train_steps"] == 1 and r["train_examples"] == result["budget"]["examples"] == 2, t
        assert r["train_s"] > 0 and r["train_peak_mb"] > 0 and r["disk_mb"] > 0, t
        assert (r["recipe"]["batch_size"], r["recipe"]["grad_accum"], r["recipe"]["max_steps"]) == (2, 1, 1), t
    for t in ("sft", "dpo", "kto"):
        assert 0 < rows[t]["trainable_params"] < rows[t]["total_params"] / 10, t
    assert full["trainable_params"] == full["total_params"] == full["loaded_params"]
    assert full["changed_tensors"] == full["tensors"] > 0
    assert full["disk_mb"] > 10 * rows["sft"]["disk_mb"]  # a whole model, not an adapter

    # The report is complete: every file, every row in the JSON, a verdict line per technique.
    for name in REPORT_FILES:
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "report.json").read_text())
    assert [r["technique"] for r in data["rows"]] == list(TECHNIQUES)
    assert all(r["metrics"].keys() >= {"contains", "f1"} for r in data["rows"])
    assert len(data["verdict"]) >= len(TECHNIQUES)
    md = (out / "report.md").read_text()
    for label in ("Base model", "Prompt engineering", "RAG", "SFT LoRA", "DPO LoRA", "KTO LoRA", "Full fine-tune"):
        assert f"| {label} |" in md
    assert "1 optimizer step, batch size 2, 2 training examples" in md


def test_preference_task_scores_adapters_against_the_base(tmp_path, base_model_dir, shared_data, monkeypatch, capsys):
    """`kaizen lab` on the oasst pairs: the base's reward is its raw margin, an adapter's is relative to the base."""
    from cli.main import main

    monkeypatch.setenv("KAIZEN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KAIZEN_BASE_MODEL", str(base_model_dir))
    out = tmp_path / "oasst"
    rc = main(["lab", "--task", "oasst", "--techniques", "dpo,base", "--budget-steps", "1", "--batch-size", "2",
               "--max-length", "96", "--limit", "2", "--max-new-tokens", "4", "--out", str(out),
               "--data", str(shared_data)])
    assert rc == 0
    assert "| DPO LoRA |" in capsys.readouterr().out
    data = json.loads((out / "report.json").read_text())
    base, dpo = data["rows"]  # the lab's order, whatever the order asked
    assert (base["technique"], dpo["technique"]) == ("base", "dpo")
    assert base["reward"] == "raw log-probability margin"
    assert dpo["reward"] == "implicit reward relative to the base model"
    for r in (base, dpo):
        assert set(r["metrics"]) >= {"pref_acc", "pref_acc_raw", "mean_margin"}
        assert 0 <= r["quality"] <= 1 and r["answered"] == 2  # timed on real generations too
    assert dpo["train_steps"] == 1 and dpo["trainable_params"] > 0


def processes() -> list[tuple[int, str]]:
    """(pid, command line) of the processes running now."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            out.append((int(d.name), (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")))
        except (ValueError, OSError):
            continue
    return out


def test_lab_tab_runs_the_lab_in_a_child_process(tmp_path, base_model_dir, shared_data, monkeypatch):
    """The Lab tab's Run handler: `kaizen lab` in a child process (at a lower priority than the chat, in a session of
    its own), progress streamed, the report shown."""
    import gradio as gr

    from ui.lab import build_lab_tab, past_reports

    settings = Settings(data_dir=tmp_path, base_model=str(base_model_dir))
    with gr.Blocks():
        tab = build_lab_tab(settings)
    updates, seen = [], {}
    for update in tab.on_run("squad", ["base"], 1, 1):
        updates.append(update)
        if update[0].startswith("Running:") and not seen:  # the child is there: how it was started
            [pid] = [pid for pid, cmd in processes() if str(tmp_path) in cmd]
            seen = {"nice": os.getpriority(os.PRIO_PROCESS, pid), "session": os.getsid(pid) == pid,
                    "autogroup": (Path(f"/proc/{pid}/autogroup").read_text().split()[-1]
                                  if Path(f"/proc/{pid}/autogroup").exists() else None)}
    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert seen["nice"] == min(19, own + settings.background_nice) and seen["session"], seen
    assert seen["autogroup"] in (None, str(settings.background_nice)), seen
    status, verdict, table, plots, files, previous = updates[-1]
    assert any(u[0].startswith("Running:") for u in updates[:-1])
    assert status == "Done.", status
    assert "Base: " in verdict and "the reference" in verdict
    assert table["value"][0][0] == "Base model"
    assert [caption for _, caption in plots] == ["Quality", "Costs", "Quality vs cost"]
    assert {p.rsplit("/", 1)[-1] for p in files} >= {"report.md", "report.json"}
    assert previous["value"] == past_reports(settings)[0]
    assert tab.on_open(previous["value"])[1] == verdict  # reopening shows the same report


def test_lab_stop_keeps_the_finished_rows_and_progress_never_goes_back(tmp_path, base_model_dir, shared_data):
    """Stop in the middle of a run: the techniques that finished stay in the table (a partial report), and the
    progress shown on the way only ever went up."""
    import re

    import gradio as gr

    from ui.lab import build_lab_tab

    settings = Settings(data_dir=tmp_path, base_model=str(base_model_dir))
    with gr.Blocks():
        tab = build_lab_tab(settings)
    shown, stopped = [], False
    for update in tab.on_run("squad", ["base", "prompt", "sft"], 2, 1):
        status = update[0]
        if m := re.match(r"Running: (\d+)%", status or ""):
            shown.append(int(m.group(1)))
        if not stopped and "SFT LoRA:" in (status or ""):  # base and prompt are done: stop during SFT
            assert tab.on_stop() == "Stopping…"
            stopped = True
    status, verdict, table, *_ = update
    assert stopped and status == "Stopped after 2 of 3 techniques; their results are kept below.", status
    assert [row[0] for row in table["value"]] == ["Base model", "Prompt engineering"]
    assert "**Partial report:** 2 of 3 techniques finished" in verdict and "Prompt: " in verdict
    assert shown and shown == sorted(shown), shown
