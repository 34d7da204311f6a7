"""The llama.cpp engine on the real default model: a real llama-server on loopback, real GGUF LoRAs converted by
llama.cpp's own converter, a real registry. Slow (each test starts a server)."""
from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent import llama_build

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not llama_build.available(), reason="llama.cpp is not built (make install)")]
PARIS = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
ASK = [{"role": "user", "content": "Tell me about the sea."}]


def random_lora(base_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA with random (non-zero) A and B on every linear layer: it changes what the model says, each seed
    differently. Saved as peft saves trained adapters."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.3)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def loras(base_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loras")
    return {name: random_lora(base_model_dir, root / name, seed) for name, seed in (("v0001-a", 1), ("v0002-b", 2))}


@pytest.fixture
def engine(base_model_dir, tmp_path):
    from agent.engine import open_engine
    from agent.settings import Settings

    eng = open_engine(Settings(data_dir=tmp_path / "data", base_model=str(base_model_dir), engine="llamacpp",
                               parallel=4, threads=2))
    yield eng
    eng.close()


def test_the_default_model_streams_paris_in_chunks(engine, base_model_dir):
    assert engine.server.gguf == base_model_dir / "serve.q8_0.gguf"  # re-quantized once, cached beside the copy
    gen = engine.stream(PARIS, max_new_tokens=16)
    pieces = list(gen)
    assert len(pieces) > 1, pieces
    assert "Paris" in gen.text
    assert gen.completion_tokens == len(engine.tok(gen.text, add_special_tokens=False)["input_ids"]) or \
        gen.completion_tokens > 0
    assert not gen.cancelled and gen.first_token_s is not None


@pytest.mark.skipif(not llama_build.has_blas(), reason="llama.cpp is built without OpenBLAS "
                    "(KAIZEN_LLAMA_BLAS=0, or no OpenBLAS to build with)")
def test_a_long_prompt_is_prefilled_through_openblas_with_its_threads_tuned(engine):
    """A build with ggml's BLAS backend: the serving process maps it and OpenBLAS, runs with the thread settings
    that make it pay (llama_build.BLAS_ENV / BLAS_ARGS), and answers a RAG-sized prompt (batches of 32+ tokens go
    through OpenBLAS's sgemm) as the model should."""
    notes = " ".join(f"Note {i}: the meeting moved to room {i % 7}." for i in range(60))
    question = [{"role": "user", "content": f"{notes}\n\nWhat is the capital of France? Answer in one word."}]
    assert engine.count(question) > 600
    gen = engine.stream(question, max_new_tokens=8)
    list(gen)
    assert "Paris" in gen.text, gen.text
    server = engine.server.current
    maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert "libggml-blas.so" in maps and "libopenblas" in maps
    environ = Path(f"/proc/{server.proc.pid}/environ").read_bytes().decode(errors="replace").split("\0")
    assert {f"{k}={v}" for k, v in llama_build.BLAS_ENV.items()} <= set(environ)
    assert server.cmd[server.cmd.index("-ub") + 1] == "1024"


def test_a_long_prompt_is_read_as_transformers_reads_it_at_every_position(base_model_dir, shared_data):
    """The prefill's flash attention, patched (scripts/llama-cpp-flash-attn-prefill.patch: a causal mask's hidden
    tiles are found from its raw bits and skipped, the rest converted with vectors): a real ~950-token article read
    in one 1,024-token micro-batch, as the engine reads a RAG prompt, predicts every next token as the fp32
    reference does. A tile skipped that a position may see, or one kept that it may not, would change the
    predictions from there on."""
    import llama_cpp
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapters.parity import compare, verdict
    from agent.gguf import base_gguf

    dev = json.loads((shared_data / "squad2" / "dev-v2.0.json").read_text(encoding="utf-8"))
    text = "\n\n".join(p["context"] for p in dev["data"][0]["paragraphs"])
    tok = AutoTokenizer.from_pretrained(base_model_dir)
    text = tok.decode(tok(text, add_special_tokens=False)["input_ids"][:900])
    ids = tok.apply_chat_template([{"role": "user", "content": text + "\n\nWhat is this about?"}],
                                  add_generation_prompt=True, return_dict=True)["input_ids"]
    assert 900 < len(ids) < 1024
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        reference = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    del model
    llm = llama_cpp.Llama(str(base_gguf(str(base_model_dir), base_model_dir.parent)), logits_all=True, n_ctx=2048,
                          n_batch=1024, n_ubatch=1024, flash_attn=True, n_threads=2, n_threads_batch=2,
                          verbose=False)
    try:
        llm.eval(ids)
        served = np.array(llm.scores[:len(ids)], dtype=np.float32)
    finally:
        llm.close()
    # The parity check's floors (top-1 >= 90%, mean KL <= 0.05; the Q8_0 copy's own rounding gives 97%, 0.002), over
    # every position and over the last 300, where most tiles are hidden from a position.
    for figures in (compare(reference, served), compare(reference[-300:], served[-300:])):
        ok, reasons = verdict(figures)
        assert ok, (reasons, figures)


