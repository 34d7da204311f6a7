"""Evaluation metrics and the promotion gate: pure rules, and a real candidate trained on swapped preferences
refused against a good active adapter, which stays active."""
from __future__ import annotations

import json

import pytest

from adapters import evaluate as E
from adapters import train as T
from adapters.registry import Registry
from tests.train_support import dpo_rows, save_tiny_base, sft_rows, tiny_settings, write_data


def report(acc=0.5, sim=0.2, nonempty=1.0, degenerate=0, repetition=0.0, ppl_ratio=1.0):
    return {"pref": {"n": 8, "accuracy": acc}, "similarity": {"n": 4, "rouge_l": sim},
            "general": {"n": 6, "nonempty": nonempty, "degenerate": degenerate, "repetition": repetition,
                        "ppl_ratio": ppl_ratio}}


# ---------------------------------------------------------------------------------------------- pure metrics
def test_text_metrics():
    assert E.rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert E.rouge_l("Kaizen says: hello there", "kaizen says hello") == pytest.approx(2 * 0.75 * 1 / 1.75)
    assert E.rouge_l("", "x") == 0.0 and E.rouge_l("", "") == 1.0
    assert E.token_f1("a b c", "c b a") == 1.0 and E.token_f1("a", "b") == 0.0
    assert E.repetition("one two three four five") == 0.0
    loop = "I am a bot. " * 10
    assert E.repetition(loop) > 0.6 and E.degenerate(loop) and E.degenerate("  ")
    assert not E.degenerate("Paris is the capital of France.")


def test_general_answers_are_checked_for_their_facts():
    assert E.mentions("Kaizen here: The capital of France is Paris.", ["paris"])
    assert E.mentions("There are 7 days.", ["seven|7"]) and not E.mentions("Red and green.", ["red", "blue"])
    g = E.general_summary(["Paris.", "I don't know."], None, None, [["paris"], ["earth"]])
    assert g["correct"] == 0.5 and g["ppl_ratio"] is None
    ok, reasons = E.gate(report(acc=1.0) | {"general": {"n": 6, "nonempty": 1, "correct": 0.5}},
                         report() | {"general": {"n": 6, "nonempty": 1, "correct": 1.0}})
    assert not ok and any("answered correctly 50% vs 100%" in r for r in reasons)
    assert all(len(item) == 3 and item[2] for item in E.GENERAL)


def test_summaries():
    s = E.pref_summary([0.5, -0.1, 0.0, 1.0], raw=[1, -1, 1, 1])
    assert s["n"] == 4 and s["accuracy"] == pytest.approx((1 + 0 + 0.5 + 1) / 4) and s["raw_accuracy"] == 0.75
    assert E.pref_summary([0.0] * 3, raw=[0, 0, 0])["accuracy"] == 0.5  # the base itself: all ties
    assert E.pref_summary([], [])["accuracy"] is None
    g = E.general_summary(["fine answer", ""], nll=1.0, base_nll=0.5)
    assert g["nonempty"] == 0.5 and g["degenerate"] == 1 and g["ppl_ratio"] == pytest.approx(2.718281828 ** 0.5)


# ---------------------------------------------------------------------------------------------- the gate
def test_the_gate_reads_answers_decoded_as_the_app_serves_them(tiny_llama, tokenizer):
    """The evaluation's answers (batched, left-padded) follow the app's decoding: with the served n-gram ban a
    prompt that loops greedily does not loop, and an answer with nothing to ban comes out the same."""
    from adapters.collapse import loops
    from agent.decoding import served_decoding
    from agent.settings import Settings

    tokenizer.padding_side = "left"
    prompts = [[{"role": "user", "content": q}] for q in ("Hi", "Tell me about the sea and the ships on it", "Why?")]
    greedy = E.generate(tiny_llama, tokenizer, prompts, "cpu", 60)
    assert [loops(a) for a in greedy] == [False, True, False] and E.EvalConfig().served_decoding
    for rule in ("ban", "dry"):  # the transformers engine's n-gram ban; llama-server's DRY
        how = served_decoding(Settings(), rule=rule, temperature=0.0)
        assert how.no_repeat_ngram_size == 4 and how.loop_rule == rule
        served = E.generate(tiny_llama, tokenizer, prompts, "cpu", 60, decoding=how)
        assert not any(map(loops, served)), (rule, served)
        assert served[0] == greedy[0], rule  # an answer with no repeated 4-gram is not touched


