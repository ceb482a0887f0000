import pytest
from datasets import Dataset

from raft_trainer import RAFTConfig, RAFTTrainer
from raft_trainer.evaluation import evaluate_policy
from raft_trainer.reporting.stage_table import StageTableCallback

from .helpers import share_of_apple


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


def test_stage_table_prints_one_aligned_line_per_stage_with_fixed_columns(tmp_path, capsys):
    class State:
        is_world_process_zero = True

    args = RAFTConfig(output_dir=str(tmp_path), reward_threshold=1.0, eval_strategy="epoch", report_to="none")
    table = StageTableCallback()
    table.on_log(args, State(), None, logs={"loss": 1.0})  # not a stage record: nothing printed
    table.on_log(args, State(), None, logs={"stage": 0, "reward_mean": 0.5, "reward_kept_mean": 1.0, "loss": 2.0})
    assert capsys.readouterr().out.splitlines() == [
        "stage   reward     kept n_kept   pass  length  dist-2     loss    eval"
    ]  # the stage's line waits for its held-out reward
    table.on_log(args, State(), None, logs={"eval_reward": 0.25})
    table.on_log(args, State(), None, logs={"stage": 1, "reward_mean": 0.7, "num_kept": 12, "pass_rate": 0.5})
    table.on_train_end(args, State(), None)  # the last stage had no evaluation: printed at the end, with blanks
    assert capsys.readouterr().out.splitlines() == [
        "    0    0.500    1.000                                 2.0000   0.250",
        "    1    0.700              12  0.500                                 ",
    ]
