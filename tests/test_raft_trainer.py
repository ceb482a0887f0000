import copy
import logging
import warnings
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl.rewards import get_soft_overlong_punishment

from raft_trainer import RAFTTrainer, reference
from raft_trainer.stages.prompts import stage_prompt_indices
from raft_trainer.tasks.toy.tiny import tiny_causal_lm, tiny_reward_model, word_tokenizer

from .helpers import (
    CHAT_TEMPLATE,
    LEARNING_PROMPTS,
    LEARNING_RUN,
    NO_DROPOUT,
    PROMPT_WORDS,
    WORDS,
    by_prompt,
    completion_token_log_probs,
    read_stage,
    record_candidates,
    share_of_apple,
)


def test_selection_and_sft_loss_equal_the_reference(make_model, tokenizer, prompts, make_args):
    model = make_model(**NO_DROPOUT)
    initial = copy.deepcopy(model).eval()
    args = make_args(num_generations=4, prompts_per_stage=4, per_device_train_batch_size=4, logging_steps=1)
    trainer = RAFTTrainer(model, share_of_apple, args=args, train_dataset=prompts, processing_class=tokenizer)
    recorded = record_candidates(trainer)
    trainer.train()

    candidates, rows = recorded[0], read_stage(args, 0)
    rewards = [[row["reward"] for row in group] for group in by_prompt(rows, 4)]
    log_probs = [
        [
            completion_token_log_probs(initial, candidates["prompt_ids"][i], candidates["completion_ids"][i])
            for i in group
        ]
        for group in [range(p * 4, p * 4 + 4) for p in range(4)]
    ]
    selected = [[row["selected"] for row in group] for group in by_prompt(rows, 4)]
    assert [group.index(True) for group in selected] == reference.best_of_k(rewards)
    assert all(sum(group) == 1 for group in selected)
    # One batch holds the whole kept set, so the first logged loss is the SFT loss of the kept set before any update.
    logged_loss = next(record["loss"] for record in trainer.state.log_history if "loss" in record)
    assert logged_loss == pytest.approx(reference.raft_alignment([log_probs], [rewards])[0], abs=2e-4)


def test_reward_rises_over_stages(make_model, tokenizer, make_args):
    prompts = Dataset.from_dict({"prompt": LEARNING_PROMPTS})
    args = make_args(**LEARNING_RUN)
    trainer = RAFTTrainer(make_model(), share_of_apple, args=args, train_dataset=prompts, processing_class=tokenizer)
    trainer.train()
    stages = [record for record in trainer.state.log_history if "stage" in record]
    assert [record["stage"] for record in stages] == [0, 1, 2, 3]
    assert all(record["reward_kept_mean"] >= record["reward_mean"] for record in stages)
    assert stages[-1]["reward_mean"] > max(3 * stages[0]["reward_mean"], stages[0]["reward_mean"] + 0.15)
    for key in ("reward_std", "completion_length_mean", "kept_distinct_1", "kept_distinct_2", "loss"):
        assert key in stages[0]


def test_stage_files_show_the_best_candidate_of_each_prompt_kept(make_model, tokenizer, prompts, make_args):
    args = make_args(num_stages=2, prompts_per_stage=3, num_generations=5)
    trainer = RAFTTrainer(make_model(), share_of_apple, args=args, train_dataset=prompts, processing_class=tokenizer)
    trainer.train()
    for stage in range(2):
        rows = read_stage(args, stage)
        assert len(rows) == 3 * 5
        assert {"stage", "prompt", "completion", "reward", "selected"} <= set(rows.column_names)
        assert set(rows["stage"]) == {stage}
        drawn = stage_prompt_indices(stage, 3, len(prompts), args.seed)
        for group, prompt_index in zip(by_prompt(rows, 5), drawn):
            assert {row["prompt"] for row in group} == {prompts[prompt_index]["prompt"]}
            rewards = [row["reward"] for row in group]
            assert [row["selected"] for row in group] == [i == rewards.index(max(rewards)) for i in range(5)]
            assert all(row["reward"] == pytest.approx(share_of_apple([row["completion"]])[0]) for row in group)


