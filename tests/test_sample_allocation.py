"""GVM-RAFT's sample allocation (`sample_allocation="gvm"`): the maths against the numpy reference, the gradient
norms against autograd, and a stage that spends its budget as the allocation says."""

import numpy as np
import pytest
import torch
from datasets import Dataset
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from raft_trainer import RAFTConfig, RAFTTrainer, reference
from raft_trainer.diffusion import DiffusionRAFTConfig
from raft_trainer.phases import check_phase_arguments
from raft_trainer.sequences import output_layer_gradient_norms, sft_example
from raft_trainer.stages.budget import gvm_allocation, merged_scored, prompt_statistics
from raft_trainer.stages.prompts import (
    curriculum_prompt_indices,
    settle,
    settled_from_stage_files,
    settled_prompt_weights,
)

from .helpers import NO_DROPOUT, check_two_stage_resume, read_stage


@pytest.mark.parametrize("seed", range(20))
def test_the_allocation_is_the_references(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 12))
    rates = rng.choice([0.0, 0.125, 0.5, 0.875, 1.0], size=size).tolist()
    norms = (rng.random(size) * rng.choice([0.0, 1.0], size=size, p=[0.2, 0.8])).tolist()
    budget = int(rng.integers(0, 60))
    alpha, beta = float(rng.choice([1e-3, 0.1])), float(rng.choice([1.0, 2.0, 3.0]))
    counts = gvm_allocation(rates, norms, budget, alpha, beta)
    assert counts == reference.gvm_sample_sizes(rates, norms, budget, alpha, beta).tolist()
    assert sum(counts) == budget and min(counts) >= 0
    if any(p > 0 and g > 0 for p, g in zip(rates, norms)):  # prompts without a share get nothing
        assert all(count == 0 for count, p, g in zip(counts, rates, norms) if p == 0 or g == 0)


def test_prompts_rarely_solved_or_with_small_gradients_get_fewer_samples():
    # Same gradient norm: the rarely solved prompt draws less (alpha / p grows as p falls). Same rate: the smaller
    # gradient draws less. Never solved: nothing.
    counts = gvm_allocation([0.5, 0.01, 0.5, 0.0], [1.0, 1.0, 0.1, 1.0], 100, alpha=0.1, beta=2.0)
    assert counts[0] > counts[1] and counts[0] > counts[2] and counts[3] == 0
    assert gvm_allocation([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], 7, 1e-3, 2.0) == [3, 2, 2]  # nothing measured: even


def test_prompt_statistics_and_the_merge_keep_each_prompts_candidates_together():
    accepted = torch.tensor([True, False, False, False, True, True])
    norms = torch.tensor([2.0, 9.0, 9.0, 9.0, 1.0, 3.0])
    rates, mean_norms = prompt_statistics([0, 0, 1, 1, 2, 2], 3, accepted, norms)
    assert rates == [0.5, 0.0, 1.0] and mean_norms == [2.0, 0.0, 2.0]  # rejected candidates' norms are not counted

    def scored(groups, texts, rewards, metric):
        tensors = {name: torch.tensor(rewards) for name in ("rewards", "scores")}
        tensors |= {"rewards_per_func": torch.tensor(rewards)[:, None], "kept_by_filter": torch.ones(len(rewards)) > 0}
        return {"candidates": {"group": groups, "completion": texts}, "reward_metrics": {"m": metric}, **tensors}

    first = scored([5, 5, 6, 6], list("abcd"), [1.0, 0.0, 0.0, 0.0], metric=1.0)
    second = scored([5, 6, 6, 6], list("efgh"), [1.0, 1.0, 0.0, 1.0], metric=3.0)
    merged = merged_scored(first, second)
    assert merged["candidates"] == {"group": [5, 5, 5, 6, 6, 6, 6, 6], "completion": list("abecdfgh")}
    assert merged["rewards"].tolist() == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    assert merged["rewards_per_func"][:, 0].tolist() == merged["rewards"].tolist()
    assert merged["reward_metrics"] == {"m": 2.0}  # averaged over the candidates


def test_the_gradient_norms_are_the_output_layers_gradient_norms(tokenizer, make_model):
    model = make_model(tie_word_embeddings=False)  # the output layer's own weight, not shared with the embedding
    assert model.lm_head.weight is not model.transformer.wte.weight
    prompt = tokenizer("say a word please")["input_ids"]
    completions = [tokenizer(text)["input_ids"] for text in ("apple", "banana cherry dog", "egg egg fish grape")]
    examples = [sft_example(prompt, ids) for ids in completions]
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)  # the trainer's, right-padded
    norms = output_layer_gradient_norms(model, examples, collator, batch_size=2)  # batches of 2 and 1: padding
    model.eval()
    for example, norm in zip(examples, norms, strict=True):
        input_ids = torch.tensor([example["input_ids"]])
        model.zero_grad()
        logits = model(input_ids=input_ids).logits[0, :-1]
        hidden = model.transformer(input_ids=input_ids).last_hidden_state[0, :-1]  # what the output layer reads
        targets = input_ids[0, 1:]
        completion = slice(len(prompt) - 1, None)
        nll = torch.nn.functional.cross_entropy(logits[completion], targets[completion], reduction="sum")
        nll.backward()
        assert norm == pytest.approx(model.lm_head.weight.grad.norm().item(), rel=1e-4)
        explicit = reference.output_layer_gradient_norm(
            hidden[completion].detach().numpy(),
            logits[completion].detach().numpy(),
            targets[completion].numpy(),
        )
        assert norm == pytest.approx(explicit, rel=1e-4)