def test_the_bundled_q4_1_file_is_served_as_it_is_on_request(base_model_dir, tmp_path):
    from agent.engine import open_engine
    from agent.model import bundled_gguf
    from agent.settings import Settings

    eng = open_engine(Settings(data_dir=tmp_path / "d", base_model=str(base_model_dir), engine="llamacpp",
                               llama_quant="bundled"))
    try:
        assert eng.server.gguf == bundled_gguf()
        assert "Paris" in eng.stream(PARIS, max_new_tokens=16).collect()
    finally:
        eng.close()


def test_stop_cancels_only_its_own_stream(engine):
    stop = threading.Event()
    mine = engine.stream(ASK, max_new_tokens=200, stop=stop)
    other = engine.stream(ASK, max_new_tokens=40)
    with ThreadPoolExecutor(2) as pool:
        fut = pool.submit(other.collect)
        for i, _ in enumerate(mine):
            if i == 3:
                stop.set()
        assert fut.result(120)
    assert mine.cancelled and 0 < mine.completion_tokens < 200  # a stopped answer's tokens are counted too
    assert not other.cancelled and other.completion_tokens > 10


def test_two_adapters_and_the_base_answer_three_concurrent_requests_each_its_own(engine, loras):
    for name, folder in loras.items():
        engine.add_adapter(name, folder)
        assert (folder / "lora.gguf").exists()
    who = [None, "v0001-a", "v0002-b"]
    alone = {w: engine.stream(ASK, max_new_tokens=24, adapter=w).collect() for w in who}
    assert len(set(alone.values())) == 3, alone  # each adapter really changes the answer
    with ThreadPoolExecutor(3) as pool:
        together = dict(zip(who, pool.map(lambda w: engine.stream(ASK, max_new_tokens=24, adapter=w).collect(),
                                          who)))
    # Routed per request: each concurrent answer is its own adapter's, i.e. closer to what that adapter said alone
    # than to what the others said. Not equal to it: llama.cpp's CPU kernels are not batch-invariant (requests
    # prefilled together cross into flash attention's tiled path at 64 tokens, OpenBLAS at 32), so a request's
    # logprobs move by up to ~0.1 nats beside others and a greedy answer may part from its lone run at a near-tie
    # ("teeming with life" / "teeming with wonders" on the AVX-512 build). A misrouted answer is another's.
    for w in who:
        mine = len(os.path.commonprefix([together[w], alone[w]]))
        assert all(mine > len(os.path.commonprefix([together[w], alone[o]])) for o in who if o != w), (w, together,
                                                                                                         alone)
    assert engine.server.current.loras == ("v0001-a", "v0002-b")


