"""The GRPOConfig fields a TRL user reaches for, with GRPO's names and meanings (docs/grpo_config.md), each shown
doing what it says on the tiny models."""

import asyncio
import json

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
)

import raft_trainer.vllm_sampling as vllm_sampling
from raft_trainer import RAFTTrainer, losses, reference
from raft_trainer.sequences import high_entropy_mask, sampling_logits

from .helpers import NO_DROPOUT, read_stage, share_of_apple
from .test_vllm import StandInVLLMGeneration


def train_one_stage(make_model, tokenizer, prompts, args, reward=share_of_apple, **kwargs):
    trainer = RAFTTrainer(
        kwargs.pop("model", None) or make_model(**NO_DROPOUT),
        reward,
        args=args,
        train_dataset=prompts,
        processing_class=tokenizer,
        **kwargs,
    )
    trainer.train()
    return trainer


# ---------------------------------------------------------------------------------------------------------------------
# Sampling: repetition_penalty, min_p, generation_kwargs, cache_implementation
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature, penalty", [(1.0, 1.7), (0.7, 0.6)])
def test_sampling_logits_are_what_generate_samples_from(temperature, penalty):
    # transformers' own processors, applied position by position as generate does, against ours at once.
    torch.manual_seed(0)
    input_ids = torch.randint(0, 11, (3, 9))
    logits = torch.randn(3, 8, 11) * 3
    processors = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(penalty), TemperatureLogitsWarper(temperature)])
    expected = torch.stack([processors(input_ids[:, : t + 1], logits[:, t].clone()) for t in range(8)], dim=1)
    torch.testing.assert_close(sampling_logits(logits, input_ids, temperature, penalty), expected)


def test_sampling_takes_min_p_repetition_penalty_and_generation_kwargs(make_model, tokenizer, prompts, make_args):
    args = make_args(min_p=0.05, repetition_penalty=1.3, generation_kwargs={"no_repeat_ngram_size": 1})
    trainer = train_one_stage(make_model, tokenizer, prompts, args)
    config = trainer.generation_config
    assert (config.min_p, config.repetition_penalty, config.no_repeat_ngram_size) == (0.05, 1.3, 1)
    for ids in read_stage(args, 0)["completion"]:  # no_repeat_ngram_size=1: no word twice in a completion
        assert len(ids.split()) == len(set(ids.split()))


def test_min_p_of_one_samples_the_most_likely_token_only(make_model, tokenizer, prompts, make_args):
    args = make_args(min_p=1.0, num_stages=1, prompts_per_stage=4, num_generations=4)
    train_one_stage(make_model, tokenizer, prompts, args)
    rows = read_stage(args, 0).to_list()
    for group in (rows[start : start + 4] for start in range(0, 16, 4)):
        assert len({row["completion"] for row in group}) == 1  # every sample of a prompt is its greedy answer


def test_a_sampling_setting_with_its_own_field_is_refused_in_generation_kwargs(make_args):
    with pytest.raises(ValueError, match=r"generation_kwargs sets \['max_new_tokens'\].*max_completion_length"):
        make_args(generation_kwargs={"max_new_tokens": 3})


def test_raft_plus_plus_reads_the_penalised_distribution_its_samples_came_from(
    make_model, tokenizer, prompts, make_args
):
    # With a repetition penalty the old log-probs and the loss read the same penalised distribution: the first
    # step's ratio is 1.
    args = make_args(loss_type="raft++", repetition_penalty=1.8, temperature=0.9, logging_steps=1)
    args.logging_strategy = "steps"
    trainer = train_one_stage(make_model, tokenizer, prompts, args)
    first = next(record for record in trainer.state.log_history if "ratio_mean" in record)
    assert first["ratio_mean"] == pytest.approx(1.0, abs=1e-5)