def test_global_ranking_keeps_the_top_of_the_pool(make_model, tokenizer, prompts, make_args):
    args = make_args(ranking="global", prompts_per_stage=3, num_generations=4)
    trainer = RAFTTrainer(make_model(), share_of_apple, args=args, train_dataset=prompts, processing_class=tokenizer)
    trainer.train()
    rows = read_stage(args, 0)
    assert len(rows) == 3 * 4  # b * K prompts, one candidate each
    assert sum(rows["selected"]) == 3
    assert [i for i, kept in enumerate(rows["selected"]) if kept] == sorted(reference.top_of_pool(rows["reward"], 3))


@pytest.mark.parametrize("use_peft", [False, True])
def test_kl_penalised_ranking_against_the_frozen_initial_model(make_model, tokenizer, prompts, make_args, use_peft):
    model = make_model(**NO_DROPOUT)
    initial = copy.deepcopy(model).eval()
    args = make_args(num_stages=2, beta=0.5, epochs_per_stage=3, learning_rate=1e-2)
    # With an adapter the reference is the base model under it: no second copy.
    peft_config = LoraConfig(r=8, target_modules=["c_attn"], task_type="CAUSAL_LM") if use_peft else None
    trainer = RAFTTrainer(
        model, share_of_apple, args=args, train_dataset=prompts, processing_class=tokenizer, peft_config=peft_config
    )
    assert (trainer.ref_model is None) == use_peft
    recorded = record_candidates(trainer)
    trainer.train()

    rows = read_stage(args, 1)
    candidates = recorded[1]
    ref_log_probs = [
        sum(completion_token_log_probs(initial, prompt_ids, completion_ids))
        for prompt_ids, completion_ids in zip(candidates["prompt_ids"], candidates["completion_ids"])
    ]
    assert rows["ref_log_prob"] == pytest.approx(ref_log_probs, abs=1e-4)
    assert any(abs(lp - ref) > 1e-2 for lp, ref in zip(rows["log_prob"], rows["ref_log_prob"]))  # the policy moved
    expected = reference.kl_penalized_score(rows["reward"], rows["log_prob"], rows["ref_log_prob"], 0.5)
    assert rows["score"] == pytest.approx(expected.tolist())
    scores = [[row["score"] for row in group] for group in by_prompt(rows, 4)]
    selected = [[row["selected"] for row in group].index(True) for group in by_prompt(rows, 4)]
    assert selected == reference.best_of_k(scores)
    assert "kl_mean" in next(record for record in trainer.state.log_history if record.get("stage") == 1)


def test_reward_model_given_as_a_pretrained_model(make_model, tokenizer, prompts, make_args):
    torch.manual_seed(1)
    reward_model = tiny_reward_model(tokenizer, **NO_DROPOUT).eval()
    args = make_args(generation_batch_size=6)
    trainer = RAFTTrainer(
        make_model(),
        reward_model,
        args=args,
        train_dataset=prompts,
        processing_class=tokenizer,
        reward_processing_classes=tokenizer,
    )
    batch_sizes = []
    forward = reward_model.forward
    reward_model.forward = lambda input_ids, **kwargs: (
        batch_sizes.append(len(input_ids)) or forward(input_ids, **kwargs)
    )
    trainer.train()
    assert batch_sizes == [6, 6, 4]  # 16 candidates, scored generation_batch_size at a time
    rows = read_stage(args, 0)
    for row in rows:  # each candidate scored alone (no padding) by the reward model on prompt + completion
        inputs = tokenizer(row["prompt"] + row["completion"] + tokenizer.eos_token, return_tensors="pt")
        with torch.no_grad():
            assert row["reward"] == pytest.approx(reward_model(**inputs).logits[0, 0].item(), abs=1e-5)


def test_weighted_list_of_rewards(make_model, tokenizer, prompts, make_args):
    def length_reward(completion_ids, **kwargs):
        return [float(len(ids)) for ids in completion_ids]

    args = make_args(reward_weights=[2.0, -0.25])
    trainer = RAFTTrainer(
        make_model(), [share_of_apple, length_reward], args=args, train_dataset=prompts, processing_class=tokenizer
    )
    trainer.train()
    for row in read_stage(args, 0):
        assert row["reward_share_of_apple"] == pytest.approx(share_of_apple([row["completion"]])[0])
        assert row["reward_length_reward"] == row["completion_length"]
        assert row["reward"] == pytest.approx(2.0 * row["reward_share_of_apple"] - 0.25 * row["completion_length"])


