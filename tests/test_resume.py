"""A crashed run resumed from its last checkpoint ends exactly as the run that never crashed."""

import os

import pytest
import torch

from raft_trainer import RAFTTrainer
from raft_trainer.files import stage_file_path

from .helpers import NO_DROPOUT, Crash, CrashAtStep, share_of_apple

NUM_STAGES = 3
STEPS_PER_STAGE = 4  # epochs_per_stage=2 x (4 prompts / batch 2)


class CountingReward:
    """share_of_apple that counts the stages it scored and can be told to crash at one."""

    __name__ = "share_of_apple"

    def __init__(self, crash_at_call: int | None = None):
        self.calls = 0
        self.crash_at_call = crash_at_call

    def __call__(self, **kwargs):
        self.calls += 1
        if self.calls == self.crash_at_call:
            raise Crash("planted crash in the reward function")
        return share_of_apple(**kwargs)


def make_trainer(make_model, tokenizer, prompts, make_args, output_dir, reward, callbacks=None):
    args = make_args(
        output_dir=str(output_dir),
        num_stages=NUM_STAGES,
        epochs_per_stage=2,
        per_device_train_batch_size=2,
        save_strategy="steps",
        save_steps=2,  # a checkpoint in the middle of every stage and one at its end
        logging_strategy="steps",
        logging_steps=1,
        lr_scheduler_type="linear",
    )
    model = make_model(seed=0, **NO_DROPOUT)
    return RAFTTrainer(
        model, reward, args=args, train_dataset=prompts, processing_class=tokenizer, callbacks=callbacks
    )


def stage_files(output_dir) -> list[bytes]:
    names = sorted(os.listdir(os.path.join(output_dir, "stages")))
    assert names == [f"stage_{stage:03d}.jsonl" for stage in range(NUM_STAGES)]
    return [open(stage_file_path(str(output_dir), stage), "rb").read() for stage in range(NUM_STAGES)]


def learning_rates(trainer) -> dict[int, float]:
    return {
        record["step"]: record["learning_rate"] for record in trainer.state.log_history if "learning_rate" in record
    }


@pytest.fixture
def uninterrupted(make_model, tokenizer, prompts, make_args, tmp_path):
    trainer = make_trainer(make_model, tokenizer, prompts, make_args, tmp_path / "reference", CountingReward())
    trainer.train()
    return trainer


@pytest.mark.parametrize(
    ("crash", "last_checkpoint_step"),
    [
        # the reward function fails at stage 2: the run resumes at the boundary after stage 1
        ({"crash_at_call": 3}, 2 * STEPS_PER_STAGE),
        # the process dies after step 7, inside stage 1: the run resumes at step 6 on stage 1's saved kept set
        ({"crash_after_step": 7}, 6),
    ],
)
def test_resumed_run_matches_the_uninterrupted_one(
    crash, last_checkpoint_step, uninterrupted, make_model, tokenizer, prompts, make_args, tmp_path
):
    output_dir = tmp_path / "crashed"
    reward = CountingReward(crash.get("crash_at_call"))
    callbacks = [CrashAtStep(crash["crash_after_step"])] if "crash_after_step" in crash else None
    with pytest.raises(Crash):
        make_trainer(make_model, tokenizer, prompts, make_args, output_dir, reward, callbacks).train()
    checkpoints = [int(name.split("-")[1]) for name in os.listdir(output_dir) if name.startswith("checkpoint-")]
    assert max(checkpoints) == last_checkpoint_step
    finished = {name: (output_dir / "stages" / name).read_bytes() for name in os.listdir(output_dir / "stages")}

    resumed_reward = CountingReward()
    resumed = make_trainer(make_model, tokenizer, prompts, make_args, output_dir, resumed_reward)
    resumed.train(resume_from_checkpoint=True)

    # Finished stages are left as they were, the stage in flight is not generated again, none is skipped.
    for name, content in finished.items():
        assert (output_dir / "stages" / name).read_bytes() == content
    assert resumed_reward.calls == 1  # stage 2 only
    assert resumed.state.global_step == NUM_STAGES * STEPS_PER_STAGE
    # Same samples, same schedule, same weights as the run that never crashed.
    assert stage_files(output_dir) == stage_files(uninterrupted.args.output_dir)
    reference_rates = learning_rates(uninterrupted)
    resumed_rates = learning_rates(resumed)
    assert resumed_rates and all(rate == reference_rates[step] for step, rate in resumed_rates.items())
    for (name, reference), parameter in zip(
        uninterrupted.model.named_parameters(), resumed.model.parameters(), strict=True
    ):
        torch.testing.assert_close(parameter, reference, msg=name)


def test_mid_stage_checkpoint_holds_the_kept_set(make_model, tokenizer, prompts, make_args, tmp_path):
    trainer = make_trainer(make_model, tokenizer, prompts, make_args, tmp_path / "out", CountingReward())
    trainer.train()
    mid_stage = torch.load(tmp_path / "out" / "checkpoint-6" / "raft_stage_0.pt", weights_only=True)
    assert mid_stage["stage"] == 1 and len(mid_stage["examples"]) == 4
    # Logged by steps, the stage's record went out at its first step: the checkpoint holds no metrics to log again.
    assert mid_stage["metrics"] == {}
    assert not (tmp_path / "out" / "checkpoint-8" / "raft_stage_0.pt").exists()  # a stage boundary needs none
