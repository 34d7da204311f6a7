"""Measurements of the techniques lab: answers and their timings, log-probability preference scores, peak memory,
size on disk, parameter counts. Each function measures one thing on real parts (a ChatModel, an Answerer)."""
from __future__ import annotations

import contextlib
import ctypes
import gc
import statistics
import threading
import time
from pathlib import Path

import torch

from lab.tasks import LabTask, score_answer

SAMPLES_KEPT = 5  # answers kept per technique in the report


# ---------------------------------------------------------------------------------------------- memory, disk, params
def _trim() -> None:
    """Give freed memory back to the OS, so the next RSS baseline is honest (glibc keeps freed pages otherwise)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak extra memory while the block runs, in MB: the resident set size of this process plus its children (a
    training child process included), sampled every 100 ms (a light sampler: generation threads need the GIL), above its value at the start (freed memory is returned
    to the OS first). On CUDA: the larger of `torch.cuda.max_memory_allocated` above the start and the device's
    used memory above the start (which sees a training child's allocations too)."""

    def __init__(self, device: str = "cpu", interval: float = 0.1, children: bool = True):
        self.device, self.interval, self.children = device, interval, children
        self.peak_mb = 0.0
        self.peak_rss_mb = 0.0

    def _rss(self) -> int:
        import psutil

        proc = psutil.Process()
        total = proc.memory_info().rss
        for child in proc.children(recursive=True) if self.children else ():
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total

    def _device_used(self) -> int:
        free, total = torch.cuda.mem_get_info()
        return total - free

    def _watch(self):
        while not self._stop.wait(self.interval):
            self._max = max(self._max, self._rss())
            if self.device == "cuda":
                self._dev_max = max(self._dev_max, self._device_used())

    def __enter__(self):
        _trim()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._cuda_start = torch.cuda.memory_allocated()
            self._dev_start = self._dev_max = self._device_used()
        self._start = self._max = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="lab-memory")
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._max = max(self._max, self._rss())
        self.peak_rss_mb = self._max / 2**20
        if self.device == "cuda":
            own = torch.cuda.max_memory_allocated() - self._cuda_start
            self.peak_mb = max(own, self._dev_max - self._dev_start) / 2**20
        else:
            self.peak_mb = (self._max - self._start) / 2**20
        return False


def pin_weights(model) -> None:
    """Copy CPU weights that are file-backed (safetensors are memory-mapped) into ordinary memory. Under memory
    pressure the kernel drops clean mapped pages and every forward pass then re-reads them: generation slowed from
    ~17 to ~2 tokens/s here, and only for whichever technique happened to run at such a moment. Ties are kept
    (a shared Parameter is copied once)."""
    import torch

    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.device.type == "cpu":
                t.data = t.data.clone()


def disk_mb(path: str | Path | None) -> float:
    """Size on disk of a file or folder (all files below it), in MB."""
    if not path or not Path(path).exists():
        return 0.0
    p = Path(path)
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 2**20


def model_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def safetensors_params(folder: str | Path) -> dict[str, int]:
    """name -> element count of every tensor in the folder's *.safetensors files (read from headers only)."""
    from safetensors import safe_open

    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                shape = st.get_slice(name).get_shape()
                n = 1
                for d in shape:
                    n *= int(d)
                out[name] = n
    return out


def changed_tensors(model_a, model_b) -> tuple[int, int]:
    """(changed, total) parameter tensors between two models of the same architecture: proof that a full
    fine-tune touched every weight."""
    a = dict(model_a.named_parameters())
    changed = total = 0
    for name, p in model_b.named_parameters():
        if name not in a:
            continue
        total += 1
        changed += int(not torch.equal(a[name].detach().cpu(), p.detach().cpu()))
    return changed, total


# ---------------------------------------------------------------------------------------------- generation
def summarize_generations(gens: list) -> dict:
    """ttft_ms (median), tokens_per_s (decode speed: tokens after the first over the time after the first),
    prompt_tokens and completion_tokens (means)."""
    gens = [g for g in gens if g.first_token_s is not None]
    if not gens:
        return {"ttft_ms": None, "tokens_per_s": None, "prompt_tokens": None, "completion_tokens": None}
    decode_s = sum(max(g.seconds - g.first_token_s, 0.0) for g in gens)
    decode_tokens = sum(max(g.completion_tokens - 1, 0) for g in gens)
    return {"ttft_ms": 1000 * statistics.median(g.first_token_s for g in gens),
            "tokens_per_s": decode_tokens / decode_s if decode_s > 0 else None,
            "prompt_tokens": statistics.mean(g.prompt_tokens for g in gens),
            "completion_tokens": statistics.mean(g.completion_tokens for g in gens)}


def history_and_question(item: dict) -> tuple[list[dict], str]:
    """A generate item asks `question`; a preference item's prompt is history + the last user turn."""
    if "prompt" not in item:
        return [], item["question"]
    prompt = item["prompt"]
    last = max(i for i, m in enumerate(prompt) if m["role"] == "user")
    return prompt[:last], prompt[last]["content"]


