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

from adapters.lab_tasks import LabTask, score_answer

SAMPLES_KEPT = 5  # answers kept per technique in the report


# ---------------------------------------------------------------------------------------------- memory, disk, params
def _trim() -> None:
    """Give freed memory back to the OS, so the next RSS baseline is honest (glibc keeps freed pages otherwise)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak extra memory while the block runs, in MB. On CUDA: `torch.cuda.max_memory_allocated` above what was
    allocated at the start. On CPU: the resident set size of this process plus its children, sampled every 20 ms,
    above its value at the start (freed memory is returned to the OS first)."""

    def __init__(self, device: str = "cpu", interval: float = 0.02):
        self.device, self.interval = device, interval
        self.peak_mb = 0.0
        self.peak_rss_mb = 0.0

    def _rss(self) -> int:
        import psutil

        proc = psutil.Process()
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total

    def _watch(self):
        while not self._stop.wait(self.interval):
            self._max = max(self._max, self._rss())

    def __enter__(self):
        _trim()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._cuda_start = torch.cuda.memory_allocated()
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
            self.peak_mb = (torch.cuda.max_memory_allocated() - self._cuda_start) / 2**20
        else:
            self.peak_mb = (self._max - self._start) / 2**20
        return False


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
def _ids(x) -> list[int]:
    if isinstance(x, dict) or hasattr(x, "input_ids"):
        x = x["input_ids"]
    return list(x)


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


def completion_logp(chat_model, prompt: list[dict], completion: str, adapter: str | None = None,
                    max_length: int = 1024, max_completion: int = 384) -> float:
    """Sum of log-probabilities of `completion` as the assistant's reply to `prompt` (chat template applied).
    The completion keeps its first `max_completion` tokens; the prompt its last tokens that still fit."""
    tok = chat_model.tok
    p = _ids(tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True))
    full = _ids(tok.apply_chat_template(prompt + [{"role": "assistant", "content": completion}], tokenize=True))
    c = full[len(p):] if full[:len(p)] == p else _ids(tok(completion, add_special_tokens=False)) + [tok.eos_token_id]
    c = c[:max_completion]
    p = p[-max(1, max_length - len(c)):]
    ids = torch.tensor([p + c], device=chat_model.device)
    with routed(chat_model, adapter) as model:
        logits = model(input_ids=ids).logits[0, len(p) - 1:-1].float()
    logps = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(c, device=logits.device)[:, None])
    return float(logps.sum())


def pair_logps(chat_model, messages: list[dict], item: dict, adapter: str | None) -> tuple[float, float]:
    chosen, rejected = item["chosen"][-1]["content"], item["rejected"][-1]["content"]
    return (completion_logp(chat_model, messages, chosen, adapter),
            completion_logp(chat_model, messages, rejected, adapter))


def preference_scores(pairs: list[tuple[float, float]], ref: list[tuple[float, float]] | None = None) -> dict:
    """Preference accuracy from (logp chosen, logp rejected) per item. With `ref` (the base model's pairs), the
    reward is DPO's implicit one: (logp - logp_ref)(chosen) - (logp - logp_ref)(rejected); without, the raw
    margin. Ties count half. Also the raw accuracy and the mean reward margin."""
    if not pairs:
        return {"pref_acc": 0.0, "pref_acc_raw": 0.0, "mean_margin": 0.0}
    raw = [c - r for c, r in pairs]
    margins = raw if ref is None else [(c - rc) - (r - rr) for (c, r), (rc, rr) in zip(pairs, ref)]

    def acc(ms):
        return sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in ms) / len(ms)

    return {"pref_acc": acc(margins), "pref_acc_raw": acc(raw), "mean_margin": statistics.mean(margins)}


def time_it():
    start = time.perf_counter()
    return lambda: time.perf_counter() - start
