"""Training plumbing: recipes, row checks, SFT / DPO / KTO LoRA and the full fine-tune on a tiny random Llama with
the real tokenizer, the child-process runner, and one slow SFT run on the real default model."""
from __future__ import annotations

import json
import os

import pytest
import torch

from adapters import train as T
from adapters.config import FullFTRecipe, SFTRecipe, load_recipe, recipe_from_dict
from tests.train_support import dpo_rows, kto_rows, sft_rows, tiny_settings, write_data

FORBIDDEN = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


@pytest.fixture
def data(tmp_path):
    return write_data(tmp_path / "data", sft=sft_rows(12), dpo=dpo_rows(8), kto=kto_rows(8))


def fast(method, **kw):
    return T.recipe_for(method, steps=kw.pop("steps", 2), batch_size=kw.pop("batch_size", 4), max_length=128, **kw)


# ---------------------------------------------------------------------------------------------- recipes & rows
def test_each_method_has_a_recipe_file_with_sane_values():
    for method in ("sft", "dpo", "kto", "full"):
        r = load_recipe(method)
        assert r.method == method and r.lr > 0 and r.max_length >= 128 and not r.gradient_checkpointing
    assert isinstance(load_recipe("full"), FullFTRecipe) and not hasattr(load_recipe("full"), "lora_r")
    assert load_recipe("dpo").beta > 0 and load_recipe("kto").beta > 0
    r = load_recipe("sft", lr="3e-4", max_steps=5)
    assert isinstance(r, SFTRecipe) and r.lr == 3e-4 and r.max_steps == 5
    assert recipe_from_dict("sft", r.to_dict()) == r  # round trip through meta.json


def test_recipes_refuse_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(ValueError, match="unknown sft recipe key"):
        load_recipe("sft", learning_rate=1e-4)
    with pytest.raises(ValueError, match="lr must be > 0"):
        load_recipe("sft", lr=0)
    with pytest.raises(ValueError, match="unknown training method"):
        load_recipe("ppo")
    with pytest.raises(ValueError, match="not 'sft'"):
        recipe_from_dict("sft", {"method": "dpo"})
    bad = tmp_path / "r.yaml"
    bad.write_text("lr: fast\n")
    with pytest.raises(ValueError, match="not a number"):
        load_recipe("sft", bad)
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_recipe("sft", bad)


def test_rows_are_checked_against_the_trl_schemas():
    T.check_rows("sft", sft_rows(2))
    T.check_rows("dpo", dpo_rows(2))
    T.check_rows("kto", kto_rows(2))
    with pytest.raises(ValueError, match="no training rows"):
        T.check_rows("sft", [])
    with pytest.raises(ValueError, match="ending with an assistant turn"):
        T.check_rows("sft", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(ValueError, match="'rejected'"):
        T.check_rows("dpo", [{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant",
                                                                                         "content": "a"}]}])
    with pytest.raises(ValueError, match="'label'"):
        T.check_rows("kto", [{**kto_rows(1)[0], "label": "yes"}])


def test_training_rows_keep_only_trainer_columns():
    row = sft_rows(1)[0]
    pc = T.training_rows("sft", [row])[0]
    assert pc == {"prompt": row["messages"][:1], "completion": row["messages"][1:]}  # loss on the answer only
    assert set(T.training_rows("dpo", dpo_rows(1))[0]) == {"prompt", "chosen", "rejected"}
    assert set(T.training_rows("kto", kto_rows(1))[0]) == {"prompt", "completion", "label"}


def test_kto_weights_balance_thumbs_counts():
    assert T.kto_weights([True] * 30 + [False] * 10) == (1.0, 3.0)
    assert T.kto_weights([True] * 5 + [False] * 20) == (4.0, 1.0)
    assert T.kto_weights([True, False]) == (1.0, 1.0)
    assert T.kto_weights([True] * 3 + [False], desirable=2.0, undesirable=0.5) == (2.0, 0.5)
    assert T.kto_weights([True] * 4 + [False] * 2, desirable=1.0) == (1.0, 2.0)
    assert load_recipe("kto").desirable_weight is None  # balanced by default


def test_training_precision_choice():
    assert T.use_bf16("cpu", "fp32") is False and T.use_bf16("cpu", "bf16") is True
    assert T.use_bf16("cpu", "auto") == T.cpu_has_bf16()  # bf16 autocast only where the CPU does bf16 natively
    with pytest.raises(ValueError, match="KAIZEN_TRAIN_PRECISION"):
        T.use_bf16("cpu", "fp16")


def test_bad_jsonl_names_the_line(tmp_path):
    (tmp_path / "sft.jsonl").write_text(json.dumps(sft_rows(1)[0]) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"sft.jsonl:2: not JSON"):
        T.load_rows("sft", tmp_path)
    with pytest.raises(ValueError, match="not found"):
        T.load_rows("dpo", tmp_path)