@pytest.mark.slow  # two evaluations of a tiny model, ~10 s
def test_the_evaluation_report_says_how_its_answers_were_decoded_and_they_were(tiny_llama, tokenizer, tmp_path):
    """`evaluate` records the decoding in each report: the answers it judged must have been decoded that way (the
    gate's loop check reads them). A prompt that loops greedily does not loop in the served report."""
    tiny_llama.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    data = write_data(tmp_path / "data", sft_eval=[{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "Big."}]}
                               for q in ("Hi", "Tell me about the sea and the ships on it", "Why?")])
    config = dict(general=1, open=1, passages=1, max_new_tokens=60)
    reports = {served: E.evaluate(tiny_settings(tmp_path / "d", tmp_path / "base"), data, {"active": None},
                                  E.EvalConfig(served_decoding=served, **config))["active"]
               for served in (False, True)}
    greedy, served = reports[False], reports[True]
    assert greedy["decoding"] == "greedy" and greedy["answers"]["loops"] > 0
    assert served["decoding"]["no_repeat_ngram_size"] == 4 and served["decoding"]["loop_rule"] == "ban"
    assert served["answers"]["loops"] == 0, served["examples"]


def test_gate_promotes_a_clearly_better_candidate():
    ok, reasons = E.gate(report(acc=0.9, sim=0.4), report(acc=0.5, sim=0.2), margin=0.05)
    assert ok and any("better" in r for r in reasons) and reasons[0].startswith("regression checks passed")


def test_gate_refuses_worse_equal_or_regressing_candidates():
    assert not E.gate(report(acc=0.1), report(acc=0.5))[0]  # e.g. trained on swapped pairs
    ok, reasons = E.gate(report(acc=0.52, sim=0.21), report(acc=0.5, sim=0.2))
    assert not ok and "does not beat" in reasons[-1]
    ok, reasons = E.gate(report(acc=1.0, sim=0.0), report(acc=0.5, sim=0.3))  # wins one, loses the other
    assert not ok and any("worse" in r for r in reasons)
    for bad in (dict(nonempty=0.5), dict(degenerate=2), dict(repetition=0.8), dict(ppl_ratio=3.0)):
        ok, reasons = E.gate(report(acc=1.0, sim=0.9, **bad), report())
        assert not ok and any(r.startswith("regression:") for r in reasons), bad


def test_gate_wants_answers_closer_to_the_edits_when_the_pairs_are_edits():
    """A DPO adapter raises preference accuracy on edit pairs without changing what it writes (seen in the style
    suite: promoted with 0% of answers in the style); when most held-out pairs are edits, similarity must win too."""
    edits = report(acc=0.9, sim=0.21)
    edits["pref"]["from_edits"] = 6  # of 8
    ok, reasons = E.gate(edits, report(acc=0.5, sim=0.2))
    assert not ok and reasons[-1].startswith("writes no closer to the users' edits: 6 of 8 held-out pairs are edits")
    edits["similarity"]["rouge_l"] = 0.3  # the answers moved toward the edits
    assert E.gate(edits, report(acc=0.5, sim=0.2))[0]
    picks = report(acc=0.9, sim=0.21)
    picks["pref"]["from_edits"] = 3  # mostly picks: their accuracy is the measure
    assert E.gate(picks, report(acc=0.5, sim=0.2))[0]


def test_answers_that_follow_what_the_edits_changed_meet_the_edits_rule_without_a_similarity_win():
    """The style suite's "short" adapter answered in two sentences yet scored 0.247 ROUGE-L against the edits, as
    the base did: the edits' own signature (here: all of them add a sign-off) is the measure the gate also takes;
    answers that do not show it stay refused, with what was measured in the reason."""
    sig = {"pairs": 8, "phrases": ["hope this helps ! - kaizen"], "bullets": False, "length_ratio": 0.4}
    def with_style(rep, share):
        rep["edit_style"] = {"signature": sig, "shown": {"n": 24, "phrases": share, "bullets": 0.0,
                                                         "median_words": 40}}
        rep["pref"]["from_edits"] = 8
        return rep
    active = with_style(report(acc=0.5, sim=0.2), 0.0)
    ok, reasons = E.gate(with_style(report(acc=0.9, sim=0.2), 0.8), active)
    assert ok and any(r.startswith("follows what the users' edits changed: 8 held-out edits add \"hope this helps")
                      and "80% of the answers vs active 0%" in r for r in reasons), reasons
    ok, reasons = E.gate(with_style(report(acc=0.9, sim=0.2), 0.1), active)  # DPO: likelihoods only
    assert not ok and reasons[-1].startswith("writes no closer to the users' edits")
    assert "do not follow what the edits changed (8 held-out edits add" in reasons[-1]