def test_a_grounded_answer_may_quote_its_sources_under_the_loop_rule(engine, base_model_dir):
    """DRY, the loop rule the app serves on llama.cpp, looks at the answer only: quoting the reference data is not
    a repeat. (Upstream llama-server feeds the prompt to its samplers: this answer came out "The Zephyre Line
    ferry leaves Gull Island at 9:15.")"""
    from agent.decoding import served_decoding
    from agent.ranking import Hit, format_sources
    from agent.settings import Settings
    from agent.templates import load_templates

    sources = format_sources([Hit("d1", "ferry.txt", 0, 1.0, "The Zephyr Line ferry leaves Port Amberly at 07:45 every "
                                  "weekday and reaches Gull Island at 09:10.\nTickets cost 14 euros; bicycles "
                                  "travel free.", shared=True)])
    messages = load_templates()["grounded"].render("When does the Zephyr Line ferry leave Port Amberly?", [],
                                                   sources=sources)
    dry = served_decoding(Settings(base_model=str(base_model_dir), engine="llamacpp"), temperature=0.0)
    assert dry.loop_rule == "dry" and dry.dry() is not None
    gen = engine.stream(messages, max_new_tokens=48, decoding=dry, adapter=None)
    list(gen)
    assert "07:45" in gen.text and "Zephyr Line" in gen.text, gen.text


def test_a_newcomer_starts_in_the_kept_slot_while_the_shared_one_is_busy(base_model_dir, tmp_path):
    """One shared slot (KAIZEN_PARALLEL=1) and the one kept for fresh users: while a heavy user's long answer holds
    the shared slot, their second answer waits for it, and a newcomer's answer starts at once, decoded by
    llama-server beside the long one (its `-np` counts the kept slot)."""
    import time

    from agent.chat import Answerer
    from agent.settings import Settings

    answerer = Answerer.from_settings(Settings(data_dir=tmp_path / "data", base_model=str(base_model_dir),
                                               engine="llamacpp", parallel=1, threads=2), with_retrieval=False)
    events: dict[str, float] = {}

    def run(name, user, question, tokens, started=None):
        reply = answerer.answer([], question, rag="off", owner=user, max_new_tokens=tokens)
        for _ in reply.generation:
            events.setdefault(f"{name} first", time.perf_counter())
            if started is not None:
                started.set()
        events[f"{name} end"] = time.perf_counter()

    try:
        assert answerer.gate.capacity == 2 and answerer.model.server.reserve == 1
        long_started = threading.Event()
        threads = [threading.Thread(target=run, args=("long", "heavy", "Write a long story about the sea.", 200,
                                                      long_started))]
        threads[0].start()
        assert long_started.wait(60)
        threads.append(threading.Thread(target=run, args=("again", "heavy", "And one about a ship.", 8)))
        threads[-1].start()
        time.sleep(0.3)
        threads.append(threading.Thread(target=run, args=("new", "newcomer", "What is the capital of France?", 8)))
        threads[-1].start()
        for t in threads:
            t.join(120)
        assert events["new first"] < events["long end"], events  # started beside the long answer
        assert events["again first"] > events["long end"], events  # heavy's second answer waited for its slot
    finally:
        answerer.model.close()


def test_a_new_adapter_restarts_the_server_without_losing_the_answer_in_flight(engine, loras):
    first = engine.stream(ASK, max_new_tokens=60)
    it = iter(first)
    next(it)  # the answer is streaming from the first server
    engine.add_adapter("v0001-a", loras["v0001-a"])
    second = engine.stream(PARIS, max_new_tokens=8, adapter="v0001-a").collect()  # starts the new server
    rest = "".join(it)
    assert engine.server.restarts == 1 and second
    assert first.completion_tokens > 1 and not first.cancelled and rest


def test_registry_converts_at_registration_and_refuses_a_corrupt_gguf_while_serving(settings, loras, tmp_path):
    import dataclasses

    from adapters.registry import Registry, RegistryError, attach
    from agent.engine import open_engine

    s = dataclasses.replace(settings, engine="llamacpp")
    reg = Registry(s)
    version = reg.register(loras["v0001-a"], {"method": "sft"})
    meta = reg.get(version)
    gguf = Path(meta["folder"]) / "lora.gguf"
    assert meta["gguf"]["file"] == "lora.gguf" and len(meta["gguf"]["sha256"]) == 64 and gguf.exists()
    reg.promote(version)
    engine = open_engine(s)
    try:
        attach(reg, engine, version)
        engine.use(version)
        before = engine.stream(PARIS, max_new_tokens=8).collect()
        engine.remove_adapter(version)
        gguf.write_bytes(gguf.read_bytes()[:-100] + b"\0" * 100)  # corrupted on disk
        with pytest.raises(RegistryError, match="sha256"):
            attach(reg, engine, version)
        assert version not in engine.adapters
        assert engine.stream(PARIS, max_new_tokens=8, adapter=None).collect()  # still serving
        gguf.unlink()  # a missing file is rebuilt
        attach(reg, engine, version)
        assert gguf.exists() and engine.stream(PARIS, max_new_tokens=8, adapter=version).collect() == before
        assert json.loads((Path(meta["folder"]) / "meta.json").read_text())["gguf"]["sha256"]
    finally:
        engine.close()