def topic_a_always_b_never(completions, topic, **kwargs):
    """1 for every candidate of the prompt of topic 'a', 0 for 'b', and 1 for 'c' and 'd' candidates whose
    completion has an even number of tokens: a mix of always, never and sometimes accepted prompts."""
    return [
        1.0 if t == "a" else 0.0 if t == "b" else float(len(text.split()) % 2 == 0)
        for text, t in zip(completions, topic)
    ]


def test_a_gvm_stage_spends_its_budget_by_the_first_draws_acceptance_and_gradient_norms(
    make_model, tokenizer, prompts, make_args
):
    args = make_args(
        num_generations=6,
        reward_threshold=1.0,
        kept_per_prompt=24,  # a prompt may now have more than num_generations candidates: no cap below them
        sample_allocation="gvm",
        gvm_first_draw=2,
        gvm_alpha=0.1,
    )
    scored_count = []

    def counted(completions, **kwargs):
        scored_count.append(len(completions))
        return topic_a_always_b_never(completions, **kwargs)

    trainer = RAFTTrainer(make_model(), counted, args=args, train_dataset=prompts, processing_class=tokenizer)
    measured = []
    gradient_norms = trainer.gradient_norms

    def spy(candidates, indices):
        norms = gradient_norms(candidates, indices)
        measured.append((list(candidates["group"]), list(indices), norms))
        return norms

    trainer.gradient_norms = spy
    trainer.train()
    rows = read_stage(args, 0).to_list()
    assert len(rows) == 4 * 6  # the stage's budget, prompts x num_generations, whatever the allocation
    assert scored_count == [8, 16]  # each candidate scored once: the first draw, then the second
    ((prompt_of, indices, norms),) = measured
    stage_prompts = [row["prompt_index"] for row in rows]
    order = list(dict.fromkeys(stage_prompts))  # the draw's prompts, in order: each prompt's candidates together
    assert stage_prompts == sorted(stage_prompts, key=order.index)
    # The first draw: the first 2 candidates of each prompt, its accepted ones measured.
    topics = [prompts[index]["topic"] for index in order]
    groups = [[row for row in rows if row["prompt_index"] == index] for index in order]
    accepted = torch.tensor([row["reward"] >= 1.0 for group in groups for row in group[:2]])
    assert prompt_of == [position for position in range(4) for _ in range(2)]
    assert indices == accepted.nonzero().view(-1).tolist()
    all_norms = torch.zeros(8)
    all_norms[indices] = torch.tensor(norms)
    rates = [float(accepted[2 * i : 2 * i + 2].float().mean()) for i in range(4)]
    mean_norms = [
        float(all_norms[2 * i : 2 * i + 2][accepted[2 * i : 2 * i + 2]].mean()) if rates[i] else 0.0 for i in range(4)
    ]
    expected = reference.gvm_sample_sizes(rates, mean_norms, 4 * (6 - 2), alpha=0.1, beta=2.0)
    per_prompt = [stage_prompts.count(index) for index in order]
    assert per_prompt == (2 + expected).tolist()
    assert per_prompt[topics.index("b")] == 2  # never accepted: no second draw
    assert per_prompt[topics.index("a")] > 2  # always accepted, with a gradient: more
    # The pool is selected as a whole: every accepted distinct completion is kept.
    kept = {(row["prompt_index"], row["completion"]) for row in rows if row["selected"]}
    assert kept == {(row["prompt_index"], row["completion"]) for row in rows if row["reward"] >= 1.0}


@pytest.mark.parametrize(
    "overrides, named",
    [
        (dict(sample_allocation="even"), "sample_allocation must be"),
        (dict(sample_allocation="gvm"), "reward_threshold"),
        (dict(sample_allocation="gvm", reward_threshold=1.0, ranking="global"), "ranking='local'"),
        (dict(sample_allocation="gvm", reward_threshold=1.0, gvm_first_draw=4), "gvm_first_draw"),
        (dict(sample_allocation="gvm", reward_threshold=1.0, gvm_alpha=0.0), "gvm_alpha"),
        (dict(sample_allocation="gvm", reward_threshold=1.0, gvm_beta=0.5), "gvm_beta"),
        (dict(sample_allocation="gvm", reward_threshold=1.0, candidate_source="both"), "candidate_source='model'"),
    ],
)
def test_bad_allocation_settings_name_the_fix(make_args, overrides, named):
    with pytest.raises(ValueError, match=named):
        make_args(**overrides)


