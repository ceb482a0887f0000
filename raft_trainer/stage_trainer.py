"""The RAFT stage cycle, written once for language and diffusion models.

    prompts -> generate K candidates -> score -> rank -> stage file -> fine-tune on the kept set -> next stage

`StageTrainer` is a `transformers.Trainer` whose every epoch is one stage: at the start of epoch t its train
dataloader runs `run_stage(t)` (the first four arrows) and then serves the kept set, so the Trainer does the
fine-tuning with its own optimizer, learning-rate schedule (over the whole run), accumulation, precision, logging
and checkpoints. A checkpoint taken inside a stage also holds that stage's kept set, so a resumed run finishes the
stage on the same samples instead of generating it again. A subclass says how to generate candidates and how to turn
the kept ones into training examples.
"""

import itertools
import json
import math
import os
from collections.abc import Callable, Iterator

import numpy as np
import torch
from accelerate.utils import gather_object
from accelerate.utils.memory import clear_device_cache
from datasets import Dataset
from torch.utils.data import DataLoader, IterableDataset
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from . import ranking
from .callbacks import StageTableCallback
from .files import atomic_path
from .memory import PhaseMemory, move_models, visiting
from .model_card import write_model_card
from .rewards import RewardFunction, reward_function_name
from .sample_table import report_sample_table
from .stage_config import StageConfig

Candidates = dict[str, list]  # per-candidate columns; `group` says which of the stage's prompts each belongs to


def stage_prompt_indices(stage: int, count: int, dataset_size: int, seed: int) -> list[int]:
    """The dataset rows stage `stage` draws: positions [stage * count, (stage + 1) * count) of an endless stream that
    walks the dataset in a fresh random order on every pass. A pure function of the stage, so a resumed run draws
    exactly the prompts the interrupted one would have."""
    orders = {}  # one shuffled order per pass over the dataset that the stage touches
    indices = []
    for position in range(stage * count, (stage + 1) * count):
        dataset_pass, offset = divmod(position, dataset_size)
        if dataset_pass not in orders:
            orders[dataset_pass] = np.random.default_rng([seed, dataset_pass]).permutation(dataset_size)
        indices.append(int(orders[dataset_pass][offset]))
    return indices


def each_prompt_repeated(num_prompts: int, per_prompt: int) -> list[int]:
    """The `group` column of `per_prompt` candidates for each of `num_prompts` prompts, prompt-major."""
    return [prompt for prompt in range(num_prompts) for _ in range(per_prompt)]


def contiguous_share(items, process_index: int, num_processes: int):
    """Process `process_index`'s contiguous share of `items`; the shares of all processes, in order, make up
    `items`, and differ in size by at most one."""
    size, extra = divmod(len(items), num_processes)
    start = process_index * size + min(process_index, extra)
    return items[start : start + size + (process_index < extra)]


def stage_file_path(output_dir: str, stage: int) -> str:
    return os.path.join(output_dir, "stages", f"stage_{stage:03d}.jsonl")


def write_stage_file(path: str, columns: dict[str, list]) -> None:
    """Write one JSON line per candidate (loadable with `datasets.load_dataset("json", data_files=path)`),
    atomically: readers never see a half-written stage."""
    with atomic_path(path) as partial, open(partial, "w", encoding="utf-8") as file:
        for row in zip(*columns.values()):
            file.write(json.dumps(dict(zip(columns, row)), ensure_ascii=False) + "\n")