def test_cache_implementation_is_the_one_generate_keeps(make_model, tokenizer, prompts, make_args):
    args = make_args(cache_implementation="static")
    trainer = train_one_stage(make_model, tokenizer, prompts, args)
    assert trainer.generation_config.cache_implementation == "static"
    assert len(read_stage(args, 0)) == 16


# ---------------------------------------------------------------------------------------------------------------------
# Prompts and evaluation: chat_template_kwargs, shuffle_dataset, num_generations_eval
# ---------------------------------------------------------------------------------------------------------------------


def test_chat_template_kwargs_reach_the_template(make_model, tokenizer, prompts, make_args):
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if fruit %}apple {% endif %}"
        "{% if add_generation_prompt %}say{% endif %}"
    )
    chats = prompts.map(lambda row: {"prompt": [{"role": "user", "content": row["prompt"]}]})
    polite = RAFTTrainer(
        make_model(),
        share_of_apple,
        args=make_args(chat_template_kwargs={"fruit": True}),
        train_dataset=chats,
        processing_class=tokenizer,
    )
    plain = RAFTTrainer(
        make_model(), share_of_apple, args=make_args(), train_dataset=chats, processing_class=tokenizer
    )
    assert all("apple say" in tokenizer.decode(ids) for ids in polite.prompt_ids)
    assert not any("apple say" in tokenizer.decode(ids) for ids in plain.prompt_ids)


def test_without_shuffle_dataset_stages_walk_the_dataset_in_order(make_model, tokenizer, prompts, make_args):
    args = make_args(shuffle_dataset=False, num_stages=3, prompts_per_stage=3, num_generations=2)
    train_one_stage(make_model, tokenizer, prompts, args)
    drawn = [read_stage(args, stage)["prompt_index"][::2] for stage in range(3)]  # one row per group of 2
    assert drawn == [[0, 1, 2], [3, 0, 1], [2, 3, 0]]  # the dataset's rows in order, pass after pass
    shuffled = make_args(num_stages=3, prompts_per_stage=3, num_generations=2, output_dir=args.output_dir + "-s")
    train_one_stage(make_model, tokenizer, prompts, shuffled)
    assert [read_stage(shuffled, stage)["prompt_index"][::2] for stage in range(3)] != drawn


def test_num_generations_eval_scores_that_many_completions_per_prompt(make_model, tokenizer, prompts, make_args):
    seen = []

    def reward(prompts, completions, **kwargs):
        seen.append(list(prompts))
        return share_of_apple(completions)

    trainer = RAFTTrainer(
        make_model(),
        reward,
        args=make_args(num_generations_eval=3),
        train_dataset=prompts,
        eval_dataset=prompts,
        processing_class=tokenizer,
    )
    metrics = trainer.evaluate()
    assert seen[-1] == [prompt for prompt in prompts["prompt"] for _ in range(3)]
    assert 0 <= metrics["eval_reward"] <= 1