def answer_items(answerer, task: LabTask, items: list[dict], *, template: str, rag: str, adapter: str | None,
                 score: bool, doc_names: dict | None = None, progress=None) -> dict:
    """Answer each item (greedy) and measure: per-item scores (when `score`), timings, prompt tokens, sources."""
    gens, scores, samples, used, hits, errors = [], [], [], 0, [], []
    for n, item in enumerate(items):
        history, question = history_and_question(item)
        try:
            reply = answerer.answer(history, question, template=template, rag=rag, adapter=adapter,
                                    max_new_tokens=task.max_new_tokens)
            text = reply.generation.collect()
        except ValueError as e:  # e.g. a prompt longer than the model's window: counted, not fatal
            errors.append(f"{item.get('id')}: {e}")
            continue
        gens.append(reply.generation)
        used += bool(reply.sources)
        s = score_answer(task, item, text) if score else {}
        scores.append(s)
        if doc_names is not None and item.get("doc"):
            hits.append(float(any(src["file"] == doc_names[item["doc"]] for src in reply.sources)))
        if len(samples) < SAMPLES_KEPT:
            samples.append({"id": item.get("id"), "question": question, "answer": text, "scores": s,
                            "sources": reply.sources, "template": reply.template})
        if progress:
            progress((n + 1) / len(items), f"answered {n + 1}/{len(items)}")
    out = summarize_generations(gens)
    if score:
        keys = task.metrics
        out["metrics"] = {k: (statistics.mean(s[k] for s in scores) if scores else 0.0) for k in keys}
        out["metrics"].update({k: statistics.mean(s[k] for s in scores)
                               for k in (scores[0] if scores else {}) if k not in keys})
    out.update(sources_used=used, samples=samples, item_errors=errors, answered=len(gens))
    if hits:
        out["retrieval_hit"] = statistics.mean(hits)
    return out


# ---------------------------------------------------------------------------------------------- preference scores
@contextlib.contextmanager
def routed(chat_model, adapter: str | None):
    """Hold the model's lock and route forward passes to `adapter` (None: the bare base)."""
    with chat_model.lock, torch.inference_mode():
        if not chat_model.adapters:
            yield chat_model.model
        elif adapter is None:
            with chat_model.model.disable_adapter():
                yield chat_model.model
        else:
            chat_model.model.set_adapter(adapter)
            yield chat_model.model


PREF_MAX_LENGTH = 1536  # tokens of prompt + answer when scoring (RAG prompts are long; the window is 2048)
PREF_COMPLETION_TOKENS = 192  # answers are scored on their first tokens: the same cut for every technique
PREF_BATCH = 2


def cut_answer(tok, messages: list[dict], max_tokens: int = PREF_COMPLETION_TOKENS) -> list[dict]:
    """The assistant answer cut to its first `max_tokens` tokens (scoring cost grows with the length)."""
    text = messages[-1]["content"]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return messages
    return messages[:-1] + [{**messages[-1], "content": tok.decode(ids[:max_tokens])}]


def pair_logps(chat_model, prompts: list[list[dict]], items: list[dict], adapter: str | None) -> list[tuple]:
    """(logp chosen, logp rejected) of each preference item given its rendered prompt, through
    `adapters.evaluate.sequence_logps` on the model routed to `adapter`."""
    from adapters.evaluate import sequence_logps

    tok = chat_model.tok
    pairs = [(p, cut_answer(tok, it["chosen"])) for p, it in zip(prompts, items)] + \
            [(p, cut_answer(tok, it["rejected"])) for p, it in zip(prompts, items)]
    with routed(chat_model, adapter) as model:
        lp = sequence_logps(model, chat_model.tok, pairs, chat_model.device, PREF_MAX_LENGTH, PREF_BATCH)
    n = len(items)
    return [(c[0], r[0]) for c, r in zip(lp[:n], lp[n:])]


def preference_scores(pairs: list[tuple[float, float]], ref: list[tuple[float, float]] | None = None) -> dict:
    """pref_acc: share of pairs the reward ranks chosen first (ties half). With `ref` (the base model's pairs) the
    reward is DPO's implicit one, (logp - logp_ref)(chosen) - (logp - logp_ref)(rejected); without, the raw
    log-probability margin. pref_acc_raw: logp(chosen) > logp(rejected). Via `adapters.evaluate.pref_summary`."""
    from adapters.evaluate import pref_summary

    raw = [c - r for c, r in pairs]
    margins = raw if ref is None else [(c - rc) - (r - rr) for (c, r), (rc, rr) in zip(pairs, ref)]
    s = pref_summary(margins, raw)
    return {"pref_acc": s["accuracy"] or 0.0, "pref_acc_raw": s["raw_accuracy"] or 0.0,
            "mean_margin": s["margin_mean"] or 0.0}


def time_it():
    start = time.perf_counter()
    return lambda: time.perf_counter() - start
