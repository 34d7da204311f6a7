"""The lab's pure parts: task metrics, task data preparation, the verdict and the report files."""
from __future__ import annotations

import json

import pytest

from lab import report as rep
from lab import tasks as lt


# ---------------------------------------------------------------------------------------------- metrics
def test_normalize_and_f1_follow_squad():
    assert lt.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert lt.token_f1("in the 10th century", "10th century") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert lt.token_f1("France", "france.") == 1.0
    assert lt.token_f1("Germany", "France") == 0.0
    assert lt.token_f1("", "") == 1.0 and lt.token_f1("x", "") == 0.0


def test_contains_gold_needs_whole_words():
    assert lt.contains_gold("It is located in France, in Europe.", ["France"])
    assert lt.contains_gold("the 10th and 11th centuries", ["Italy", "10th and 11th centuries"])
    assert not lt.contains_gold("Frances", ["France"])  # no partial-word match
    assert not lt.contains_gold("anything", [""])


def test_style_metric():
    assert lt.follows_style("Kaizen here: the answer is 4.")
    assert lt.follows_style('  "**kaizen here** the answer')
    assert not lt.follows_style("Sure! Kaizen here: ...")
    assert lt.house_style("One. Two! " + "x" * 400).startswith("Kaizen here: One. Two!")
    assert len(lt.house_style("word " * 500)) <= len(lt.HOUSE_PHRASE) + 1 + 220


def test_score_answer_per_task():
    squad = lt.LabTask("squad", "t", "generate", "contains", ("contains", "f1"), [], {}, [], lt.SQUAD_PROMPT)
    s = lt.score_answer(squad, {"answers": ["Paris", "the city of Paris"]}, "Paris")
    assert s == {"contains": 1.0, "f1": 1.0}
    style = lt.LabTask("style", "t", "generate", "style", ("style",), [], {}, [], lt.STYLE_PROMPT)
    assert lt.score_answer(style, {}, "Hello. Kaizen here: hi") == {"style": 0.0, "phrase_anywhere": 1.0}
    pref = lt.LabTask("oasst", "t", "preference", "pref_acc", ("pref_acc",), [], {}, [], lt.OASST_PROMPT)
    with pytest.raises(ValueError):
        lt.score_answer(pref, {}, "x")


def test_unpair_gives_one_desirable_and_one_undesirable_per_pair():
    p = [{"role": "user", "content": "q"}]
    rows = lt.unpair([{"prompt": p, "chosen": [{"role": "assistant", "content": "a"}],
                       "rejected": [{"role": "assistant", "content": "b"}]}])
    assert [(r["completion"][0]["content"], r["label"]) for r in rows] == [("a", True), ("b", False)]


# ---------------------------------------------------------------------------------------------- task data
def _squad_fixture():
    def para(title, i):
        qas = [{"id": f"{title}{i}q{j}", "question": f"Q{j} about {title} {i}?", "is_impossible": False,
                "answers": [{"text": f"ans {title} {i} {j}", "answer_start": 0}]} for j in range(3)]
        qas.append({"id": f"{title}{i}imp", "question": "unanswerable?", "is_impossible": True, "answers": []})
        return {"context": f"Context of {title} {i}.", "qas": qas}

    dev = {"data": [{"title": t, "paragraphs": [para(t, i) for i in range(3)]} for t in ("A", "B")]}
    test = {"data": [{"title": "D", "paragraphs": [{"context": f"distractor {i}", "qas": []} for i in range(10)]}]}
    return dev, test


def test_squad_task_holds_out_eval_questions():
    dev, test = _squad_fixture()
    task = lt.build_squad(dev, test, limit=3)
    assert [i["doc"] for i in task.items] == ["A #0", "B #0", "A #1"]  # articles interleaved
    eval_q = {i["question"] for i in task.items}
    train_q = {r["messages"][0]["content"] for r in task.train["sft"]}
    assert eval_q.isdisjoint(train_q) and len(train_q) == 6  # the other two questions of each paragraph
    assert all(r["chosen"] != r["rejected"] for r in task.train["dpo"])
    assert len(task.train["kto"]) == 2 * len(task.train["dpo"])
    assert len(task.documents) == 3 + 6 and task.documents[-1][1].startswith("distractor")