# ---------------------------------------------------------------------------------------------------------------------
# Models: trust_remote_code, cast_lm_head_to_fp32
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("trust", [False, True])
def test_trust_remote_code_reaches_every_load_and_is_off_by_default(
    trust, local_files, make_args, monkeypatch, tokenizer
):
    calls = []
    for cls in (AutoModelForCausalLM, AutoTokenizer):
        original = cls.from_pretrained.__func__

        def spy(cls_, name, *args, _original=original, **kwargs):
            calls.append((cls_.__name__, kwargs.get("trust_remote_code")))
            return _original(cls_, name, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    args = make_args(**({"trust_remote_code": True} if trust else {}), kl_loss_coef=0.01)
    policy, _, _, prompt_texts = local_files
    RAFTTrainer(policy, share_of_apple, args=args, train_dataset=Dataset.from_dict({"prompt": prompt_texts}))
    assert [name for name, _ in calls] == ["AutoTokenizer", "AutoModelForCausalLM", "AutoModelForCausalLM"]
    assert {value for _, value in calls} == {trust}


def test_cast_lm_head_to_fp32_computes_the_logits_in_float32(make_model, tokenizer, prompts, make_args):
    model = make_model(tie_word_embeddings=False).to(torch.bfloat16)
    trainer = RAFTTrainer(
        model,
        share_of_apple,
        args=make_args(cast_lm_head_to_fp32=True),
        train_dataset=prompts,
        processing_class=tokenizer,
    )
    assert trainer.model.lm_head.weight.dtype == torch.float32
    assert trainer.model.transformer.h[0].attn.c_attn.weight.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = trainer.model(input_ids=torch.tensor([[3, 4, 5]])).logits
    assert logits.dtype == torch.float32
    with pytest.raises(ValueError, match="tie_word_embeddings=False"):
        RAFTTrainer(
            make_model(),
            share_of_apple,
            args=make_args(cast_lm_head_to_fp32=True),
            train_dataset=prompts,
            processing_class=tokenizer,
        )


# ---------------------------------------------------------------------------------------------------------------------
# The clipped losses: top_entropy_quantile, entropy_coef
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quantile", [0.0, 0.2, 0.5, 1.0])
def test_high_entropy_mask_is_the_reference(quantile):
    torch.manual_seed(quantile * 10)
    entropy, mask = torch.rand(4, 7), torch.rand(4, 7) > 0.3
    kept = high_entropy_mask(entropy, mask, quantile)
    expected = reference.high_entropy_mask(entropy[mask].tolist(), quantile)
    assert kept[mask].tolist() == expected.tolist() and not kept[~mask].any()


def test_token_weights_multiply_the_clipped_loss_as_the_reference_says():
    torch.manual_seed(1)
    new, old, weights = torch.randn(3, 5), torch.randn(3, 5), torch.rand(3, 5)
    advantages = torch.tensor([1.0, -1.0, 0.5])
    mask = torch.ones(3, 5, dtype=torch.bool)
    loss, _, _ = losses.clipped_policy_loss(new, old, advantages, mask, 0.2, 0.28, token_weights=weights)
    expected, _, _ = reference.clipped_policy_loss(
        new.tolist(), old.tolist(), advantages.tolist(), 0.2, 0.28, token_weights=weights.tolist()
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_top_entropy_quantile_and_entropy_coef_shape_the_clipped_loss(make_model, tokenizer, prompts, make_args):
    # One step of RAFT++ on the same kept set: a quantile of 0 trains only the highest-entropy token, so the
    # update differs from training every token; an entropy bonus changes it again.
    def first_update(**settings):
        args = make_args(loss_type="raft++", learning_rate=1e-2, **settings)
        model = make_model(**NO_DROPOUT)
        before = model.lm_head.weight.detach().clone()
        train_one_stage(make_model, tokenizer, prompts, args, model=model)
        return model.lm_head.weight.detach() - before

    every_token = first_update()
    forking_tokens = first_update(top_entropy_quantile=0.0)
    with_bonus = first_update(entropy_coef=0.5)
    assert not torch.allclose(every_token, forking_tokens) and not torch.allclose(every_token, with_bonus)
    with pytest.raises(ValueError, match="top_entropy_quantile and entropy_coef shape the clipped losses"):
        make_args(entropy_coef=0.1)


# ---------------------------------------------------------------------------------------------------------------------
# vLLM: the importance-sampling correction
# ---------------------------------------------------------------------------------------------------------------------


class DriftingVLLMGeneration(StandInVLLMGeneration):
    """Returns each sampled token's log-prob under the policy plus a fixed drift, as a sampler whose numerics differ
    a little from the trainer's would."""

    drift = -0.25

    def generate(self, prompts, images, num_generations):
        prompt_ids, completions, _, _ = super().generate(prompts, images, num_generations)
        log_probs = []
        with torch.no_grad():
            for prompt, completion in zip(prompts, completions):
                ids = torch.tensor([prompt + completion])
                logits = self.model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
                token = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(completion)[:, None])[:, 0]
                log_probs.append([[value + self.drift] for value in token.tolist()])
        return prompt_ids, completions, log_probs, None


@pytest.mark.parametrize("mode", ["token_truncate", "sequence_mask"])
def test_vllm_samples_are_reweighed_by_the_importance_ratio(
    mode, monkeypatch, make_model, tokenizer, prompts, make_args
):
    monkeypatch.setattr(vllm_sampling, "is_vllm_available", lambda: True)
    monkeypatch.setattr(vllm_sampling, "VLLMGeneration", DriftingVLLMGeneration)
    args = make_args(
        use_vllm=True,
        loss_type="raft++",
        vllm_importance_sampling_mode=mode,
        vllm_importance_sampling_clip_max=1.2,
    )
    trainer = train_one_stage(make_model, tokenizer, prompts, args)
    examples = trainer._stage_in_flight["examples"]
    for example in examples:
        completion = [i for i, label in enumerate(example["labels"]) if label != -100]
        weights = [example["importance_weights"][i] for i in completion]
        old = [example["old_log_probs"][i] for i in completion]
        expected = reference.importance_sampling_weights(
            old, [value + DriftingVLLMGeneration.drift for value in old], mode, None, 1.2
        )
        np.testing.assert_allclose(weights, expected, rtol=1e-4)
        # Every token's ratio is exp(0.25) = 1.28, beyond the bound: truncated to it, or the sequence masked out.
        assert weights == pytest.approx([1.2 if mode == "token_truncate" else 0.0] * len(weights))


def test_importance_sampling_weights_are_the_reference():
    old, sampled = [-1.0, -0.5, -2.0], [-1.2, -0.1, -2.0]
    for mode in ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask"):
        for low, high in ((None, 3.0), (0.8, 1.1), (None, None)):
            np.testing.assert_allclose(
                losses.importance_sampling_weights(old, sampled, mode, low, high),
                reference.importance_sampling_weights(old, sampled, mode, low, high),
            )
    assert losses.importance_sampling_weights(old, None, "token_mask", None, 3.0) == [1.0] * 3  # not vLLM's sample


# ---------------------------------------------------------------------------------------------------------------------
# Reward functions: async ones, and TRL's log_extra / log_metric keywords
# ---------------------------------------------------------------------------------------------------------------------


def test_async_reward_functions_run_concurrently(make_model, tokenizer, prompts, make_args):
    # Each waits for the other to have started: run one after the other they would time out.
    started = {}

    async def judge(name, completions):
        started.setdefault(name, asyncio.Event()).set()
        other = "b" if name == "a" else "a"
        await asyncio.wait_for(started.setdefault(other, asyncio.Event()).wait(), timeout=5)
        return share_of_apple(completions)

    async def judge_a(completions, **kwargs):
        return await judge("a", completions)

    async def judge_b(completions, **kwargs):
        return await judge("b", completions)

    args = make_args(reward_weights=[0.5, 0.5])
    train_one_stage(make_model, tokenizer, prompts, args, reward=[judge_a, judge_b])
    rows = read_stage(args, 0)
    assert rows["reward"] == pytest.approx(share_of_apple(rows["completion"]))


def test_reward_functions_log_extra_columns_and_metrics(make_model, tokenizer, prompts, make_args):
    def reward(completions, log_extra, log_metric, **kwargs):
        log_extra("words", [len(text.split()) for text in completions])
        log_metric("judge_calls", 1.0)
        return share_of_apple(completions)

    args = make_args(num_stages=2)
    trainer = train_one_stage(make_model, tokenizer, prompts, args, reward=reward)
    rows = read_stage(args, 1)
    assert rows["words"] == [len(text.split()) for text in rows["completion"]]
    stage_records = [record for record in trainer.state.log_history if "num_kept" in record]
    assert [record["judge_calls"] for record in stage_records] == [1.0, 1.0]
    with open(f"{args.output_dir}/stages/stage_000.jsonl") as file:
        assert "words" in json.loads(file.readline())