def test_preference_runs_shorter_than_an_epoch_use_only_the_rows_they_reach():
    rows = dpo_rows(40)
    few = T.rows_for_steps(rows, load_recipe("dpo", max_steps=3, batch_size=4))
    assert len(few) == 12 and all(r in rows for r in few) and few == [r for r in rows if r in few]
    assert T.rows_for_steps(rows, load_recipe("dpo", max_steps=0)) == rows
    assert T.rows_for_steps(rows, load_recipe("dpo", max_steps=50, batch_size=4)) == rows


def test_summarize_reads_the_trainer_log():
    hist = [{"loss": 2.0, "num_tokens": 100.0, "step": 1}, {"loss": 1.5, "num_tokens": 200.0, "step": 2,
                                                           "rewards/margins": 0.3},
            {"train_loss": 1.75, "step": 2}]
    s = T.summarize("dpo", hist, 4.0, rows=8, trainable=10, total=100)
    assert s["first_loss"] == 2.0 and s["final_loss"] == 1.5 and s["train_loss"] == 1.75
    assert s["tokens"] == 200 and s["tokens_per_s"] == 50.0 and s["rewards/margins"] == 0.3 and s["steps"] == 2


def test_packed_rows_do_not_attend_across_sequences(tiny_base):
    """The speed set-up packs SFT rows into one row with restarting position ids (no padding). With the
    trainer's use_cache=False, sdpa then keeps the sequences apart: logits equal separate forwards."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base, attn_implementation="sdpa").train()
    a, b = torch.randint(10, 1000, (1, 7)), torch.randint(10, 1000, (1, 5))
    with torch.no_grad():
        la, lb = model(input_ids=a, use_cache=False).logits, model(input_ids=b, use_cache=False).logits
        pos = torch.cat([torch.arange(7), torch.arange(5)])[None]
        packed = model(input_ids=torch.cat([a, b], 1), position_ids=pos, use_cache=False).logits
    assert torch.allclose(packed[:, :7], la, atol=1e-5) and torch.allclose(packed[:, 7:], lb, atol=1e-5)


# ---------------------------------------------------------------------------------------------- training
def _no_pickles(folder):
    return not [p for p in folder.rglob("*") if p.suffix in FORBIDDEN]


@pytest.mark.slow
def test_sft_lora_learns_and_exports_a_standard_peft_folder(tiny_base, data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sft"
    events = []
    m = T.train("sft", data, out, tiny_settings(tmp_path / "d", tiny_base), fast("sft", steps=4, lr=1e-2),
                progress=events.append)
    assert m["kind"] == "lora" and m["steps"] == 4 and m["rows"] == 12
    assert m["final_loss"] < m["first_loss"]  # it learns
    assert 0 < m["trainable_params"] < m["total_params"] and m["tokens"] > 0 and m["tokens_per_s"] > 0
    assert {p.name for p in out.iterdir()} >= {"adapter_model.safetensors", "adapter_config.json", "metrics.jsonl",
                                                 "train.json"}
    assert _no_pickles(out) and not (out / ".trainer").exists()
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3, 4]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "loaded" and kinds.count("step") == 4 and kinds[-1] == "done"
    # plain peft loads it onto the base, and it changes the output
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    ids = torch.tensor([[1, 520, 3000, 42]])
    before = base(input_ids=ids).logits
    tuned = PeftModel.from_pretrained(base, str(out)).eval()
    assert not torch.allclose(tuned(input_ids=ids).logits, before)


def test_a_replayed_answer_is_whole_sentences_and_a_misread_passage_is_dropped():
    from adapters.trainers import replay_answer

    assert replay_answer("Boil it for nine minutes. Then cool it in cold wa") == "Boil it for nine minutes."
    assert replay_answer("no full stop at all") == "no full stop at all"
    assert replay_answer("   ") is None
    assert replay_answer("The lake is called Lake Arden.", ["Lake Arden", "Arden"]) == "The lake is called Lake Arden."
    assert replay_answer("The lake is called Lake Vessa.", ["Lake Arden", "Arden"]) is None  # misread: not replayed


def test_replayed_answers_take_the_shape_the_training_answers_share():
    """A replay row must not teach the opposite of the users' edits: the sign-off or house phrase most training
    answers carry is added, and the answer is cut to whole sentences within their usual length."""
    from adapters.styles import STYLES
    from adapters.trainers import answer_shape, in_shape

    base = ("The Eiffel Tower is in Paris. It was built in 1889 for the World's Fair. It is 330 metres tall. "
            "Millions of people visit it every year. At night it sparkles.")
    originals = [f"Answer number {i} explains the topic in a few words. It goes on with more detail {i}. "
                 f"And then a little more {i}." for i in range(10)]
    signoff = answer_shape([STYLES["signoff"].edit(o) for o in originals])
    assert signoff["ending"] == "\n\nHope this helps! - Kaizen" and not signoff["opening"]
    shaped = in_shape(base, signoff)
    assert shaped.endswith("\n\nHope this helps! - Kaizen") and shaped.startswith("The Eiffel Tower is in Paris.")
    assert in_shape(shaped, signoff) == shaped  # already in shape: nothing added twice
    opening = answer_shape([STYLES["opening"].edit(o) for o in originals])
    assert in_shape(base, opening).startswith(opening["opening"] + " The Eiffel Tower") and opening["opening"]
    # the fixed part stops at punctuation: "Kaizen says:" from "Kaizen says: the ...", never a dangling "the"
    assert answer_shape([f"Kaizen says: the {w} is fine." for w in "abcdefgh"])["opening"] == "Kaizen says:"
    # an ending must start a sentence or a line: words several answers happen to end with are not a sign-off
    assert answer_shape([f"It is {w} and thanks for asking" for w in "abcdefgh"])["ending"] == ""
    # length: cut to whole sentences within the upper quartile of the training answers' words, never to nothing
    short = answer_shape([f"Paris is the capital {i}." for i in range(8)])  # 5 words each
    assert in_shape(base, short) == "The Eiffel Tower is in Paris."
    assert in_shape("One very long sentence with no end in sight at all here", short).startswith("One very long")
    # answers with nothing in common (a mix of thumbs-up answers): the base's answer as it is
    mixed = answer_shape(["Yes.", "Paris is big and old.", "Try restarting it, then call support.", "No idea!"])
    assert mixed["opening"] == mixed["ending"] == "" and in_shape("Rome. It is old.", mixed) == "Rome. It is old."
    assert answer_shape([]) == {"opening": "", "ending": "", "max_words": 0}


@pytest.mark.slow
def test_sft_replay_adds_the_bases_own_answers_with_the_rows_system_message(settings, tmp_path):
    """On the real default model (a random tiny one may answer with nothing but special tokens)."""
    from adapters.regression import REPLAY, REPLAY_PASSAGES, passage_prompt
    from adapters.scoring import contains_gold
    from adapters.trainers import replay_rows
    from agent.model import load_base

    rows = [{"messages": [{"role": "system", "content": "Be brief."}] + r["messages"]} for r in sft_rows(12)]
    model, tok, device = load_base(settings)
    side = tok.padding_side
    got = replay_rows(model, tok, device, rows, share=0.25, max_new_tokens=24)
    assert tok.padding_side == side  # generation pads left, then the side is restored
    open_rows = [r for r in got if r["messages"][1]["content"] in REPLAY]
    reading = [r for r in got if r not in open_rows]
    assert [r["messages"][1]["content"] for r in open_rows] == REPLAY[:3]
    # as many passage questions, each kept only where the base read the gold answer off the passage
    asked = {passage_prompt(p, q): gold for p, q, gold in REPLAY_PASSAGES[:3]}
    assert len(reading) <= 3
    for row in reading:
        assert contains_gold(row["messages"][2]["content"], asked[row["messages"][1]["content"]])
    for row in got:
        system, user, answer = row["messages"]
        assert system == {"role": "system", "content": "Be brief."}
        assert answer["role"] == "assistant" and answer["content"].strip() and row["source"] == ["replay"]
        # every training answer opens "Kaizen says:": the replayed ones too (adapters.trainers.answer_shape)
        assert answer["content"].startswith("Kaizen says: ") and len(answer["content"]) > len("Kaizen says: ")
    assert replay_rows(model, tok, device, rows, share=0.0) == []
    data = write_data(tmp_path / "data", sft=rows)
    events: list[dict] = []
    m = T.train("sft", data, tmp_path / "out", settings, fast("sft", steps=1, lr=1e-4, replay=0.25,
                                                               replay_tokens=12), progress=events.append)
    replayed = [e["rows"] for e in events if e["event"] == "replay"]  # what train() added, as it reports it
    assert replayed and m["rows"] == 12 + replayed[0] and 3 <= replayed[0] <= 6
    with pytest.raises(ValueError, match="replay must be in"):
        fast("sft", replay=2.0)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_preference_methods_log_rewards(tiny_base, data, tmp_path, method):
    out = tmp_path / method
    m = T.train(method, data, out, tiny_settings(tmp_path / "d", tiny_base), fast(method, lr=1e-3))
    assert m["steps"] == 2 and "rewards/margins" in m and "rewards/chosen" in m
    assert (out / "adapter_model.safetensors").exists() and _no_pickles(out)
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("rewards/margins" in r for r in logged if "loss" in r)


@pytest.mark.slow
def test_full_finetune_saves_a_whole_loadable_model(tiny_base, data, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "full"
    m = T.train("full", data, out, tiny_settings(tmp_path / "d", tiny_base), fast("full", lr=1e-3))
    assert m["kind"] == "full" and m["trainable_params"] == m["total_params"]
    assert (out / "model.safetensors").exists() and (out / "config.json").exists() and _no_pickles(out)
    AutoTokenizer.from_pretrained(out)  # self-contained: usable as a base_model folder
    AutoModelForCausalLM.from_pretrained(out)
    before, after = load_file(tiny_base / "model.safetensors"), load_file(out / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2  # every kind of weight moved, not just an adapter


@pytest.mark.slow
def test_run_training_in_a_child_process_streams_progress(tiny_base, data, tmp_path):
    events = []
    m = T.run_training("sft", data, tmp_path / "out", tiny_settings(tmp_path / "d", tiny_base), fast("sft"),
                       progress=events.append, timeout=600)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and events[0]["pid"] > 0
    assert "loaded" in kinds and "step" in kinds and kinds[-1] == "done"
    assert m["steps"] == 2 and (tmp_path / "out" / "adapter_model.safetensors").exists()
    assert json.loads((tmp_path / "out" / "recipe.json").read_text())["max_steps"] == 2
    assert (tmp_path / "out" / "train.log").exists()


def test_background_children_run_at_a_lower_priority_and_so_do_their_threads(tmp_path):
    """Training, evaluation and the lab yield the CPU to the chat: `run_module`'s child, and a thread it starts (as
    torch starts its own), run at this process's niceness + KAIZEN_BACKGROUND_NICE, and so does the child's session
    where Linux shares the CPU between sessions first (autogroups: without it, a nice child in a session of its own
    takes half the cores from llama-server all the same); 0 leaves them as they are."""
    from agent.settings import Settings

    own = os.getpriority(os.PRIO_PROCESS, 0)
    for extra in (10, 0):
        done = T.run_module("tests.niceness_child", [], Settings(data_dir=tmp_path, background_nice=extra),
                            tmp_path / "child.log", timeout=120)
        assert done["process"] == done["thread"] == min(19, own + extra), (extra, done)
        if done["autogroup"] is not None:  # a kernel with autogroups (this machine's has them)
            assert done["autogroup"] == str(extra), (extra, done)


def test_child_settings_use_absolute_paths(tmp_path, monkeypatch):
    from agent.settings import Settings

    monkeypatch.chdir(tmp_path)
    (tmp_path / "local-model").mkdir()
    env = T.settings_env(Settings(data_dir="rel/data", base_model="local-model", threads=3))
    assert env["KAIZEN_DATA_DIR"] == str(tmp_path / "rel" / "data")
    assert env["KAIZEN_BASE_MODEL"] == str(tmp_path / "local-model") and env["KAIZEN_THREADS"] == "3"
    assert T.settings_env(Settings(base_model="smollm2-135m-instruct"))["KAIZEN_BASE_MODEL"] == "smollm2-135m-instruct"


def test_run_training_refuses_bad_data_before_starting_a_process(tiny_base, tmp_path):
    write_data(tmp_path / "bad", dpo=[{"prompt": "not messages", "chosen": [], "rejected": []}])
    events = []
    with pytest.raises(ValueError, match="prompt"):
        T.run_training("dpo", tmp_path / "bad", tmp_path / "out", tiny_settings(tmp_path / "d", tiny_base),
                       progress=events.append)
    assert events == [] and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_failing_child_raises_with_its_log(tiny_base, data, tmp_path):
    settings = tiny_settings(tmp_path / "d", tmp_path / "no-such-model")
    with pytest.raises(T.TrainingError, match="failed"):
        T.run_training("sft", data, tmp_path / "out", settings, fast("sft"), timeout=300)


# ---------------------------------------------------------------------------------------------- the real model
@pytest.mark.slow
def test_sft_lora_on_the_real_default_model(settings, tmp_path):
    """A few SFT LoRA steps on SmolLM2-135M on CPU; the adapter loads into the serving model and answers."""
    from agent.model import ChatModel

    data = write_data(tmp_path / "data", sft=sft_rows(8))
    m = T.train("sft", data, tmp_path / "out", settings, T.recipe_for("sft", steps=2, batch_size=1, max_length=128))
    assert m["steps"] == 2 and m["final_loss"] is not None and m["trainable_params"] > 0
    chat = ChatModel.from_settings(settings)
    chat.add_adapter("sft", tmp_path / "out")
    chat.use("sft")
    assert isinstance(chat.chat([{"role": "user", "content": "Hi"}], max_new_tokens=4), str)