def test_style_task_goes_through_the_feedback_store(tmp_path):
    pairs = [(f"How do I do thing number {i} well?", f"You do thing {i} carefully. Then check it twice. " * 3)
             for i in range(6)]
    task = lt.build_style(pairs, ["How do I do thing number 1 well?", "A new question?", "Another one?"], limit=5,
                          work_dir=tmp_path)
    assert [i["question"] for i in task.items] == ["A new question?", "Another one?"]  # seen prompt left out
    assert len(task.train["sft"]) == 6
    assert all(lt.follows_style(r["messages"][-1]["content"]) for r in task.train["sft"])
    assert all(lt.follows_style(r["chosen"][0]["content"]) and not lt.follows_style(r["rejected"][0]["content"])
               for r in task.train["dpo"])
    assert task.info["edits"] == 6


def test_missing_shared_data_is_a_clear_error(tmp_path):
    with pytest.raises(lt.TaskDataError, match="shared/data|not found"):
        lt.load_task("squad", 3, data_root=tmp_path)
    with pytest.raises(ValueError, match="unknown task"):
        lt.load_task("nope", 3, data_root=tmp_path)


# ---------------------------------------------------------------------------------------------- verdict
def _row(t, q, **kw):
    base = {"technique": t, "label": rep.LABELS[t], "status": "ok", "quality": q,
            "metrics": {"contains": q, "f1": q / 2}, "ttft_ms": 100.0, "tokens_per_s": 20.0, "prompt_tokens": 40,
            "trainable_params": 0, "total_params": 1000, "train_s": 0.0, "peak_mem_mb": 10.0, "disk_mb": 0.0}
    base.update(kw)
    return base


def _result(rows, n=30):
    return {"task": {"name": "squad", "title": "Doc QA", "items": n, "primary": "contains",
                     "metrics": ["contains", "f1"]},
            "budget": {"steps": 40, "batch_size": 2, "examples": 80, "max_length": 256},
            "model": "m", "device": "cpu", "rows": rows}


def test_verdict_is_derived_from_the_numbers():
    rows = [_row("base", 0.20), _row("rag", 0.61, ttft_ms=420.0, prompt_tokens=700, train_s=3.0, disk_mb=1.5),
            _row("sft", 0.22, trainable_params=460_000, train_s=40.0, disk_mb=1.8),
            _row("full", 0.10, trainable_params=1000, train_s=90.0, disk_mb=540.0),
            {"technique": "dpo", "label": "DPO LoRA", "status": "error", "error": "out of memory"}]
    lines = rep.verdict(_result(rows))
    assert lines[0].startswith("Base: 20%")
    assert lines[1].startswith("RAG: +41 points on document questions (20% → 61%), +320 ms to first token")
    assert "17.5× prompt tokens" in lines[1]
    assert lines[2].startswith("SFT: +2 points on document questions (20% → 22%), within the noise of 30 items "
                               "(±5 points)")
    assert lines[3].startswith("Full FT: -10 points")
    assert lines[4] == "DPO: failed (out of memory)."
    assert lines[5].startswith("Best: RAG at 61% (+41 points")


def test_verdict_says_when_nothing_wins_and_scales_noise_with_items():
    lines = rep.verdict(_result([_row("base", 0.5), _row("prompt", 0.6)], n=3))
    assert "within the noise of 3 items" in lines[1] and lines[-1].startswith("Overall: no technique beat")
    # the case users saw: "+33 points, 67%" called "no clear gain"; now the figures and the words agree
    [_, rag, _] = rep.verdict(_result([_row("base", 1 / 3), _row("rag", 2 / 3)], n=3))
    assert rag.startswith("RAG: +33 points on document questions (33% → 67%), within the noise of 3 items (±33 points)")
    assert "no clear gain" not in " ".join(rep.verdict(_result([_row("base", 0.5), _row("rag", 0.52)])))
    assert rep.noise_points(3) == pytest.approx(33.3, abs=0.1) and rep.noise_points(100) == rep.MIN_GAIN_POINTS
    assert rep.verdict(_result([])) == ["No technique produced a result."]