def test_gvm_defaults_its_first_draw_to_half_and_is_refused_where_it_cannot_run(make_args, tmp_path):
    assert make_args(sample_allocation="gvm", reward_threshold=1.0).gvm_first_draw == 2  # num_generations=4
    with pytest.raises(ValueError, match="generate phase does not score"):
        check_phase_arguments(make_args(sample_allocation="gvm", reward_threshold=1.0))
    with pytest.raises(ValueError, match="diffusion trainer does not measure"):
        DiffusionRAFTConfig(output_dir=str(tmp_path), sample_allocation="gvm", reward_threshold=1.0)
    assert RAFTConfig(output_dir=str(tmp_path)).sample_allocation == "uniform"  # off by default


# ---------------------------------------------------------------------------------------------------------------------
# The curriculum: prompts settled in their last draw (all right or all wrong) are drawn less
# ---------------------------------------------------------------------------------------------------------------------


def test_settled_prompts_are_drawn_by_their_weight():
    settled = {}
    settle(settled, [0, 0, 1, 1, 2, 2], [1.0, 1.0, 0.0, float("nan"), 1.0, 0.0], threshold=1.0)
    assert settled == {0: True, 1: True, 2: False}  # all right, all wrong (no reward is wrong), mixed
    settle(settled, [0, 0], [1.0, 0.0], threshold=1.0)
    assert settled[0] is False  # the last draw counts
    weights = settled_prompt_weights(settled, 5, 0.1)
    assert weights.tolist() == [1.0, 0.1, 1.0, 1.0, 1.0]  # not drawn yet: 1
    draws = [curriculum_prompt_indices(stage, 2, weights, seed=0) for stage in range(2000)]
    assert all(len(set(draw)) == 2 for draw in draws)  # no repeats within a stage
    assert draws[7] == curriculum_prompt_indices(7, 2, weights, seed=0)  # a function of the stage and the weights
    counts = np.bincount(np.concatenate(draws), minlength=5)
    assert counts[1] < 0.2 * counts[[0, 2, 3, 4]].min()


def test_a_curriculum_run_draws_settled_prompts_less_and_a_resumed_run_knows_them(make_model, tokenizer, make_args):
    # Topic 'a' is always right and 'b' always wrong (settled once drawn); 'c' and 'd' are mixed, mostly.
    prompts = Dataset.from_dict({"prompt": ["say something"] * 8, "topic": list("aabbccdd")})
    args = make_args(num_stages=6, prompts_per_stage=2, reward_threshold=1.0, settled_prompt_weight=0.01)
    trainer = RAFTTrainer(
        make_model(), topic_a_always_b_never, args=args, train_dataset=prompts, processing_class=tokenizer
    )
    trainer.train()
    drawn = [{row["prompt_index"] for row in read_stage(args, stage).to_list()} for stage in range(6)]
    redrawn_settled = 0
    for stage in range(1, 6):
        known = settled_from_stage_files(args.output_dir, stage, 1.0)  # what the run knew when it drew the stage
        redrawn_settled += sum(known.get(row, False) for row in drawn[stage])
    assert redrawn_settled <= 1  # weight 0.01 against 1: a settled prompt is hardly ever drawn again (5 at weight 1)
    # The stage files say what the run knew: a resumed run rebuilds it from them.
    assert settled_from_stage_files(args.output_dir, 6, 1.0) == trainer._settled
    drawn_rows = set().union(*drawn)
    assert all(trainer._settled[row] for row in drawn_rows if prompts[row]["topic"] in ("a", "b"))


def test_a_curriculum_run_resumes_to_the_uninterrupted_run(make_model, tokenizer, make_args, tmp_path):
    prompts = Dataset.from_dict(
        {"prompt": ["say something", "tell me", "say a word", "tell me a word"] * 2, "topic": list("abcdabcd")}
    )

    def make_trainer(reward, output_dir):
        args = make_args(
            output_dir=output_dir,
            num_stages=2,
            prompts_per_stage=2,
            reward_threshold=1.0,
            settled_prompt_weight=0.01,
            save_strategy="steps",
            save_steps=1,
        )
        model = make_model(**NO_DROPOUT)
        return RAFTTrainer(model, reward, args=args, train_dataset=prompts, processing_class=tokenizer)

    check_two_stage_resume(make_trainer, topic_a_always_b_never, tmp_path)


def test_bad_curriculum_settings_name_the_fix(make_args, make_model, tokenizer, prompts):
    with pytest.raises(ValueError, match="settled_prompt_weight must be in"):
        make_args(settled_prompt_weight=0.5)  # no reward_threshold
    with pytest.raises(ValueError, match="settled_prompt_weight must be in"):
        make_args(settled_prompt_weight=0.0, reward_threshold=1.0)
    args = make_args(settled_prompt_weight=0.5, reward_threshold=1.0, prompts_per_stage=5)
    with pytest.raises(ValueError, match="lower prompts_per_stage"):
        RAFTTrainer(make_model(), topic_a_always_b_never, args=args, train_dataset=prompts, processing_class=tokenizer)
    with pytest.raises(ValueError, match="the phases draw each stage's prompts on their own"):
        check_phase_arguments(make_args(settled_prompt_weight=0.5, reward_threshold=1.0))