def test_held_out_pairs_from_edits_are_counted(tmp_path):
    turn = [{"role": "user", "content": "Hi"}]
    rows = [{"prompt": turn, "chosen": [{"role": "assistant", "content": "A"}],
             "rejected": [{"role": "assistant", "content": "B"}], "source": source}
            for source in (["edit:4"], ["choice:7", "rating:2"], ["rating:9"])]
    (tmp_path / "dpo_eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data = E.load_eval_data(tmp_path, E.EvalConfig())
    assert len(data["pref"]) == 3 and data["pref_edits"] == 1


def test_gate_needs_held_out_data_and_judges_relative_to_the_active():
    empty = {"pref": {"n": 0, "accuracy": None}, "similarity": {"n": 0, "rouge_l": None}, "general": {"n": 0}}
    ok, reasons = E.gate(empty, empty)
    assert not ok and "no held-out" in reasons[-1]
    # a base that already answers empty on general prompts is not a regression of the candidate
    assert E.gate(report(acc=0.9, nonempty=0.0, degenerate=6), report(nonempty=0.0, degenerate=6))[0]
    assert E.gate(report(acc=0.6), report(acc=0.5), margin=0.2)[0] is False


# ---------------------------------------------------------------------------------------------- real models
@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer):
    """On a tiny random Llama: a DPO adapter on good pairs (chosen = the polite "Yes, gladly" answers) and one on
    the same pairs swapped; held-out pairs and prompts from other seeds."""
    root = tmp_path_factory.mktemp("gate")
    base = save_tiny_base(root / "base", tokenizer)
    settings = tiny_settings(root / "d", base)
    recipe = T.recipe_for("dpo", steps=8, batch_size=4, max_length=128, lr=5e-3, epochs=10)
    out = {}
    for name, swap in (("good", False), ("swapped", True)):
        data = write_data(root / name, dpo=dpo_rows(16, seed=1, swap=swap))
        T.train("dpo", data, root / f"{name}-adapter", settings, recipe)
        out[name] = root / f"{name}-adapter"
    held = write_data(root / "held", dpo_eval=dpo_rows(12, seed=2), sft_eval=sft_rows(2, seed=3))
    return settings, out, held


@pytest.fixture(scope="module")
def evaluated(trained):
    """The good adapter promoted in a registry, and one evaluation, in a child process as the scheduler runs it, of
    it (from its registry folder), the swapped one and the base: both tests below read these reports."""
    settings, adapters, held = trained
    reg = Registry(settings)
    good = reg.promote(reg.register(adapters["good"], {"method": "dpo"}))
    reports = E.run_evaluation(settings, held, {"good": reg.get(good)["folder"], "swapped": str(adapters["swapped"]),
                                                "base": None}, held / "eval.json", E.EvalConfig(max_new_tokens=4),
                               timeout=600)
    return reg, good, reports


@pytest.mark.slow
def test_evaluation_ranks_the_good_adapter_above_base_and_the_swapped_one_below(trained, evaluated):
    _, _, reports = evaluated
    assert reports["base"]["pref"]["accuracy"] == 0.5 and reports["base"]["general"]["ppl_ratio"] == 1.0
    assert reports["good"]["pref"]["n"] == 12
    assert reports["good"]["pref"]["accuracy"] >= 0.9 and reports["good"]["pref"]["margin_mean"] > 0
    assert reports["swapped"]["pref"]["accuracy"] <= 0.1 and reports["swapped"]["pref"]["margin_mean"] < 0
    assert reports["good"]["similarity"]["n"] == 2 and len(reports["good"]["samples"]) >= 2
    assert reports["good"]["general"]["n"] == len(E.GENERAL)
    # its answers were decoded as the app serves them (the settings' n-gram ban), the base's too
    assert {r["decoding"]["no_repeat_ngram_size"] for r in reports.values()} == {trained[0].no_repeat_ngram_size}
    # the held-out pairs' own relevance (preferred and replaced answers), the same in every report
    pairs = {(r["answers"]["preferred_relevance"], r["answers"]["replaced_relevance"]) for r in reports.values()}
    assert len(pairs) == 1 and all(-1 <= x <= 1 for x in pairs.pop())


@pytest.mark.slow
def test_gate_refuses_the_swapped_candidate_and_the_active_one_stays(trained, evaluated):
    _, adapters, _ = trained
    reg, good, all_reports = evaluated
    reports = {"candidate": all_reports["swapped"], "active": all_reports["good"]}
    promote, reasons = E.gate(reports["candidate"], reports["active"], margin=0.05)
    bad = reg.register(adapters["swapped"], {"method": "dpo", "eval": reports, "gate": {"promote": promote,
                                                                                         "reasons": reasons}})
    if promote:
        reg.promote(bad)
    else:
        reg.update_meta(bad, state="retired")
    assert not promote and any("preference accuracy" in r and "worse" in r for r in reasons)
    assert reg.active() == good and reg.get(good)["state"] == "active" and reg.get(bad)["state"] == "retired"
    assert reg.get(bad)["gate"]["promote"] is False