def test_registry_refuses_an_adapter_llama_cpp_cannot_serve(settings, loras, tmp_path):
    import dataclasses
    import shutil

    from adapters.registry import Registry, RegistryError

    dora = tmp_path / "dora"
    shutil.copytree(loras["v0002-b"], dora)
    cfg = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(RegistryError, match="DoRA"):
        Registry(dataclasses.replace(settings, engine="llamacpp")).register(dora, {"method": "sft"})


def test_the_openai_backend_against_a_real_llama_server_selects_adapters_by_name(base_model_dir, loras, tmp_path):
    from agent.lora_gguf import ensure_lora_gguf
    from agent.engine import open_engine
    from agent.llama_server import LlamaServer
    from agent.model import bundled_gguf
    from agent.settings import Settings

    for folder in loras.values():
        ensure_lora_gguf(folder, base_model_dir)
    server = LlamaServer(bundled_gguf(), parallel=2, threads=2)
    proc = server.ensure({n: f / "lora.gguf" for n, f in loras.items()})  # "a llama-server you run yourself"
    try:
        pid = proc.proc.pid  # in the app's session, so the app's lowered background threads yield to it
        assert os.getsid(pid) == os.getsid(0) and os.getpgid(pid) == pid, "llama-server must stay in the app's session"
        base = dict(data_dir=tmp_path / "d", base_model=str(base_model_dir), engine="openai", engine_url=proc.url)
        llama = open_engine(Settings(**base, engine_dialect="llama"))
        for name, folder in loras.items():
            llama.add_adapter(name, folder)  # found by name among the server's --lora files
        answers = {w: llama.stream(ASK, max_new_tokens=16, adapter=w).collect() for w in (None, *loras)}
        assert len(set(answers.values())) == 3, answers
        with pytest.raises(RuntimeError, match="does not load adapter"):
            llama.add_adapter("v0009-missing", tmp_path)
        plain = open_engine(Settings(**base))  # the OpenAI dialect: /v1/completions, the base by name
        gen = plain.stream(PARIS, max_new_tokens=8)
        assert "Paris" in gen.collect() and gen.completion_tokens > 0
        assert answers[None].startswith(plain.stream(ASK, max_new_tokens=16).collect()[:10])
    finally:
        server.close()


def test_parity_check_passes_the_converted_lora_and_catches_a_wrong_one(base_model_dir, loras):
    from adapters import parity
    from agent.lora_gguf import ensure_lora_gguf
    from agent.model import bundled_gguf

    a, b = (ensure_lora_gguf(loras[n], base_model_dir) for n in ("v0001-a", "v0002-b"))
    same = parity.measure(base_model_dir, loras["v0001-a"], bundled_gguf(), a, n_prompts=3, new_tokens=16)
    ok, reasons = parity.verdict(same)
    assert ok, (same, reasons)
    assert same["top1"] >= 0.9 and same["kl"] < 0.05 and same["positions"] >= 30
    wrong = parity.measure(base_model_dir, loras["v0001-a"], bundled_gguf(), b, n_prompts=3, new_tokens=16)
    ok, reasons = parity.verdict(wrong)
    assert not ok and "parity" in reasons[0], wrong  # another adapter's GGUF does not pass for this one