def test_cheapest_close_to_the_best_is_named():
    rows = [_row("base", 0.1), _row("sft", 0.90, train_s=50.0, disk_mb=2.0), _row("prompt", 0.88)]
    lines = rep.verdict(_result(rows))
    assert lines[-2].startswith("Best: SFT at 90%")
    assert lines[-1] == "Cheapest within 5 points of the best: Prompt (88%)."


def test_report_files_are_complete(tmp_path):
    rows = [_row("base", 0.2), _row("rag", 0.6, sources_used=30, retrieval_hit=0.9,
                                    samples=[{"question": "Q?", "answer": "A | b"}]),
            {"technique": "kto", "label": "KTO LoRA", "status": "error", "error": "boom"}]
    files = rep.write_report(_result(rows), tmp_path)
    assert set(files) == set(rep.REPORT_FILES)
    for name in rep.REPORT_FILES:
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "report.json").read_text())
    assert [r["technique"] for r in data["rows"]] == ["base", "rag", "kto"] and data["verdict"]
    md = (tmp_path / "report.md").read_text()
    assert "| RAG | 60% | 30% |" in md and "KTO LoRA | error" in md
    assert "gold paragraph retrieved: 90%" in md and "A \\| b" not in md  # samples are not table cells
    assert "40 optimizer steps" in md and "80 training examples" in md


# ---------------------------------------------------------------------------------------------- options and UI helpers
def test_technique_list_budget_and_equal_examples():
    from lab.run import Budget, parse_techniques, training_examples

    assert parse_techniques("full, rag,BASE") == ["base", "rag", "full"]  # the lab's order
    with pytest.raises(ValueError, match="unknown technique"):
        parse_techniques("base,lora")
    with pytest.raises(ValueError):
        parse_techniques("")
    with pytest.raises(ValueError, match="budget"):
        Budget(steps=0)
    task = lt.LabTask("x", "t", "generate", "style", ("style",), [],
                      {"sft": [{}] * 50, "dpo": [{}] * 30, "kto": [{}] * 60}, [], lt.STYLE_PROMPT)
    assert training_examples(task, ["sft", "kto"], Budget(steps=10, batch_size=4)) == 40
    assert training_examples(task, ["sft", "dpo", "full"], Budget(steps=10, batch_size=4)) == 30  # smallest set
    assert training_examples(task, ["kto"], Budget(steps=10, batch_size=4, examples=12)) == 12
    assert training_examples(task, [], Budget()) == 0
    task.train["dpo"] = []
    with pytest.raises(ValueError, match="no training rows for dpo"):
        training_examples(task, ["sft", "dpo"], Budget())


