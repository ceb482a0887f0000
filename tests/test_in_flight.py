"""The pieces of resuming: the random state a stage file carries, which run a file belongs to, which checkpoint is
complete."""

import json
import os
import random

import numpy as np
import pytest
import torch

from raft_trainer.checkpoints import last_complete_checkpoint
from raft_trainer.stages.in_flight import (
    InFlightFiles,
    identity_differences,
    random_state,
    run_identity,
    set_random_state,
)


def draws() -> list:
    return [random.random(), float(np.random.rand()), torch.rand(1).item()]


def test_the_random_state_saved_after_a_phase_is_put_back():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    draws()
    state = random_state()
    expected = draws()
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    assert draws() != expected

    set_random_state(state)
    assert draws() == expected


def test_a_file_is_used_by_its_own_run_only(tmp_path, caplog):
    settings = {"temperature": 1.0, "seed": 0, "output_dir": "a", "logging_steps": 1}
    identity = run_identity(settings, stage=2, start_step=8, prompts_fingerprint="f", num_processes=1)
    files = InFlightFiles(str(tmp_path), process_index=0)
    files.save(2, "scored", identity, {"rewards": torch.tensor([1.0, 0.0])})

    # Where it reports or saves does not matter; what it samples does.
    moved = run_identity({**settings, "output_dir": "b", "logging_steps": 5}, 2, 8, "f", 1)
    torch.testing.assert_close(files.load(2, "scored", moved)["values"]["rewards"], torch.tensor([1.0, 0.0]))
    other = run_identity({**settings, "temperature": 0.7}, 2, 8, "f", 1)
    assert files.load(2, "scored", other) is None
    assert "differs in temperature" in caplog.text
    assert identity_differences(identity, run_identity(settings, 2, 12, "g", 2)) == [
        "start_step",
        "prompts",
        "num_processes",
    ]
    assert files.load(2, "generated", identity) is None  # not there

    # A file that cannot be read back is passed over (the phase runs again), not an error at every resume.
    with open(files.path(3, "scored"), "wb") as file:
        file.write(b"not a torch file")
    assert files.load(3, "scored", identity) is None and "cannot be read back" in caplog.text
    files.discard(lambda stage: stage < 3)
    assert os.listdir(files.folder) == ["stage_003.scored.process_0.pt"]
    files.discard()
    assert os.listdir(files.folder) == []
    files.remove_folder()
    assert not os.path.exists(files.folder)


def test_one_process_discarding_its_files_never_takes_the_folder_from_another_that_writes(tmp_path, monkeypatch):
    # Process 0 discards its last file at the very moment process 1 is about to write into the folder.
    first, second = (InFlightFiles(str(tmp_path), process_index=index) for index in (0, 1))
    identity = run_identity({}, stage=0, start_step=0, prompts_fingerprint="f", num_processes=2)
    first.save(0, "generated", identity, {"rewards": torch.tensor([1.0])})
    save = torch.save

    def discarded_meanwhile(value, path):
        first.discard()
        save(value, path)

    monkeypatch.setattr(torch, "save", discarded_meanwhile)
    second.save(1, "generated", identity, {"rewards": torch.tensor([2.0])})
    monkeypatch.undo()
    assert os.listdir(first.folder) == ["stage_001.generated.process_1.pt"]
    first.remove_folder()  # not empty: stays
    assert second.load(1, "generated", identity)["values"]["rewards"].item() == 2.0


def test_resuming_passes_over_a_checkpoint_cut_short(tmp_path):
    for step, state in [(2, {"global_step": 2}), (4, {"global_step": 4}), (6, None)]:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"weights")
        if state is not None:
            (folder / "trainer_state.json").write_text(json.dumps(state))
    (tmp_path / "checkpoint-8").mkdir()
    (tmp_path / "checkpoint-8" / "trainer_state.json").write_text('{"global_st')  # killed while writing it
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")
    assert last_complete_checkpoint(str(tmp_path / "nothing")) is None


def test_resuming_from_a_checkpoint_cut_short_is_refused(make_model, tokenizer, prompts, make_args, tmp_path):
    from raft_trainer import RAFTTrainer

    from .helpers import share_of_apple

    (tmp_path / "checkpoint-3").mkdir()
    trainer = RAFTTrainer(
        make_model(), share_of_apple, args=make_args(), train_dataset=prompts, processing_class=tokenizer
    )
    with pytest.raises(ValueError, match="resume_from_checkpoint=.*checkpoint-3.* is not a complete checkpoint"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
