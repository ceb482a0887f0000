"""What several test files share: the tiny vocabulary, settings under which a tiny model learns, and small tools.
(Fixtures live in conftest.py; pytest discourages importing from it.)"""

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset, load_dataset
from transformers import TrainerCallback

from raft_trainer.files import stage_file_path

WORDS = "apple banana cherry dog egg fish grape house ice juice kite lemon".split()
PROMPT_WORDS = ["say", "something", "tell", "me", "a", "word", "please", "user", "Assistant", ":"]
NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}Assistant : {% endif %}"
)
# Settings under which a random tiny model learns `share_of_apple` within a few stages.
LEARNING_PROMPTS = ["say something", "tell me a word", "say a word please", "tell me"] * 4
LEARNING_RUN = dict(
    num_stages=4,
    prompts_per_stage=16,
    num_generations=8,
    max_completion_length=16,
    epochs_per_stage=4,
    per_device_train_batch_size=8,
    learning_rate=1e-2,
)


def config_maker(tmp_path, config_class, **defaults):
    """A factory of quiet one-stage test configurations of `config_class` writing to `tmp_path/out`: `defaults`,
    then the keywords each call gives, override the common settings."""
    common = dict(
        output_dir=str(tmp_path / "out"),
        num_stages=1,
        prompts_per_stage=4,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )

    def make(**overrides):
        return config_class(**{**common, **defaults, **overrides})

    return make


def share_of_apple(completions, **kwargs):
    """Share of the word 'apple' among a completion's words: a reward a tiny model can learn in seconds."""
    return [text.split().count("apple") / max(1, len(text.split())) for text in completions]


def read_stage(args, stage: int) -> Dataset:
    return load_dataset("json", data_files=stage_file_path(args.output_dir, stage), split="train")


def completion_token_log_probs(model, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
    """log p of each completion token under `model`, one unpadded sequence at a time: the reference's input."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
    targets = ids[0, 1:]
    token_log_probs = log_probs[torch.arange(len(targets)), targets]
    return token_log_probs[len(prompt_ids) - 1 :].tolist()


def record_candidates(trainer, step: str = "generate") -> list[dict]:
    """Spy on the trainer's generation (or, with `step="scored_candidates"`, on the candidates once scored, with
    the columns scoring adds): keep a copy of each stage's candidates."""
    recorded = []
    method = getattr(trainer, step)

    def spy(*args, **kwargs):
        result = method(*args, **kwargs)
        recorded.append(copy.deepcopy(result["candidates"] if step == "scored_candidates" else result))
        return result

    setattr(trainer, step, spy)
    return recorded


def record_advantages(trainer) -> list[float]:
    """Spy on the trainer's loss: the advantages of every sequence it trains on, in order."""
    advantages = []
    compute_loss = trainer.compute_loss

    def spy(model, inputs, *rest, **kwargs):
        advantages.extend(inputs["advantages"].tolist())
        return compute_loss(model, inputs, *rest, **kwargs)

    trainer.compute_loss = spy
    return advantages


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(relative_path: str):
    spec = importlib.util.spec_from_file_location(Path(relative_path).stem, EXAMPLES / relative_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def by_prompt(rows: Dataset, num_generations: int) -> list[list[dict]]:
    """The stage file's rows, grouped into the K candidates of each drawn prompt (they are written prompt-major)."""
    rows = rows.to_list()
    return [rows[i : i + num_generations] for i in range(0, len(rows), num_generations)]


class Crash(Exception):
    """A crash a resume test plants (in a reward function, or after a step)."""


class CrashAtStep(TrainerCallback):
    """Raises `Crash` once the Trainer has finished optimizer step `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Crash(f"planted crash after step {self.step}")


class PlantedCrash(Exception):
    """The failure `crashing_at_second_call` plants, for resume tests."""


def crashing_at_second_call(reward):
    """`reward` that raises `PlantedCrash` on its second call (the second stage's scoring), under the same name."""
    calls = []

    def crashing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise PlantedCrash("planted crash at stage 1")
        return reward(*args, **kwargs)

    crashing.__name__ = reward.__name__
    return crashing


def stage_rows(output_dir: str, stage: int = 0) -> list[dict]:
    """The rows of stage `stage`'s file in `output_dir`, as dicts."""
    with open(stage_file_path(output_dir, stage)) as file:
        return [json.loads(line) for line in file]


def check_two_stage_resume(make_trainer, reward, tmp_path) -> None:
    """The resume check of a two-stage run with a checkpoint each stage: `make_trainer(reward, output_dir)` trained
    to the end is the reference; a run whose reward crashes while scoring stage 1, resumed, must not generate stage 1
    again (its candidates come back from the in-flight file), must leave stage 0's file as it was, and must end with
    the reference's stage files and trained weights."""
    reference = make_trainer(reward, str(tmp_path / "reference"))
    reference.train()
    output_dir = str(tmp_path / "crashed")
    with pytest.raises(PlantedCrash):
        make_trainer(crashing_at_second_call(reward), output_dir).train()
    with open(stage_file_path(output_dir, 0), "rb") as file:
        stage_0 = file.read()
    resumed = make_trainer(reward, output_dir)
    generated = []
    generate = resumed.generate
    resumed.generate = lambda *args: generated.append(args) or generate(*args)
    resumed.train(resume_from_checkpoint=True)

    assert generated == []
    with open(stage_file_path(output_dir, 0), "rb") as file:
        assert file.read() == stage_0
    for stage in range(2):
        assert stage_rows(output_dir, stage) == stage_rows(reference.args.output_dir, stage)
    for (name, expected), actual in zip(reference.model.named_parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(actual, expected, msg=name)
