import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
from trl.trainer.utils import pad

from raft_trainer.sequences import generate_completions, strip_after_eos

from .helpers import NO_DROPOUT

PROMPTS = ["say something", "tell me a word please", "say", "say a word"]  # left padding; "say" is one token


def tiny_llama(tokenizer) -> LlamaForCausalLM:
    """The real model's architecture in small: grouped-query attention, rotary positions."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


def sampling(tokenizer) -> GenerationConfig:
    return GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        max_new_tokens=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def plain_generate(model, prompt_ids, generation_config, num_return_sequences):
    """`generate` as it comes: every prompt copied num_return_sequences times before its first forward pass."""
    config = copy.copy(generation_config)
    config.num_return_sequences = num_return_sequences
    batch = [torch.tensor(ids) for ids in prompt_ids]
    input_ids = pad(batch, padding_value=config.pad_token_id, padding_side="left")
    attention_mask = pad([torch.ones_like(ids) for ids in batch], padding_side="left")
    with torch.no_grad():
        sequences = model.eval().generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    return strip_after_eos(sequences[:, input_ids.shape[1] :], torch.tensor([config.eos_token_id]))


def encoded_rows(model) -> list[int]:
    """Records the number of rows of each forward pass of `model` whose input is longer than one token (a prompt
    being encoded, not a token being decoded)."""
    rows = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: (
            rows.append(kwargs["input_ids"].shape[0]) if kwargs["input_ids"].shape[1] > 1 else None
        ),
        with_kwargs=True,
    )
    return rows


@pytest.mark.parametrize("architecture", ["gpt2", "llama", "llama with lora"])
def test_each_prompt_is_encoded_once_and_the_samples_are_those_of_plain_generate(architecture, make_model, tokenizer):
    if architecture == "gpt2":
        model = make_model(**NO_DROPOUT)
    else:
        model = tiny_llama(tokenizer)
    if architecture == "llama with lora":
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    prompt_ids = tokenizer(PROMPTS)["input_ids"]
    config = sampling(tokenizer)
    torch.manual_seed(1)
    expected = plain_generate(model, prompt_ids, config, 6)
    rows = encoded_rows(model)
    torch.manual_seed(1)
    completions = generate_completions(model, prompt_ids, config, 6, batch_size=24, show_progress=False)
    assert completions == expected
    assert len(set(map(tuple, completions))) > len(PROMPTS)  # sampled, not one answer per prompt
    assert rows == [len(PROMPTS)]  # one batch (24 // 6 prompts), each prompt encoded once, not 6 times


def test_a_static_cache_or_one_sample_per_prompt_generates_as_plain_generate_does(make_model, tokenizer):
    model = make_model(**NO_DROPOUT)
    prompt_ids = tokenizer(PROMPTS)["input_ids"]
    greedy = GenerationConfig(
        do_sample=False, max_new_tokens=4, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    expected = plain_generate(model, prompt_ids, greedy, 1)
    rows = encoded_rows(model)
    assert generate_completions(model, prompt_ids, greedy, 1, 64, show_progress=False) == expected
    static = sampling(tokenizer)
    static.cache_implementation = "static"
    generate_completions(model, prompt_ids, static, 3, 64, show_progress=False)
    assert rows == [4, 12]  # no cache of its own for one sample or beside generate's static cache


def test_a_static_cache_named_by_the_model_itself_generates_as_plain_generate_does(make_model, tokenizer):
    # A checkpoint whose generation_config asks for a static cache: the prefilled prompt cache cannot go beside it.
    model = make_model(**NO_DROPOUT)
    model.generation_config.cache_implementation = "static"
    prompt_ids = tokenizer(PROMPTS)["input_ids"]
    torch.manual_seed(2)
    expected = plain_generate(model, prompt_ids, sampling(tokenizer), 3)
    torch.manual_seed(2)
    assert generate_completions(model, prompt_ids, sampling(tokenizer), 3, 64, show_progress=False) == expected


@pytest.mark.parametrize("architecture", ["gpt2", "llama with lora"])
def test_the_models_own_sampling_settings_do_not_leak_into_the_samples(architecture, make_model, tokenizer):
    # Checkpoints ship sampling settings in their generation_config (Qwen2.5-Instruct: repetition_penalty=1.05);
    # generate would apply them to every field its config leaves unset, so that the samples would no longer come
    # from softmax(logits / temperature), the distribution the policy-ratio losses and evaluations assume.
    def model():
        plain = make_model(**NO_DROPOUT) if architecture == "gpt2" else tiny_llama(tokenizer)
        if architecture != "gpt2":
            lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
            torch.manual_seed(3)
            plain = get_peft_model(plain, lora)
        return plain

    prompt_ids = tokenizer(PROMPTS)["input_ids"]
    greedy = GenerationConfig(
        do_sample=False, max_new_tokens=8, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    results = []
    for settings in ({}, dict(repetition_penalty=50.0, no_repeat_ngram_size=1, min_p=0.9, top_k=1)):
        policy = model()
        hf_model = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
        for name, value in settings.items():
            setattr(hf_model.generation_config, name, value)
        torch.manual_seed(4)
        sampled = generate_completions(policy, prompt_ids, sampling(tokenizer), 4, 64, show_progress=False)
        results.append((sampled, generate_completions(policy, prompt_ids, greedy, 1, 64, show_progress=False)))
        assert all(getattr(hf_model.generation_config, name) == value for name, value in settings.items())
    assert results[0] == results[1]
    # the settings would have changed the samples: repeated tokens are what no_repeat_ngram_size=1 forbids
    assert any(len(set(ids)) < len(ids) for ids in results[0][0])


def test_continuous_batching_gives_plain_generates_greedy_completions_prompt_major(tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_llama(tokenizer), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    model.train()
    prompt_ids = tokenizer(PROMPTS)["input_ids"]
    greedy = GenerationConfig(
        do_sample=False, max_new_tokens=8, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    expected = generate_completions(model, prompt_ids, greedy, 1, 64, show_progress=False)
    # three "samples" per prompt: greedy ones are all the prompt's completion, so a prompt's place shows
    paged = generate_completions(model, prompt_ids, greedy, 3, 64, show_progress=False, continuous_batching={})
    assert paged == [ids for ids in expected for _ in range(3)]
    assert model.training  # put back in train mode
    assert model(torch.tensor([prompt_ids[1]])).logits.shape[1] == len(prompt_ids[1])  # and forward as before


def test_continuous_batching_cuts_each_completion_after_its_first_eos(tokenizer, make_model, monkeypatch):
    from types import SimpleNamespace

    eos = tokenizer.eos_token_id
    produced = [[5, eos, 7], [6, 6], [eos]]
    model = make_model()
    monkeypatch.setattr(
        type(model),
        "generate_batch",
        lambda self, inputs, generation_config, **kwargs: {
            f"req_{i}": SimpleNamespace(generated_tokens=ids, error=None) for i, ids in enumerate(produced)
        },
        raising=False,
    )
    config = GenerationConfig(max_new_tokens=3, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
    completions = generate_completions(model, [[1], [2], [3]], config, 1, 8, False, continuous_batching={})
    assert completions == [[5, eos], [6, 6], [eos]]
    produced.pop()  # a request that failed is missing from generate_batch's answer
    with pytest.raises(RuntimeError, match="returned 2 of 3 completions"):
        generate_completions(model, [[1], [2], [3]], config, 1, 8, False, continuous_batching={})