def validate_prompt_dataset(dataset) -> None:
    """Reject a dataset RAFT cannot draw prompts from, before any model is loaded."""
    if not isinstance(dataset, Dataset):
        raise ValueError(
            f"train_dataset must be a datasets.Dataset with a 'prompt' column (got {type(dataset).__name__}); "
            "build one with datasets.Dataset.from_dict({'prompt': [...]})."
        )
    if "prompt" not in dataset.column_names:
        raise ValueError(
            f"train_dataset has no 'prompt' column (columns found: {dataset.column_names}); "
            "rename the prompt column with dataset.rename_column(old, 'prompt')."
        )
    if len(dataset) == 0:
        raise ValueError("train_dataset is empty: RAFT needs prompts to generate from.")
    first_is_text = isinstance(dataset[0]["prompt"], str)
    for index, prompt in enumerate(dataset["prompt"]):
        is_chat = (
            isinstance(prompt, list)
            and bool(prompt)
            and all(isinstance(message, dict) and {"role", "content"} <= set(message) for message in prompt)
        )
        if not (isinstance(prompt, str) or is_chat) or isinstance(prompt, str) != first_is_text:
            raise ValueError(
                f"train_dataset['prompt'][{index}] is {prompt!r:.80}: every prompt must be text, or every prompt a "
                "list of chat messages ({'role': ..., 'content': ...})."
            )


def reward_weight_tensor(reward_weights: list[float] | None, num_functions: int) -> torch.Tensor:
    """The weight of each reward function (all 1 when `reward_weights` is None), checked against their number."""
    if reward_weights is not None and len(reward_weights) != num_functions:
        raise ValueError(
            f"reward_weights has {len(reward_weights)} entries for {num_functions} reward functions: "
            "give one weight per reward function."
        )
    return torch.tensor(reward_weights or [1.0] * num_functions, dtype=torch.float64)