def test_a_promotion_measures_parity_in_a_child_that_cannot_take_the_app_down(base_model_dir, loras, tmp_path):
    """`measure_apart` (what a promotion runs): the same figures from a child process at the background priority;
    a torn GGUF LoRA (llama.cpp loads it, then dies with SIGSEGV at the first token) kills the child, not this
    process: an error in words, with the child's log."""
    from adapters import parity
    from adapters.train import TrainingError
    from agent.lora_gguf import ensure_lora_gguf
    from agent.model import bundled_gguf
    from agent.settings import Settings

    settings = Settings(data_dir=tmp_path, base_model=str(base_model_dir))
    a = ensure_lora_gguf(loras["v0001-a"], base_model_dir)
    figures = parity.measure_apart(settings, base_model_dir, loras["v0001-a"], bundled_gguf(), a, tmp_path / "p.log")
    assert parity.verdict(figures)[0] and figures["positions"] >= 60, figures
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(a.read_bytes()[: 4096])  # a torn copy: the header, no tensors
    with pytest.raises(TrainingError, match="adapters.parity failed"):
        parity.measure_apart(settings, base_model_dir, loras["v0001-a"], bundled_gguf(), broken, tmp_path / "b.log")
    assert (tmp_path / "b.log").read_text()  # the child's own words are kept


def test_a_killed_app_leaves_no_llama_server_behind(tmp_path):
    """The app is killed with SIGKILL, its llama-server started from a thread that blocks SIGTERM (as server
    threads may): the server must not inherit the blocked signal, and it dies with the app."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    code = (
        "import signal, threading, time\n"
        "from agent.llama_server import LlamaServer\n"
        "from agent.model import bundled_gguf\n"
        "box = {}\n"
        "def start():\n"
        "    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])\n"
        "    box['s'] = LlamaServer(bundled_gguf(), parallel=1, threads=1)\n"
        "    box['p'] = box['s'].ensure({})\n"
        "t = threading.Thread(target=start); t.start(); t.join()\n"
        "print(box['p'].proc.pid, flush=True)\n"
        "time.sleep(120)\n")
    app = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    pid = int(app.stdout.readline())
    blocked = int(next(line.split()[1] for line in open(f"/proc/{pid}/status") if line.startswith("SigBlk")), 16)
    assert not blocked & (1 << (signal.SIGTERM - 1)), "llama-server inherited a blocked SIGTERM"
    app.kill()
    app.wait(10)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
            state = open(f"/proc/{pid}/status").read().split("State:")[1].split()[0]
            if state == "Z":
                break
        except (ProcessLookupError, FileNotFoundError):
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
        raise AssertionError("llama-server outlived the app")


def test_the_gate_decodes_as_llama_server_does(base_model_dir, tmp_path):
    """The gate reads answers as llama.cpp serves them: with the settings' llama.cpp engine, the evaluation's
    batched transformers answers apply DRY over the answer, as the patched llama-server does (it has no n-gram ban).
    An F16 server (little rounding beside fp32) gives the same greedy text for nearly every open prompt; the
    transformers engine's n-gram ban, read in its place, gives fewer (measured: 7 of 8 vs 5 of 8)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapters import evaluate as E
    from adapters.regression import OPEN
    from agent.engine import open_engine
    from agent.decoding import served_decoding
    from agent.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", base_model=str(base_model_dir), engine="llamacpp",
                        llama_quant="f16", parallel=1, threads=2)
    prompts = [[{"role": "user", "content": q}] for q in OPEN[:8]]
    dry = served_decoding(settings, temperature=0.0)
    assert dry.loop_rule == "dry"
    engine = open_engine(settings)
    try:
        served = []
        for p in prompts:
            gen = engine.stream(p, max_new_tokens=96, decoding=dry, adapter=None)
            list(gen)
            served.append(gen.text.strip())
    finally:
        engine.close()
    tok = AutoTokenizer.from_pretrained(base_model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32).eval()
    mirrored = E.generate(model, tok, prompts, "cpu", 96, decoding=dry)
    banned = E.generate(model, tok, prompts, "cpu", 96, decoding=served_decoding(settings, rule="ban",
                                                                                   temperature=0.0))
    same = sum(a == b for a, b in zip(mirrored, served))
    same_ban = sum(a == b for a, b in zip(banned, served))
    assert same >= 6 and same > same_ban, (same, same_ban, served, mirrored)
