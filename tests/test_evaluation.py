import pytest
from datasets import Dataset

from raft_trainer import RAFTTrainer
from raft_trainer.callbacks import StageTableCallback
from raft_trainer.evaluation import evaluate_policy

from .conftest import share_of_apple


def test_evaluation_scores_one_sampled_completion_per_held_out_prompt(make_model, tokenizer, prompts, make_args):
    seen = {}

    def reward(prompts, completions, completion_ids, **kwargs):
        seen.update(prompts=prompts, completions=completions, completion_ids=completion_ids)
        return share_of_apple(completions)

    trainer = RAFTTrainer(make_model(), reward, args=make_args(), train_dataset=prompts, processing_class=tokenizer)
    held_out = Dataset.from_dict({"prompt": ["say a word", "tell me something please"]})
    chosen = Dataset.from_dict({"prompt": list(held_out["prompt"]), "completion": ["apple dog", "kite"]})
    results = evaluate_policy(trainer, held_out, chosen, true_score=lambda prompt, text: len(text.split()))

    assert seen["prompts"] == list(held_out["prompt"])
    assert results["reward"] == pytest.approx(sum(share_of_apple(seen["completions"])) / 2)
    assert results["true_score"] == pytest.approx(sum(len(text.split()) for text in seen["completions"]) / 2)
    assert results["length"] == pytest.approx(sum(map(len, seen["completion_ids"])) / 2)
    assert results["perplexity"] > 1
    assert evaluate_policy(trainer, held_out, chosen, seed=0) == evaluate_policy(trainer, held_out, chosen, seed=0)


def test_stage_table_prints_a_line_per_stage(capsys):
    class State:
        is_world_process_zero = True

    table = StageTableCallback()
    table.on_log(None, State(), None, logs={"loss": 1.0})  # not a stage record: nothing printed
    table.on_log(None, State(), None, logs={"stage": 0, "reward_mean": 0.5, "reward_kept_mean": 0.9, "loss": 2.0})
    table.on_log(None, State(), None, logs={"stage": 1, "reward_mean": 0.7, "reward_kept_mean": 1.1, "loss": 1.5})
    assert capsys.readouterr().out.splitlines() == [
        "stage   reward     kept    loss",
        "    0    0.500    0.900   2.000",
        "    1    0.700    1.100   1.500",
    ]
