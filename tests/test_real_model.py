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


def test_a_grpo_users_script_with_raft_trainer_swapped_in_runs_on_the_real_model(smollm2_path, tmp_path):
    # A GRPO script as TRL's docs write it (GRPOConfig, GRPOTrainer's positional order, conversational prompts, TRL's
    # accuracy_reward, a LoRA through peft_config, evaluation each epoch, save_model, the adapter reloaded), with
    # GRPOTrainer swapped for RAFTTrainer: it trains, and what the user sees is at most one warning.
    import logging
    import warnings

    from peft import AutoPeftModelForCausalLM, LoraConfig
    from transformers import AutoTokenizer
    from trl import GRPOConfig

    data = arithmetic_dataset("sums", num_train=8, num_test=4, boxed=True)  # conversational prompts
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        learning_rate=1e-5,
        num_generations=4,
        per_device_train_batch_size=4,
        max_completion_length=24,
        eval_strategy="epoch",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)

    class Seen(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.records = []

        def emit(self, record):
            self.records.append(record)

    seen = Seen()
    for name in ("raft_trainer", "transformers", "trl", "peft", "accelerate"):
        logging.getLogger(name).addHandler(seen)
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            trainer = RAFTTrainer(
                smollm2_path, accuracy_reward, args, data["train"], data["test"], tokenizer, peft_config=lora
            )
            # A run's length is num_stages (GRPOConfig has no such field): one small stage keeps the test short.
            trainer.args.num_stages = trainer.args.num_train_epochs = 1
            trainer.args.prompts_per_stage = 4
            trainer.train()
            metrics = trainer.evaluate()
            trainer.save_model()
    finally:
        for name in ("raft_trainer", "transformers", "trl", "peft", "accelerate"):
            logging.getLogger(name).removeHandler(seen)
    shown = [f"{w.category.__name__}: {w.message}" for w in warned] + [r.getMessage() for r in seen.records]
    assert len(shown) <= 1, shown
    assert trainer.args.num_stages == 1 and trainer.state.global_step > 0
    assert 0.0 <= metrics["eval_reward"] <= 1.0
    assert sum(row["selected"] for row in read_stage(trainer.args, 0)) == 4  # best of each prompt's four
    reloaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "out")
    assert reloaded.peft_config["default"].r == 8
