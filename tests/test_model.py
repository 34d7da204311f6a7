"""Model-backend plumbing on a tiny random Llama (no checkpoint) with the real tokenizer."""
import threading

import pytest
import torch

from agent.model import ChatModel, fit_history, pick_device


def words(messages):
    return sum(len(m["content"].split()) for m in messages)


def test_fit_history_keeps_system_and_newest_turns():
    msgs = [{"role": "system", "content": "sys"}]
    for i in range(5):
        msgs += [{"role": "user", "content": f"q{i} " * 10}, {"role": "assistant", "content": f"a{i} " * 10}]
    msgs.append({"role": "user", "content": "last question"})
    fitted = fit_history(msgs, words, budget=35)
    assert fitted[0]["role"] == "system"
    assert fitted[-1]["content"] == "last question"
    assert fitted[1]["role"] == "user"  # a kept history starts at a user turn
    assert words(fitted) <= 35
    assert fitted[1:] == msgs[-len(fitted) + 1:]  # the newest turns, in order


def test_fit_history_keeps_an_over_long_last_message():
    msgs = [{"role": "user", "content": "x " * 100}]
    assert fit_history(msgs, words, budget=5) == msgs


def test_pick_device_cpu_fp32_without_cuda():
    dev, dtype = pick_device("cpu")
    assert (dev, dtype) == ("cpu", torch.float32)
    if not torch.cuda.is_available():
        assert pick_device("auto") == ("cpu", torch.float32)
        with pytest.raises(RuntimeError):
            pick_device("cuda")


def test_render_uses_the_chat_template(tiny_llama, tokenizer):
    m = ChatModel(tiny_llama, tokenizer)
    ids = m.render([{"role": "user", "content": "Hello"}])
    text = tokenizer.decode(ids)
    assert "<|im_start|>user\nHello<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")


def test_stream_yields_pieces_and_counts_tokens(tiny_llama, tokenizer):
    m = ChatModel(tiny_llama, tokenizer)
    gen = m.stream([{"role": "user", "content": "Hi"}], max_new_tokens=12)
    pieces = list(gen)
    assert len(pieces) >= 1 and "".join(pieces) == gen.text
    assert 1 <= gen.completion_tokens <= 12 and gen.prompt_tokens > 3
    assert gen.first_token_s is not None and not gen.cancelled


def test_too_long_message_is_a_clear_error(tiny_llama, tokenizer):
    m = ChatModel(tiny_llama, tokenizer, max_context=128)
    with pytest.raises(ValueError, match="too long"):
        m.stream([{"role": "user", "content": "word " * 400}], max_new_tokens=16)


def test_history_is_truncated_to_the_window(tiny_llama, tokenizer):
    m = ChatModel(tiny_llama, tokenizer, max_context=160)
    msgs = []
    for i in range(10):
        msgs += [{"role": "user", "content": f"question {i} " * 8}, {"role": "assistant", "content": "ok " * 8}]
    msgs.append({"role": "user", "content": "final"})
    fitted = m.fit(msgs, max_new_tokens=16)
    assert fitted[-1]["content"] == "final" and len(fitted) < len(msgs)
    assert m.count(fitted) <= 160 - 16
    gen = m.stream(msgs, max_new_tokens=4)
    gen.collect()
    assert gen.prompt_tokens <= 144


def test_stop_event_cancels_generation(tiny_llama, tokenizer):
    m = ChatModel(tiny_llama, tokenizer)
    stop = threading.Event()
    gen = m.stream([{"role": "user", "content": "Hi"}], max_new_tokens=200, stop=stop)
    it = iter(gen)
    next(it)
    stop.set()
    list(it)
    assert gen.cancelled and gen.completion_tokens < 200
    assert not m.lock.locked()


