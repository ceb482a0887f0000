"""RAFT on the real SmolLM2-135M-Instruct, offline: TRL's own `accuracy_reward` (math_verify) through RAFTTrainer on
the arithmetic task, for one small stage, with the held-out reward tracked by `eval_dataset`."""

from trl.rewards import accuracy_reward

from raft_trainer import RAFTConfig, RAFTTrainer
from raft_trainer.tasks.arithmetic import arithmetic_dataset

from .helpers import by_prompt, read_stage


def test_trl_accuracy_reward_through_raft_trainer_on_the_real_model(smollm2_path, tmp_path):
    data = arithmetic_dataset("sums", num_train=8, num_test=4, boxed=True)
    args = RAFTConfig(
        output_dir=str(tmp_path / "out"),
        num_stages=1,
        prompts_per_stage=4,
        num_generations=4,
        max_completion_length=24,
        epochs_per_stage=1,
        per_device_train_batch_size=4,
        learning_rate=1e-5,
        eval_strategy="epoch",
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = RAFTTrainer(
        smollm2_path, reward_funcs=accuracy_reward, args=args, train_dataset=data["train"], eval_dataset=data["test"]
    )
    trainer.train()
    rows = read_stage(args, 0)
    assert len(rows) == 16
    for row in rows:
        # math_verify's verdict, recomputed from the stage file: 1 when the boxed number is the answer.
        solution = data["train"][row["prompt_index"]]["solution"]
        expected = accuracy_reward([[{"role": "assistant", "content": row["completion"]}]], [solution])[0]
        assert row["reward"] == expected
    for group in by_prompt(rows, 4):  # the best of each prompt's four is kept
        kept = [row for row in group if row["selected"]]
        assert len(kept) == 1 and kept[0]["reward"] == max(row["reward"] for row in group)
    evaluation = next(r for r in trainer.state.log_history if "eval_reward" in r)
    assert 0.0 <= evaluation["eval_reward"] <= 1.0 and evaluation["eval_completion_length"] > 0