def test_reward_functions_get_trl_keywords_and_trl_rewards_work(make_model, tokenizer, prompts, make_args):
    seen = {}

    def spy(prompts, completions, completion_ids, topic, trainer_state, **kwargs):
        seen.update(prompts=prompts, completions=completions, completion_ids=completion_ids, topic=topic)
        return [0.0] * len(prompts)

    args = make_args(prompts_per_stage=2, num_generations=3, max_completion_length=6)
    overlong = get_soft_overlong_punishment(max_completion_len=6, soft_punish_cache=4)
    trainer = RAFTTrainer(make_model(), [spy, overlong], args=args, train_dataset=prompts, processing_class=tokenizer)
    trainer.train()
    rows = read_stage(args, 0)
    assert seen["prompts"] == rows["prompt"] and seen["completions"] == rows["completion"]
    assert seen["topic"] == [prompts[i]["topic"] for i in rows["prompt_index"]]
    assert [len(ids) for ids in seen["completion_ids"]] == rows["completion_length"]
    assert rows["reward"] == pytest.approx(overlong(completion_ids=seen["completion_ids"]))


def test_chat_prompts_are_rendered_with_the_chat_template(make_model, tokenizer, make_args):
    tokenizer.chat_template = CHAT_TEMPLATE
    chats = Dataset.from_dict({"prompt": [[{"role": "user", "content": "say something"}]] * 2})
    seen = []

    def reward(prompts, completions, **kwargs):
        seen.extend(completions)
        return share_of_apple([message[0]["content"] for message in completions])

    args = make_args(prompts_per_stage=2, num_generations=2)
    trainer = RAFTTrainer(make_model(), reward, args=args, train_dataset=chats, processing_class=tokenizer)
    assert tokenizer.decode(trainer.prompt_ids[0]) == "user : say something Assistant :"
    trainer.train()
    assert all(message[0]["role"] == "assistant" for message in seen)
    rows = read_stage(args, 0)
    assert rows[0]["prompt"] == [{"role": "user", "content": "say something"}]
    assert [message[0]["content"] for message in seen] == rows["completion"]


def test_long_prompts_are_dropped_with_a_count(make_model, tokenizer, make_args, caplog):
    prompts = Dataset.from_dict({"prompt": ["say something", "say " * 20 + "something", "tell me a word"]})
    args = make_args(max_prompt_length=5, prompts_per_stage=2, num_generations=2)
    with caplog.at_level(logging.WARNING):
        trainer = RAFTTrainer(
            make_model(), share_of_apple, args=args, train_dataset=prompts, processing_class=tokenizer
        )
    assert "Dropped 1 of 3 prompts" in caplog.text
    assert list(trainer.train_dataset["prompt"]) == ["say something", "tell me a word"]
    with pytest.raises(ValueError, match="max_prompt_length"):  # raised before the (missing) model is loaded
        RAFTTrainer(
            "no/such-model",
            share_of_apple,
            args=make_args(max_prompt_length=1),
            train_dataset=prompts,
            processing_class=tokenizer,
        )


def test_sample_filter_drops_and_cleans_candidates(make_model, tokenizer, prompts, make_args):
    def no_banana_and_cleaned_kite(completions, **kwargs):
        return [False if "banana" in text.split() else text.replace("kite", "apple") for text in completions]

    args = make_args(num_stages=2, num_generations=6, max_completion_length=12)
    trainer = RAFTTrainer(
        make_model(),
        share_of_apple,
        args=args,
        train_dataset=prompts,
        processing_class=tokenizer,
        sample_filter=no_banana_and_cleaned_kite,
    )
    trainer.train()
    rows = read_stage(args, 0)
    assert any(rows["filtered"])
    for row in rows:
        assert row["filtered"] == ("banana" in row["completion"].split())
        if row["filtered"]:
            assert row["reward"] is None and not row["selected"]
        else:
            assert "kite" not in row["completion"].split()