def test_closing_the_stream_releases_the_model(tiny_llama, tokenizer):
    m = ChatModel(tiny_llama, tokenizer)
    gen = m.stream([{"role": "user", "content": "Hi"}], max_new_tokens=200)
    it = iter(gen)
    next(it)
    it.close()  # the browser went away
    assert gen.cancelled and not m.lock.locked()
    assert m.chat([{"role": "user", "content": "again"}], max_new_tokens=3) is not None


def test_adapters_switch_without_reloading_the_base(tiny_llama, tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model

    base_weight = tiny_llama.model.layers[0].self_attn.q_proj.weight.detach().clone()
    # Two adapters with different (non-zero) weights, saved as standard peft folders.
    for name, seed in (("a1", 1), ("a2", 2)):
        torch.manual_seed(seed)
        import copy

        pm = get_peft_model(copy.deepcopy(tiny_llama), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                  init_lora_weights=False))
        pm.save_pretrained(tmp_path / name)
    m = ChatModel(tiny_llama, tokenizer)
    prompt = [{"role": "user", "content": "Hi"}]
    base_out = m.chat(prompt, max_new_tokens=8, adapter=None)
    m.add_adapter("a1", tmp_path / "a1")
    m.add_adapter("a2", tmp_path / "a2")
    out1 = m.chat(prompt, max_new_tokens=8, adapter="a1")
    out2 = m.chat(prompt, max_new_tokens=8, adapter="a2")
    assert m.chat(prompt, max_new_tokens=8, adapter=None) == base_out
    assert len({base_out, out1, out2}) >= 2  # random LoRA weights change the greedy output
    m.use("a1")
    assert m.chat(prompt, max_new_tokens=8) == out1
    with pytest.raises(KeyError):
        m.use("nope")
    m.remove_adapter("a1")
    m.remove_adapter("a2")
    assert m.adapters == {} and m.active is None
    assert m.chat(prompt, max_new_tokens=8) == base_out
    assert torch.equal(m.model.model.layers[0].self_attn.q_proj.weight, base_weight)


def test_banned_next_blocks_only_repeats_of_the_answers_own_ngrams():
    from agent.decoding import banned_next

    assert banned_next([1, 2, 3, 1, 2], 3) == {3}  # "1 2" was followed by 3: "1 2 3" may not come again
    assert banned_next([1, 2, 3, 1, 2], 4) == set()
    assert banned_next([5, 5, 5], 2) == {5}
    assert banned_next([1, 2], 3) == set() and banned_next([], 2) == set()
    assert banned_next([4, 7], 1) == {4, 7}


def test_repetition_controls_ignore_the_prompt_and_stop_a_loop(tiny_llama, tokenizer):
    """With the answer-only n-gram ban no 2-gram of the answer repeats, while a prompt full of the same tokens
    bans none of them; the repetition penalty skips the prompt too."""
    from agent.decoding import AnswerNoRepeatNGram, Decoding

    m = ChatModel(tiny_llama, tokenizer)
    ids = torch.tensor([m.render([{"role": "user", "content": "Hi Hi Hi Hi"}])])
    kw = Decoding(no_repeat_ngram_size=2).generate_kwargs(prompt_len=ids.shape[1])
    out = tiny_llama.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=80, min_new_tokens=80,
                              pad_token_id=tokenizer.pad_token_id, **kw)
    answer = out[0, ids.shape[1]:].tolist()
    grams = [tuple(answer[i:i + 2]) for i in range(len(answer) - 1)]
    assert len(answer) == 80 and len(set(grams)) == len(grams)
    prompt = torch.tensor([[7, 8, 9, 7, 8]])
    scores = torch.zeros(1, 20)
    assert torch.isfinite(AnswerNoRepeatNGram(3, prompt_len=5)(prompt, scores.clone())).all()
    assert not torch.isfinite(AnswerNoRepeatNGram(3, prompt_len=0)(prompt, scores.clone())[0, 9])
    kw = Decoding(repetition_penalty=1.2).generate_kwargs(prompt_len=5)
    assert kw["logits_processor"][0].prompt_ignore_length == 5 and kw["do_sample"] is False