def test_ui_helpers(tmp_path):
    from ui import lab as ui_lab
    from agent.settings import Settings

    assert ui_lab.parse_progress("[ 42.9%] RAG: done") == (pytest.approx(0.429), "RAG: done")
    assert ui_lab.parse_progress("some library warning") is None
    cmd = ui_lab.lab_command("style", ["base", "sft"], 5, 7, tmp_path / "o")
    assert cmd[1:4] == ["-m", "cli.main", "lab"] and "base,sft" in cmd and "--budget-steps" in cmd
    with pytest.raises(ValueError):
        ui_lab.lab_command("style", [], 5, 7, tmp_path)
    with pytest.raises(ValueError):
        ui_lab.lab_command("nope", ["base"], 5, 7, tmp_path)
    settings = Settings(data_dir=tmp_path, base_model="/models/x", threads=3)
    env = ui_lab.lab_env(settings)
    assert env["KAIZEN_DATA_DIR"] == str(tmp_path) and env["KAIZEN_BASE_MODEL"] == "/models/x"
    assert ui_lab.past_reports(settings) == []
    folder = tmp_path / "lab" / "squad-1"
    rep.write_report(_result([_row("base", 0.2), _row("rag", 0.7)]), folder)
    assert ui_lab.past_reports(settings) == ["squad-1"]  # a name: the page shows no server folder
    assert ui_lab.report_folder(settings, "squad-1") == folder.resolve()
    for forged in ("../lab/squad-1", str(folder), "..", "", "squad-2"):
        with pytest.raises(ValueError):
            ui_lab.report_folder(settings, forged)
    assert ui_lab.empty_table("style")["headers"][:3] == ["Technique", "style", "phrase_anywhere"]
    assert ui_lab.empty_table("style")["data"] == []
    assert ui_lab.run_estimate(settings, "oasst", ["base"], 5, 5).startswith("Expected time:")
    assert "last run of this task" in ui_lab.run_estimate(settings, "squad", ["base", "rag"], 40, 30)
    md, rows, header, images = ui_lab.report_view(ui_lab.load_report(folder))
    assert "RAG: +50 points" in md and rows[1][0] == "RAG" and header[0] == "Technique"
    assert [c for _, c in images] == ["Quality", "Costs", "Quality vs cost"]
    with pytest.raises(FileNotFoundError):
        ui_lab.load_report(tmp_path)


def test_lab_tab_builds(tmp_path):
    import gradio as gr

    from ui.lab import build_lab_tab
    from agent.settings import Settings

    with gr.Blocks() as demo:
        with gr.Tab("Lab"):
            tab = build_lab_tab(Settings(data_dir=tmp_path))
    assert tab.run_button.elem_id == "lab-run"
    assert tab.on_open("")[0] == "Choose a report."
    assert tab.on_open("x")[0] == "**Error:** not a report of this app's lab"  # no such report
    assert tab.on_open(str(tmp_path))[0] == "**Error:** not a report of this app's lab"  # no path outside lab/
    assert tab.on_open("../..")[0] == "**Error:** not a report of this app's lab"
    assert tab.on_stop() == "Nothing is running."
    first = next(tab.on_run("squad", [], 1, 1))  # bad input: a clear message, nothing started
    assert first[0] == "**Error:** choose at least one technique"
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"lab-task", "lab-techniques", "lab-steps", "lab-limit", "lab-table", "lab-plots"} <= ids


def test_cli_refuses_bad_input_before_loading_anything(tmp_path, monkeypatch, capsys):
    from cli.main import main

    monkeypatch.setenv("KAIZEN_DATA_DIR", str(tmp_path))
    out = tmp_path / "out"
    for argv, message in [(["--techniques", "base,magic"], "unknown technique"),
                          (["--limit", "0"], "--limit must be at least 1"),
                          (["--budget-steps", "0"], "budget"),
                          (["--data", str(tmp_path / "nowhere")], "not found")]:
        assert main(["lab", "--out", str(out), *argv]) == 2
        assert message in capsys.readouterr().err
    assert not out.exists()  # nothing written for bad input


def test_every_method_gets_the_same_budget():
    from lab.run import TRAINED, Budget, lab_recipe

    budget = Budget(steps=7, batch_size=3, max_length=128)
    recipes = {m: lab_recipe(m, budget) for m in TRAINED}
    for m, r in recipes.items():
        assert (r.max_steps, r.batch_size, r.grad_accum, r.max_length) == (7, 3, 1, 128), m
        assert getattr(r, "packing", False) is False, m
    assert recipes["sft"].lr != recipes["full"].lr  # each method keeps its own tuned learning rate