def test_model_and_reference_loaded_from_a_local_path_and_saved_model_reloads(
    make_model, tokenizer, prompts, make_args, tmp_path
):
    make_model().save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    args = make_args(beta=0.1)
    trainer = RAFTTrainer(str(tmp_path / "policy"), share_of_apple, args=args, train_dataset=prompts)
    trainer.train()
    trainer.save_model(str(tmp_path / "trained"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "trained")
    assert AutoTokenizer.from_pretrained(tmp_path / "trained").get_vocab() == tokenizer.get_vocab()
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    initial = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    assert not torch.equal(initial.lm_head.weight, reloaded.lm_head.weight)


def test_learning_rate_schedule_spans_the_whole_run(make_model, tokenizer, prompts, make_args):
    args = make_args(
        num_stages=3,
        prompts_per_stage=4,
        per_device_train_batch_size=2,
        epochs_per_stage=2,
        lr_scheduler_type="linear",
        logging_strategy="steps",
        logging_steps=1,
    )
    trainer = RAFTTrainer(make_model(), share_of_apple, args=args, train_dataset=prompts, processing_class=tokenizer)
    trainer.train()
    assert trainer.state.global_step == 3 * 2 * 2
    rates = [record["learning_rate"] for record in trainer.state.log_history if "learning_rate" in record]
    assert rates == sorted(rates, reverse=True) and len(set(rates)) == len(rates)
    stage_records = defaultdict(list)
    for record in trainer.state.log_history:
        if "stage" in record:
            stage_records[record["stage"]].append(record)
    assert sorted(stage_records) == [0, 1, 2] and all(len(records) == 1 for records in stage_records.values())


def test_a_reward_function_returning_the_wrong_count_is_named(make_model, tokenizer, prompts, make_args):
    def broken_reward(completions, **kwargs):
        return [1.0]

    trainer = RAFTTrainer(
        make_model(), broken_reward, args=make_args(), train_dataset=prompts, processing_class=tokenizer
    )
    with pytest.raises(ValueError, match=r"'broken_reward' returned 1 values \[1.0\]; expected a list of 16"):
        trainer.train()


def test_stage_metrics_are_logged_even_when_the_trainer_logs_less_often(make_model, tokenizer, prompts, make_args):
    args = make_args(num_stages=3, logging_strategy="no")
    trainer = RAFTTrainer(make_model(), share_of_apple, args=args, train_dataset=prompts, processing_class=tokenizer)
    trainer.train()
    assert [record["stage"] for record in trainer.state.log_history if "stage" in record] == [0, 1, 2]


def test_checkpoints_and_gradient_checkpointing_work_through_the_trainer(make_model, tokenizer, prompts, make_args):
    args = make_args(num_stages=2, save_strategy="epoch", gradient_checkpointing=True)
    trainer = RAFTTrainer(make_model(), share_of_apple, args=args, train_dataset=prompts, processing_class=tokenizer)
    # Generation runs in eval mode, where checkpointing is off, so it decodes with the KV cache (one new token per
    # forward after the prompt); the fine-tuning that follows trains with checkpointing on.
    forward_lengths = []
    forward = trainer.model.forward

    def spy(*args, **kwargs):
        if not trainer.model.training:
            forward_lengths.append(kwargs["input_ids"].shape[1])
        return forward(*args, **kwargs)

    trainer.model.forward = spy
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        trainer.train()
    # TRL's unwrapping for generation reads the checkpointing switches by names transformers 5 deprecates: the user
    # is not shown those FutureWarnings (nothing they can change).
    assert not [w for w in warned if "gradient_checkpointing" in str(w.message)]
    checkpoints = sorted(p.name for p in (Path(args.output_dir)).iterdir() if p.name.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-1", "checkpoint-2"]
    assert trainer.model.is_gradient_checkpointing
    assert forward_lengths and forward_lengths.count(1) >= len(forward_lengths) // 2  # cached decoding steps


def test_model_card_names_raft_the_paper_the_rewards_the_hyperparameters_and_the_curve(
    make_model, tokenizer, prompts, make_args
):
    from huggingface_hub import ModelCard

    def length_reward(completion_ids, **kwargs):
        return [float(len(ids)) for ids in completion_ids]

    args = make_args(num_stages=2, reward_weights=[1.0, 0.5])
    trainer = RAFTTrainer(
        make_model(), [share_of_apple, length_reward], args=args, train_dataset=prompts, processing_class=tokenizer
    )
    trainer.train()
    trainer.create_model_card(model_name="apple-raft")  # what push_to_hub calls, here without the network

    card = ModelCard.load(Path(args.output_dir) / "README.md")
    assert {"raft", "reward-ranked-finetuning"} <= set(card.data.tags)
    assert card.text.lstrip().startswith("# apple-raft")
    assert (
        "**RAFT**" in card.text and "arxiv.org/abs/2304.06767" in card.text and "eprint  = {2304.06767}" in card.text
    )
    assert "`share_of_apple` (weight 1)" in card.text and "`length_reward` (weight 0.5)" in card.text
    assert "| `num_generations` | 4 |" in card.text and "| `ranking` | local |" in card.text
    assert "| `learning_rate` | 0.005 |" in card.text
    stages = [record for record in trainer.state.log_history if "stage" in record]
    for record in stages:
        assert f"| {record['stage']} | {record['reward_mean']:.4f} | {record['reward_kept_mean']:.4f} |" in card.text
    assert (Path(args.output_dir) / "reward_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_peft_adapter_is_trained_and_saved(make_model, tokenizer, prompts, make_args, tmp_path):
    args = make_args(learning_rate=1e-2, epochs_per_stage=3)
    peft_config = LoraConfig(r=8, target_modules=["c_attn"], task_type="CAUSAL_LM")
    trainer = RAFTTrainer(
        make_model(**NO_DROPOUT),
        share_of_apple,
        args=args,
        train_dataset=prompts,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()

    loaded = PeftModel.from_pretrained(make_model(**NO_DROPOUT), tmp_path / "adapter").eval()
    trained = trainer.model.eval()
    input_ids = torch.tensor([tokenizer("say something")["input_ids"]])
    base_logits = make_model(**NO_DROPOUT).eval()(input_ids).logits
    trained_logits = trained(input_ids).logits
    assert not torch.allclose(trained_logits, base_logits)  # the adapter learned something
    torch.testing.assert_close(loaded(input_ids).logits, trained_logits)


def test_candidate_model_generates_and_the_policy_learns_from_it(make_model, tokenizer, prompts, make_args):
    # The candidate model has its own tokenizer (another vocabulary order): its samples are re-tokenized.
    candidate_tokenizer = word_tokenizer(list(reversed(WORDS + PROMPT_WORDS)))
    torch.manual_seed(1)
    candidate = tiny_causal_lm(candidate_tokenizer)
    candidate_before = copy.deepcopy(candidate.state_dict())
    policy = make_model(**NO_DROPOUT)
    policy_before = copy.deepcopy(policy.state_dict())
    args = make_args(num_stages=2, learning_rate=1e-2)
    trainer = RAFTTrainer(
        policy,
        share_of_apple,
        args=args,
        train_dataset=prompts,
        processing_class=tokenizer,
        candidate_model=candidate,
        candidate_processing_class=candidate_tokenizer,
    )
    policy.generate = None  # the policy must not generate
    recorded = record_candidates(trainer)
    trainer.train()

    for candidates in recorded:
        for text, ids in zip(candidates["completion"], candidates["completion_ids"]):
            policy_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert ids in (policy_ids, policy_ids + [tokenizer.eos_token_id])  # the policy's tokens of the text
        assert all(ids in trainer.prompt_ids for ids in candidates["prompt_ids"])  # the policy's prompt tokens
    assert any(ids and ids[-1] == tokenizer.eos_token_id for c in recorded for ids in c["completion_ids"])
    for name, tensor in candidate.state_dict().items():
        torch.testing.assert_close(tensor, candidate_before[name])  # the candidate model is frozen
    assert any(not torch.equal(tensor, policy_before[name]) for name, tensor in policy.state_dict().items())


def test_prompt_for_generation_changes_what_is_generated_from_not_what_is_trained_on(
    make_model, tokenizer, prompts, make_args
):
    model = make_model(**NO_DROPOUT)
    seen = []
    generate = model.generate

    def spy(input_ids, **kwargs):
        seen.append(input_ids.clone())
        return generate(input_ids=input_ids, **kwargs)

    model.generate = spy
    trainer = RAFTTrainer(
        model,
        share_of_apple,
        args=make_args(),
        train_dataset=prompts,
        processing_class=tokenizer,
        prompt_for_generation=lambda prompt: "please " + prompt,
    )
    recorded = record_candidates(trainer)
    trainer.train()
    please = tokenizer.convert_tokens_to_ids("please")
    first_tokens = [row[row != tokenizer.pad_token_id][0].item() for batch in seen for row in batch]
    assert first_tokens and all(token == please for token in first_tokens)
    (candidates,) = recorded
    original_prompt_ids = tokenizer(list(prompts["prompt"]))["input_ids"]
    assert all(ids in original_prompt_ids and ids[0] != please for ids in candidates["prompt_ids"])