def score_candidates(
    reward_funcs: list[RewardFunction], weights: torch.Tensor, kwargs: dict, device, offload: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each candidate's reward [N] (the weighted sum over reward functions) and the per-function rewards [N, F];
    every function is called with `kwargs` (TRL's keywords, one list entry per candidate).

    As in TRL, a function returning None/NaN for a candidate leaves it out of that candidate's sum; a candidate no
    function rewards gets NaN (no reward). With `offload`, a reward model visits `device` only while it scores.
    """
    num_candidates = len(kwargs["prompts"])
    rewards_per_func = torch.full((num_candidates, len(reward_funcs)), torch.nan, dtype=torch.float64)
    for column, function in enumerate(reward_funcs):
        with visiting(function, device, offload):
            values = list(function(**kwargs))
        if len(values) != num_candidates or not all(_is_number_or_none(v) for v in values):
            raise ValueError(
                f"reward function {reward_function_name(function)!r} returned {_describe(values)}; expected a list "
                f"of {num_candidates} floats (one per candidate, None for no reward)."
            )
        rewards_per_func[:, column] = torch.tensor(
            [torch.nan if v is None else float(v) for v in values], dtype=torch.float64
        )
    rewards = (rewards_per_func * weights).nansum(dim=1)
    rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
    return rewards, rewards_per_func


class StageBatches(IterableDataset):
    """What the Trainer's train dataloader iterates: each pass runs the stage the Trainer is in (or takes it back from
    the checkpoint a run resumed from) and yields that stage's training batches.

    The stage is read off the Trainer's global step, so a resumed run picks up the stage it stopped in; and since
    this is an iterable dataset served by a plain `DataLoader`, the Trainer's own fast-forward past the batches a
    resumed stage already trained on (accelerate's `skip_first_batches`) works unchanged.
    """

    def __init__(self, trainer: "StageTrainer"):
        self.trainer = trainer

    def __len__(self) -> int:
        return self.trainer.batches_per_stage()

    def __iter__(self) -> Iterator[dict]:
        stage = self.trainer.current_stage()
        examples = self.trainer.stage_examples(stage)
        return itertools.islice(self.trainer.stage_batches(examples, stage), len(self))


class StageTrainer(Trainer):
    """A `transformers.Trainer` whose every epoch is one RAFT stage (see the module docstring).

    Subclasses implement `generate`, `reward_inputs`, `stage_file_columns`, `training_examples` and
    `batches_per_stage`, and may override `ranking_scores`, `stage_metrics`, `replace_candidate` and the model-card
    hooks (`card_training`, `card_library`, `card_usage`, `base_model_name`).
    """

    sample_image_column: str | None = None  # the stage-file column of image paths (relative to `stages/`), if any
    card_training = "on them with the SFT loss"  # how the model card says what the fine-tuning does
    card_library = "transformers"

    def __init__(
        self,
        model,
        reward_funcs: list[RewardFunction],
        args: StageConfig,
        train_dataset: Dataset,
        sample_filter: Callable | None = None,
        callbacks: list | None = None,
        **trainer_kwargs,
    ):
        self.reward_weights = reward_weight_tensor(args.reward_weights, len(reward_funcs))
        if sample_filter is not None and not callable(sample_filter):
            raise ValueError(f"sample_filter must be a callable or None (got {type(sample_filter).__name__}).")
        self.reward_funcs = reward_funcs
        self.reward_names = [reward_function_name(function) for function in reward_funcs]
        self.sample_filter = sample_filter
        self._stage_metrics: dict[str, float] = {}
        self._stage_samples: dict[str, list] = {}  # the kept rows of the stage file, for `log_completions`
        self._stage_in_flight: dict | None = None  # the running stage's kept set, saved with mid-stage checkpoints
        self._stage_to_resume: dict | None = None  # the same, read back from the checkpoint a run resumes from
        callbacks = list(callbacks or [])
        if not any(isinstance(callback, StageTableCallback) for callback in callbacks):
            callbacks.insert(0, StageTableCallback())
        super().__init__(model=model, args=args, train_dataset=train_dataset, callbacks=callbacks, **trainer_kwargs)
        if args.prompts_drawn_per_stage < self.accelerator.num_processes:
            raise ValueError(
                f"prompts_per_stage={args.prompts_per_stage} draws {args.prompts_drawn_per_stage} prompts a stage, "
                f"fewer than the {self.accelerator.num_processes} processes: give every process at least one."
            )
        self.phase_memory = PhaseMemory(self.accelerator.device)
        if not args.offload_inactive_models:
            move_models(reward_funcs, self.accelerator.device)

    # ----------------------------------------------------------------------------------------------------------------
    # The stage cycle
    # ----------------------------------------------------------------------------------------------------------------

    def run_stage(self, stage: int) -> list[dict]:
        """Generate, score and rank one stage's candidates, write its stage file, return the kept training examples.

        With several processes each generates and scores its own share of the stage's prompts (all the candidates
        of a prompt on one process); the pool is then gathered so that every process ranks the whole of it alike.
        """
        args = self.args
        stage_indices = stage_prompt_indices(stage, args.prompts_drawn_per_stage, len(self.train_dataset), args.seed)
        positions = self.process_share(range(len(stage_indices)))  # this process's places in the stage's draw
        prompt_indices = [stage_indices[position] for position in positions]
        rows = self.train_dataset.select(prompt_indices).to_dict()  # read once: the prompts and the other columns
        prompts = rows.pop("prompt")
        memory = {}
        with self.phase_memory.phase("generate", memory):
            candidates = self.generate(prompt_indices, prompts)
        clear_device_cache()  # generation's caches are not needed any more
        prompt_of = candidates["group"]
        # A group is one draw of a prompt: the place in the stage's draw, unique across processes even when the
        # stage draws a prompt twice.
        candidates["group"] = [positions[i] for i in prompt_of]
        candidates["prompt_index"] = [prompt_indices[i] for i in prompt_of]
        candidates["prompt"] = [prompts[i] for i in prompt_of]

        columns = {name: [values[i] for i in prompt_of] for name, values in rows.items()}
        kept_by_filter = self.apply_sample_filter(candidates, columns)
        with self.phase_memory.phase("score", memory):
            rewards, rewards_per_func = self.score(candidates, columns)
            rewards[~kept_by_filter] = torch.nan
            scores = self.ranking_scores(candidates, rewards)

        candidates = {name: gather_object(values) for name, values in candidates.items()}
        rewards, rewards_per_func, kept_by_filter, scores = (
            torch.cat(gather_object([tensor])) for tensor in (rewards, rewards_per_func, kept_by_filter, scores)
        )
        kept = ranking.select(scores, args.ranking, torch.tensor(candidates["group"]), args.prompts_per_stage)
        if not kept.any():
            raise RuntimeError(
                f"stage {stage} kept no candidate: every candidate was filtered out or got no reward (None/NaN) "
                f"from {self.reward_names}."
            )

        if self.is_world_process_zero():
            rows = self.stage_rows(stage, candidates, rewards, rewards_per_func, kept_by_filter, kept)
            write_stage_file(stage_file_path(self.args.output_dir, stage), rows)
            self._stage_samples = {
                name: list(itertools.compress(column, rows["selected"])) for name, column in rows.items()
            }
        if self._stage_metrics:  # the previous stage's metrics found no Trainer log to join: log them alone
            self.log({})
        self._stage_metrics = {
            "stage": stage,
            **self.reward_metrics(candidates, rewards, rewards_per_func, kept),
            **self.stage_metrics(candidates, kept),
            **memory,
        }
        examples = self.training_examples(candidates, kept.nonzero().view(-1).tolist())
        clear_device_cache()
        self.phase_memory.start()  # the training phase's peak joins the stage's log record
        return examples

    def process_share(self, items: list) -> list:
        return contiguous_share(items, self.accelerator.process_index, self.accelerator.num_processes)

    def stage_examples(self, stage: int) -> list[dict]:
        """The training examples of `stage`: taken back from the checkpoint if the run resumed inside this stage,
        else made by running it."""
        saved, self._stage_to_resume = self._stage_to_resume, None
        if saved is not None and saved["stage"] == stage:
            examples, self._stage_metrics = saved["examples"], saved["metrics"]
        else:
            examples = self.run_stage(stage)
        self._stage_in_flight = {"stage": stage, "examples": examples, "metrics": dict(self._stage_metrics)}
        return examples

    def current_stage(self) -> int:
        return self.state.global_step // self.optimizer_steps_per_stage()

    def optimizer_steps_per_stage(self) -> int:
        return math.ceil(self.batches_per_stage() / self.args.gradient_accumulation_steps)

    def stage_rows(self, stage, candidates, rewards, rewards_per_func, kept_by_filter, kept) -> dict[str, list]:
        """The stage file's columns: one row per candidate, what it is, its reward(s) and whether it was kept."""
        rows = {
            "stage": [stage] * len(rewards),
            "group": candidates["group"],  # candidates ranked together (local ranking) share it
            **self.stage_file_columns(candidates),
            **reward_columns(rewards, rewards_per_func, self.reward_names),
        }
        if self.sample_filter is not None:
            rows["filtered"] = (~kept_by_filter).tolist()
        rows["selected"] = kept.tolist()
        return rows

    def reward_kwargs(self, candidates: Candidates, columns: dict[str, list]) -> dict:
        """The keywords every reward function (and the sample filter) is called with, in TRL's convention;
        `columns` are the other dataset columns, one entry per candidate."""
        return {
            "prompts": candidates["prompt"],
            **self.reward_inputs(candidates),
            **columns,
            "trainer_state": self.state,
        }

    def apply_sample_filter(self, candidates: Candidates, columns: dict[str, list]) -> torch.Tensor:
        """Run the user's sample filter: the mask of candidates it keeps. Text it returns replaces a completion."""
        num_candidates = len(candidates["prompt"])
        if self.sample_filter is None:
            return torch.ones(num_candidates, dtype=torch.bool)
        verdicts = list(self.sample_filter(**self.reward_kwargs(candidates, columns)))
        if len(verdicts) != num_candidates:
            raise ValueError(
                f"sample_filter returned {len(verdicts)} values for {num_candidates} candidates: return one per "
                "candidate (True to keep, False to drop, or replacement text)."
            )
        for index, verdict in enumerate(verdicts):
            if isinstance(verdict, str):
                self.replace_candidate(candidates, index, verdict)
        return torch.tensor([verdict is not False and verdict is not None for verdict in verdicts])

    def score(self, candidates: Candidates, columns: dict[str, list]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each candidate's reward [N] and the per-function rewards [N, F] (see `score_candidates`)."""
        return score_candidates(
            self.reward_funcs,
            self.reward_weights,
            self.reward_kwargs(candidates, columns),
            self.accelerator.device,
            self.args.offload_inactive_models,
        )

    def ranking_scores(self, candidates: Candidates, rewards: torch.Tensor) -> torch.Tensor:
        """The score candidates are ranked by: the reward, unless a subclass penalises it."""
        return rewards

    def reward_metrics(
        self, candidates: Candidates, rewards: torch.Tensor, rewards_per_func: torch.Tensor, kept: torch.Tensor
    ) -> dict:
        """The stage's reward metrics. `reward_mean`, `reward_std` and `reward_mean/<name>` describe the model's own
        samples (left out when it sampled none); other candidates' mean is `reward_dataset_mean`."""
        valid = ~torch.isnan(rewards)
        sampled = self.model_samples(candidates)
        metrics = {}
        if (valid & sampled).any():
            policy_rewards = rewards[valid & sampled]
            metrics["reward_mean"] = policy_rewards.mean().item()
            metrics["reward_std"] = policy_rewards.std().item() if len(policy_rewards) > 1 else 0.0
            if len(self.reward_funcs) > 1:
                for name, column in zip(self.reward_names, rewards_per_func[sampled].T):
                    metrics[f"reward_mean/{name}"] = column.nanmean().item()
        if (valid & ~sampled).any():
            metrics["reward_dataset_mean"] = rewards[valid & ~sampled].mean().item()
        return {
            **metrics,
            "reward_kept_mean": rewards[kept].mean().item(),
            "num_kept": int(kept.sum()),
            "num_without_reward": int((~valid).sum()),
        }

    def model_samples(self, candidates: Candidates) -> torch.Tensor:
        """The mask of candidates the model sampled: all of them, unless a subclass adds others."""
        return torch.ones(len(candidates["prompt"]), dtype=torch.bool)

    def stage_batches(self, examples: list[dict], stage: int) -> Iterator[dict]:
        """Shuffled passes over the kept set, endlessly; the dataloader takes `batches_per_stage()` of them.

        Every process draws the same order and takes its own slice of it, so one pass trains on each kept sample
        once across processes.
        """
        generator = torch.Generator().manual_seed(self.args.seed + stage)  # the same on every process
        batch_size = self.args.per_device_train_batch_size
        while True:
            order = torch.randperm(len(examples), generator=generator).tolist()
            shard = order[self.accelerator.process_index :: self.accelerator.num_processes]
            for start in range(0, len(shard), batch_size):
                yield self.data_collator([examples[i] for i in shard[start : start + batch_size]])

    # ----------------------------------------------------------------------------------------------------------------
    # Trainer integration
    # ----------------------------------------------------------------------------------------------------------------

    def get_train_dataloader(self) -> DataLoader:
        # batch_size=None: the stage yields whole batches; no workers, since a stage generates with the model.
        return DataLoader(StageBatches(self), batch_size=None)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """`transformers.Trainer.train`; when resuming inside a stage, that stage's kept set comes from the
        checkpoint, so the stage is neither generated again nor skipped."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir) or True  # True: the Trainer complains
        if isinstance(resume_from_checkpoint, str):
            path = os.path.join(resume_from_checkpoint, self._stage_checkpoint_name())
            if os.path.isfile(path):
                self._stage_to_resume = torch.load(path, weights_only=True)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.state.global_step % self.optimizer_steps_per_stage() == 0:
            return  # at a stage boundary the next stage starts afresh
        checkpoint = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        with atomic_path(os.path.join(checkpoint, self._stage_checkpoint_name())) as partial:
            torch.save(self._stage_in_flight, partial)

    def _stage_checkpoint_name(self) -> str:
        return f"raft_stage_{self.args.process_index}.pt"  # every process keeps its own kept set

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # A stage's ranking metrics join the Trainer's next log record: with the default logging_strategy="epoch"
        # that is the stage's own record, which also holds its SFT loss.
        if self._stage_metrics:
            logs = {**self._stage_metrics, **self.phase_memory.peak("train"), **logs}
        self._stage_metrics = {}
        super().log(logs, start_time)
        if self.args.log_completions and self._stage_samples and self.is_world_process_zero():
            report_sample_table(
                self._stage_samples,
                self.state.global_step,
                self.args.report_to,
                self.args.num_completions_to_print,
                self.sample_image_column,
                os.path.join(self.args.output_dir, "stages"),
            )
            self._stage_samples = {}

    def create_model_card(
        self,
        model_name: str | None = None,
        tags: str | list[str] | None = None,
        output_dir: str | None = None,
        **kwargs,
    ) -> None:
        """Write the RAFT model card (README.md) in `output_dir` (default `args.output_dir`); `push_to_hub` uploads
        it with the model."""
        if not self.is_world_process_zero():
            return
        output_dir = output_dir or self.args.output_dir
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        base_model = self.base_model_name()
        if base_model is not None and os.path.isdir(base_model):
            base_model = None  # a local path means nothing on the Hub
        name = model_name or os.path.basename(os.path.abspath(output_dir))
        write_model_card(self, base_model, name, ["raft", "reward-ranked-finetuning", *tags], output_dir)

    def card_candidates(self) -> str:
        """How the model card says where a stage's candidates come from."""
        return f"generates {self.args.num_generations} candidates per prompt"

    def card_usage(self, base_model: str | None) -> list[str]:
        """Model-card lines on how to use the trained model (none by default)."""
        return []

    def _quiet(self) -> bool:
        """No progress bars: turned off, or not the first process of this machine."""
        return self.args.disable_tqdm or not self.is_local_process_zero()

    def base_model_name(self) -> str | None:
        """What the model was fine-tuned from, for the model card."""
        return getattr(getattr(self.model, "config", None), "_name_or_path", None) or None

    # ----------------------------------------------------------------------------------------------------------------
    # What a subclass provides
    # ----------------------------------------------------------------------------------------------------------------

    def generate(self, prompt_indices: list[int], prompts: list) -> Candidates:
        """The candidates of `prompts` (`generations_per_prompt` each, or more), as per-candidate columns, with a
        `group` column: the position in `prompts` of each candidate's prompt (see `each_prompt_repeated`)."""
        raise NotImplementedError

    def reward_inputs(self, candidates: Candidates) -> dict:
        """The modality's reward keywords, e.g. `completions=` and `completion_ids=`, or `images=`."""
        raise NotImplementedError

    def stage_file_columns(self, candidates: Candidates) -> dict[str, list]:
        """The columns of the stage file that describe each candidate (before `reward` and `selected`)."""
        raise NotImplementedError

    def training_examples(self, candidates: Candidates, kept_indices: list[int]) -> list[dict]:
        """The fine-tuning examples made of the kept candidates, fed to the data collator."""
        raise NotImplementedError

    def batches_per_stage(self) -> int:
        """Training batches per stage (per process); fixed before the stage runs, as the Trainer needs."""
        raise NotImplementedError

    def stage_metrics(self, candidates: Candidates, kept: torch.Tensor) -> dict:
        """Modality-specific metrics of a stage, logged with the reward metrics."""
        return {}

    def replace_candidate(self, candidates: Candidates, index: int, replacement) -> None:
        """Apply a replacement a sample filter returned for one candidate."""
        raise ValueError(
            f"sample_filter returned a replacement ({replacement!r}) that {type(self).__name__} cannot use."
        )


def reward_columns(rewards: torch.Tensor, rewards_per_func: torch.Tensor, names: list[str]) -> dict[str, list]:
    """A stage file's reward columns: `reward`, and `reward_<name>` per function when there are several."""
    columns = {"reward": _nan_to_none(rewards)}
    if len(names) > 1:
        for name, column in zip(names, rewards_per_func.T):
            columns[f"reward_{name}"] = _nan_to_none(column)
    return columns


def _nan_to_none(values: torch.Tensor) -> list:
    return [None if math.isnan(value) else value for value in values.tolist()]


def _is_number_or_none(value) -> bool:
    if value is None:
        return True
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float, np.number))


def _describe(values: list) -> str:
    shown = repr(values[:4])[:-1] + (", ...]" if len(values) > 4 else "]")
    return f"{len(values)} values {shown}"