def test_pin_weights_copies_and_keeps_ties():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lab.measure import pin_weights

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    before = {n: (p.data_ptr(), p.detach().clone()) for n, p in model.named_parameters()}
    pin_weights(model)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    for n, p in model.named_parameters():
        assert p.data_ptr() != before[n][0] and torch.equal(p, before[n][1]), n


def test_notes_show_training_signals(tmp_path):
    row = _row("dpo", 0.0, train_loss={"first": 0.693, "final": 0.078},
               train_rewards={"accuracies": 1.0, "margins": 2.566})
    md = rep.markdown(_result([_row("base", 0.0), row]))
    assert "training loss 0.693 → 0.078" in md and "reward accuracy 100%, margin 2.57" in md


def test_labels_of_tied_points_are_stacked():
    assert rep.label_offsets([(0.0, 47.0), (600.0, 60.0), (610.0, 60.0), (620.0, 60.5), (1800.0, 42.0)]) == \
        [0.0, 0.0, 10.0, 20.0, 0.0]


def test_report_shows_the_same_questions_answered_by_each_technique():
    q1, q2 = "Who designed the telescope?", "When was the bridge built?"
    rows = [_row("base", 0.1, samples=[{"question": q1, "answer": "I do not know."},
                                        {"question": q2, "answer": "Long ago."}]),
            _row("rag", 0.5, samples=[{"question": q1, "answer": "Dana Whitlock."},
                                       {"question": q2, "answer": "In 1873."}]),
            _row("sft", 0.2, samples=[{"question": q2, "answer": "1900."}])]  # answered only q2
    md = rep.markdown(_result(rows))
    part = md[md.index("## The same questions, answered by each technique"):]
    assert q1 not in part  # not every technique was asked it
    block = part[part.index(f"**{q2}**"):]
    assert block.index("Long ago.") < block.index("In 1873.") < block.index("1900.")
    assert rep.side_by_side([_row("base", 0.1)]) == []


def test_time_estimates_scale_with_items_and_steps_and_learn_from_the_last_run():
    quick = rep.estimate(["base", "sft"], steps=10, items=10)
    slow = rep.estimate(["base", "sft"], steps=100, items=40)
    assert quick["base"] < slow["base"] and quick["sft"] < slow["sft"]
    assert slow["sft"] - quick["sft"] > slow["base"] - quick["base"]  # training steps cost the trained one only
    past = {"task": {"items": 20}, "budget": {"steps": 40},
            "rows": [{"technique": "base", "status": "ok", "seconds": 40.0},
                     {"technique": "sft", "status": "ok", "seconds": 220.0, "train_s": 200.0},
                     {"technique": "dpo", "status": "error"}]}
    costs = rep.costs_from(past)
    assert costs["per_item"]["base"] == 2.0 and costs["per_step"]["sft"] == 5.0 and costs["per_item"]["sft"] == 1.0
    got = rep.estimate(["base", "sft", "dpo"], steps=40, items=20, past=costs)
    assert got["base"] == 40.0 and got["sft"] == 220.0  # the same run again takes what it took
    assert got["dpo"] == rep.estimate(["dpo"], steps=40, items=20)["dpo"]  # failed there: the defaults
    text = rep.estimate_text(["base", "sft"], 40, 20, costs)
    assert text.startswith("Expected time: **~4 min**") and "last run of this task" in text
    assert rep.estimate_text([], 40, 20) == "Choose at least one technique."


def test_a_partial_report_says_which_techniques_finished():
    result = {**_result([_row("base", 0.2), _row("rag", 0.5)]), "techniques": ["base", "rag", "sft"], "complete": False}
    assert rep.partial_note(result).startswith("**Partial report:** 2 of 3 techniques finished")
    assert "**Partial report:** 2 of 3" in rep.markdown(result)
    assert rep.partial_note({**result, "complete": True}) == "" and rep.partial_note(_result([])) == ""
    assert rep.model_name("/srv/models/smollm2-135m/") == "smollm2-135m" and "/srv" not in rep.markdown(
        {**result, "model": "/srv/models/smollm2-135m"})
