"""The RAFT stage cycle, written once for language and diffusion models.

    prompts -> generate K candidates -> score -> rank -> stage file -> fine-tune on the kept set -> next stage

`StageTrainer` is a `transformers.Trainer` whose every epoch is one stage: at the start of epoch t its train
dataloader runs `run_stage(t)` (the first four arrows) and then serves the kept set, so the Trainer does the
fine-tuning with its own optimizer, learning-rate schedule (over the whole run), accumulation, precision, logging
and checkpoints. Nothing finished is lost when a run dies: a stage's candidates are on disk as soon as they are
generated and its rewards as soon as they are scored (`stages/in_flight.py`), a checkpoint taken inside a stage also
holds that stage's kept set, and SIGTERM/SIGINT stop at the next safe point with a checkpoint (`interruption.py`).
A resumed run goes on from there, with the same samples. A subclass says how to generate candidates and how to turn
the kept ones into training examples.
"""

import itertools
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator

import torch
from accelerate.utils import gather_object
from accelerate.utils.memory import clear_device_cache
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .checkpoints import is_complete, last_complete_checkpoint
from .files import atomic_path, stage_file_path, write_stage_file
from .interruption import (
    StopAtPhaseEnd,
    StopOnSignalCallback,
    StopRequest,
    TrainingInterrupted,
    largest,
    on_every_process,
)
from .memory import PhaseMemory, check_engines, eval_mode, move_models, whole_parameters
from .reporting.console import quiet_callbacks
from .reporting.model_card import write_model_card
from .reporting.sample_table import report_sample_table
from .reporting.stage_table import StageTableCallback
from .rewards import RewardFunction, reward_function_name
from .stage_config import StageConfig
from .stages import Candidates, Draw, Pool, Selection, mean_over_processes
from .stages.batches import PASS_OVER, StageBatches, pass_over_batch
from .stages.budget import gvm_allocation, merged_scored, prompt_statistics
from .stages.in_flight import InFlightFiles, run_identity, set_random_state
from .stages.prompts import (
    contiguous_share,
    draw_prompts,
    settle,
    settled_from_stage_files,
    settled_prompt_weights,
)
from .stages.scoring import RewardLog, reward_columns, reward_weight_tensor, score_candidates
from .stages.selection import acceptance_metrics


class StageTrainer(Trainer):
    """A `transformers.Trainer` whose every epoch is one RAFT stage (see the module docstring).

    Subclasses implement `generate`, `reward_inputs`, `stage_file_columns`, `training_examples` and
    `batches_per_stage`, and may override `ranking_scores`, `stage_metrics`, `replace_candidate` and
    `write_stage_media`. The model card reads the class attributes below and `base_model_name`, which a subclass sets
    before calling `__init__` when the trained model does not know its own origin.
    """

    sample_image_column: str | None = None  # the stage-file column of image paths (relative to `stages/`), if any
    card_library = "transformers"  # the model card's library_name
    card_training = "on them with the SFT loss"  # how the model card says what the fine-tuning does
    card_usage = ""  # Markdown on how to load the result, with `{base_model}` where the base model's name goes
    base_model_name: str | None = None

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
        self.reward_log = RewardLog()  # what reward functions log with TRL's log_extra / log_metric
        self.selection_rule = args.selection_rule()  # what a stage keeps, and what its loss is told of it
        self._stage_metrics: dict[str, float] = {}
        self._stage_samples: dict[str, list] = {}  # the kept rows of the stage file, for `log_completions`
        self._stage_in_flight: dict | None = None  # the running stage's kept set, saved with mid-stage checkpoints
        self._stage_to_resume: dict | None = None  # the same, read back from the checkpoint a run resumes from
        self._resume_in_flight = False  # whether the next stage may take its phases back from the in-flight files
        self._settled: dict[int, bool] = {}  # settled_prompt_weight: each drawn prompt's last outcome, all or none
        self._settled_through = 0  # the stages `_settled` holds; a resumed run rebuilds it from the stage files
        self._stop = StopRequest()
        if self.base_model_name is None:
            self.base_model_name = getattr(getattr(model, "config", None), "_name_or_path", None) or None
        callbacks = list(callbacks or [])
        if not any(isinstance(callback, StageTableCallback) for callback in callbacks):
            callbacks.insert(0, StageTableCallback())
        callbacks.append(StopOnSignalCallback(self))
        super().__init__(model=model, args=args, train_dataset=train_dataset, callbacks=callbacks, **trainer_kwargs)
        quiet_callbacks(self)  # each stage is printed once, by the stage table
        args.check_processes(self.accelerator.num_processes)
        if args.settled_prompt_weight is not None and args.prompts_drawn_per_stage > len(train_dataset):
            raise ValueError(
                f"settled_prompt_weight draws a stage's {args.prompts_drawn_per_stage} prompts without repeats from "
                f"a train_dataset of {len(train_dataset)}: lower prompts_per_stage, or drop settled_prompt_weight."
            )
        check_engines(self)
        self.phase_memory = PhaseMemory(self.accelerator.device)
        self.in_flight = InFlightFiles(args.output_dir, args.process_index)
        if not args.offload_inactive_models:
            move_models(reward_funcs, self.accelerator.device)

    # ----------------------------------------------------------------------------------------------------------------
    # The stage cycle
    # ----------------------------------------------------------------------------------------------------------------

    def run_stage(self, stage: int) -> list[dict]:
        """One stage, step by step: draw its prompts, generate and score their candidates, gather the pool, select
        the kept ones, record the stage (its file and log record), and return the kept set's training examples.

        With several processes each generates and scores its own share of the stage's prompts (all the candidates
        of a prompt on one process); the pool is then gathered so that every process selects from the whole of it
        alike.
        """
        self._stop_at_phase_end()  # a signal received since the last step (in an evaluation, say): stop here
        if self._stage_metrics:  # the previous stage's metrics found no Trainer log to join: log them alone, with
            self.log({})  # their own training peak, before this stage's generation resets the counter
        memory = {}
        draw = self.draw_prompts(stage)
        with whole_parameters(self.model_wrapped):  # each process samples and reads log-probs of its own share
            pool = self.gather_pool(self.generate_and_score(stage, draw, memory))
            self._note_settled_prompts(stage, pool)
            chosen = self.select(pool)
            if not chosen.kept.any():
                self.pass_over(stage, pool, chosen)
            self.record_stage(stage, pool, chosen, memory)
            pool.candidates["reward"] = pool.rewards.tolist()  # every candidate's, for examples that use it
            kept_indices = chosen.kept.nonzero().view(-1).tolist()
            examples = self.training_examples(pool.candidates, kept_indices) if kept_indices else []
        clear_device_cache()
        self.phase_memory.start()  # the training phase's peak joins the stage's log record
        return examples

    def draw_prompts(self, stage: int) -> Draw:
        """This process's share of the stage's draw of prompts (`stages/prompts.py`), with their dataset rows; with
        `settled_prompt_weight`, prompts settled in their last draw (all right or all wrong) are drawn less."""
        args, accelerator = self.args, self.accelerator
        weights = None
        if args.settled_prompt_weight is not None:
            if self._settled_through != stage:  # a resumed run: what the stages before knew, from their files
                self._settled = settled_from_stage_files(args.output_dir, stage, args.reward_threshold)
                self._settled_through = stage
            weights = settled_prompt_weights(self._settled, len(self.train_dataset), args.settled_prompt_weight)
        return draw_prompts(
            stage,
            self.train_dataset,
            args.prompts_drawn_per_stage,
            args.seed,
            accelerator.process_index,
            accelerator.num_processes,
            args.shuffle_dataset,
            weights,
        )

    def generate_and_score(self, stage: int, draw: Draw, memory: dict) -> dict:
        """This process's scored candidates of `draw` (`scored_candidates`' dict). Each phase's result goes to disk
        as it ends; a resumed run takes the finished ones back (`stages/in_flight.py`). `memory` receives each
        phase's peak. With `sample_allocation='gvm'` the stage's two draws are each generated and scored
        (`allocated_candidates`), and only the whole is kept in flight."""
        identity = self._stage_identity(stage)
        scored = self._resumed_in_flight(stage, "scored", identity)
        if scored is None:
            if self.args.sample_allocation == "gvm":
                scored = self.allocated_candidates(draw, memory)
            else:
                generated = self._resumed_in_flight(stage, "generated", identity)
                if generated is None:
                    with self.phase_memory.phase("generate", memory):
                        generated = self._generated_candidates(draw)
                    self._save_in_flight(stage, "generated", identity, generated)
                self._stop_at_phase_end()  # a signal received while generating takes effect here
                columns = draw.label(generated["candidates"], generated["prompt_of"])
                with self.phase_memory.phase("score", memory):
                    scored = self.scored_candidates(generated["candidates"], columns)
            self._save_in_flight(stage, "scored", identity, scored)
            self.in_flight.remove(stage, "generated")
        self._stop_at_phase_end()
        return scored

    def gather_pool(self, scored: dict) -> Pool:
        """Every process's scored candidates, in the order of the stage's draw: the pool each process selects from."""
        return Pool.gather(scored)

    def select(self, pool: Pool) -> Selection:
        """Which candidates the stage keeps, by the configuration's selection rule (`args.selection_rule()`: by rank
        or score, among the accepted ones, or Reinforce-Rej's groups with contrast). A trainer may override it with
        a rule of its own (tests/test_extension.py shows one)."""
        return self.selection_rule.select(pool)

    def record_stage(self, stage: int, pool: Pool, chosen: Selection, memory: dict) -> None:
        """Write the stage file (main process) and set the stage's log record, which joins the Trainer's next log."""
        candidates, kept = pool.candidates, chosen.kept
        if self.is_world_process_zero():
            rows = self._stage_rows(stage, candidates, pool.rewards, pool.rewards_per_func, pool.kept_by_filter, kept)
            rows.update(self.write_stage_media(stage, candidates, rows))
            write_stage_file(stage_file_path(self.args.output_dir, stage), rows)
            self._stage_samples = {
                name: list(itertools.compress(column, rows["selected"])) for name, column in rows.items()
            }
        self._stage_metrics = {
            "stage": stage,
            **self._reward_metrics(candidates, pool.rewards, pool.rewards_per_func, kept),
            **pool.reward_metrics,
            **acceptance_metrics(chosen.accepted, pool.groups, self.model_samples(candidates)),
            **self.stage_metrics(candidates, kept),
            **memory,
        }

    def pass_over(self, stage: int, pool: Pool, chosen: Selection) -> None:
        """A stage that kept nothing trains on nothing: its optimizer steps run without a gradient, so they change
        no weight and the learning-rate schedule, the step count and resume stay as planned. Said once, with the
        counts; `max_empty_stages` such stages in a row stop the run, since then the task is out of reach."""
        in_a_row = self._empty_stages_before(stage) + 1
        rewards = pool.rewards
        rewarded = int((~torch.isnan(rewards)).sum())
        accepted = rewarded if chosen.accepted is None else int(chosen.accepted.sum())
        why = f"{rewarded} of {len(rewards)} candidates got a reward, {accepted} were accepted{chosen.rule}"
        if self.accelerator.scaler is not None or self.is_deepspeed_enabled:
            raise RuntimeError(
                f"stage {stage} kept no candidate ({why}), and a stage is passed over by optimizer steps without "
                "gradients, which fp16's gradient scaler and DeepSpeed cannot make: train in bf16 or fp32 without "
                "DeepSpeed, or lower reward_threshold so that every stage keeps something."
            )
        if in_a_row >= self.args.max_empty_stages:
            raise RuntimeError(
                f"stage {stage} kept no candidate, the last of {in_a_row} such stages in a row (max_empty_stages="
                f"{self.args.max_empty_stages}): {why}. The reward is out of the model's reach at these settings: "
                "lower reward_threshold, raise num_generations, or start from a stronger model (with few prompts a "
                "stage, an empty stage can be ordinary early on: raise max_empty_stages)."
            )
        logging.getLogger(__name__).warning(
            "Stage %d kept no candidate and is passed over (no update this stage; %d of max_empty_stages=%d in a "
            "row): %s.",
            stage,
            in_a_row,
            self.args.max_empty_stages,
            why,
        )

    def _note_settled_prompts(self, stage: int, pool: Pool) -> None:
        """`settled_prompt_weight`: remember which of the stage's prompts were all right or all wrong."""
        if self.args.settled_prompt_weight is not None:
            settle(self._settled, pool.candidates["prompt_index"], pool.rewards.tolist(), self.args.reward_threshold)
            self._settled_through = stage + 1

    def _empty_stages_before(self, stage: int) -> int:
        """How many stages just before `stage` kept nothing, read off the log history (so a resumed run counts
        them too): every stage's record holds its `stage` and `num_kept`."""
        kept = {record["stage"]: record["num_kept"] for record in self.state.log_history if "num_kept" in record}
        count = 0
        while kept.get(stage - count - 1) == 0:
            count += 1
        return count

    def _generated_candidates(self, draw: Draw, per_prompt: list[int] | None = None) -> dict:
        """This process's candidates of its share of the draw (`per_prompt[i]` of prompt i when given), with the
        position in `draw.prompts` of each one's prompt (`prompt_of`)."""
        if per_prompt is None:  # the hook's plain call, which a trainer overriding `generate` may only take
            candidates = self.generate(draw.prompt_indices, draw.prompts)
        else:
            candidates = self.generate(draw.prompt_indices, draw.prompts, per_prompt)
        clear_device_cache()  # generation's caches are not needed any more
        return {"candidates": candidates, "prompt_of": candidates.pop("prompt_position")}

    def allocated_candidates(self, draw: Draw, memory: dict) -> dict:
        """GVM-RAFT's stage budget (`stages/budget.py`): a first draw of `gvm_first_draw` candidates per prompt,
        generated and scored, gives each prompt's acceptance rate and its accepted candidates' gradient norms; the
        rest of the `num_generations` per prompt are shared out by those, generated and scored; returns both draws'
        scored candidates together, prompt by prompt (`scored_candidates`' dict). Each candidate is scored once."""
        args, num_prompts = self.args, len(draw.prompts)
        first = self._scored_draw(draw, [args.gvm_first_draw] * num_prompts, memory)
        accepted = first["rewards"] >= args.reward_threshold  # NaN (no reward, filtered out) is not accepted
        norms = torch.zeros(len(accepted))
        measured = accepted.nonzero().view(-1).tolist()
        if measured:
            norms[measured] = torch.tensor(self.gradient_norms(first["candidates"], measured), dtype=norms.dtype)
        local = {position: i for i, position in enumerate(draw.positions)}  # the draw's place -> this share's
        prompt_of = [local[group] for group in first["candidates"]["group"]]
        rates, mean_norms = prompt_statistics(prompt_of, num_prompts, accepted, norms)
        budget = num_prompts * (args.num_generations - args.gvm_first_draw)
        counts = gvm_allocation(rates, mean_norms, budget, args.gvm_alpha, args.gvm_beta)
        return merged_scored(first, self._scored_draw(draw, counts, memory))

    def _scored_draw(self, draw: Draw, per_prompt: list[int], memory: dict) -> dict:
        """One draw of `per_prompt[i]` candidates of each prompt, generated and scored; `memory` keeps each
        phase's highest peak over the draws."""
        peaks = {}
        with self.phase_memory.phase("generate", peaks):
            generated = self._generated_candidates(draw, per_prompt)
        self._stop_at_phase_end()
        columns = draw.label(generated["candidates"], generated["prompt_of"])
        with self.phase_memory.phase("score", peaks):
            scored = self.scored_candidates(generated["candidates"], columns)
        memory.update({name: max(peak, memory.get(name, peak)) for name, peak in peaks.items()})
        return scored

    def scored_candidates(self, candidates: Candidates, columns: dict[str, list]) -> dict:
        """The candidates after the sample filter, their rewards (NaN where filtered out), per-function rewards,
        the filter's mask and the ranking scores."""
        self.reward_log = RewardLog()  # what the filter and the reward functions log for these candidates
        kept_by_filter = self._apply_sample_filter(candidates, columns)
        rewards, rewards_per_func = self.score(candidates, columns)
        candidates["logged"], reward_metrics = self.reward_log.take(len(rewards))
        rewards[~kept_by_filter] = torch.nan
        scores = self.ranking_scores(candidates, rewards)
        return dict(
            reward_metrics=reward_metrics,
            candidates=candidates,
            rewards=rewards,
            rewards_per_func=rewards_per_func,
            kept_by_filter=kept_by_filter,
            scores=scores,
        )

    # ----------------------------------------------------------------------------------------------------------------
    # Nothing lost: the stage in flight on disk, stopping on a signal
    # ----------------------------------------------------------------------------------------------------------------

    def _stage_identity(self, stage: int) -> dict:
        """What this run's in-flight files of `stage` must match (see `run_identity`)."""
        prompts = getattr(self.train_dataset, "_fingerprint", "")
        settings = {**self.args.to_dict(), **self._identity_settings()}
        return run_identity(settings, stage, self.state.global_step, prompts, self.accelerator.num_processes)

    def _identity_settings(self) -> dict:
        """What besides the configuration makes a stage's candidates and rewards what they are."""
        return {
            "model": self.base_model_name,
            "reward_funcs": self.reward_names,
            "sample_filter": getattr(self.sample_filter, "__name__", repr(self.sample_filter)),
        }

    def _save_in_flight(self, stage: int, part: str, identity: dict, values: dict) -> None:
        """Write this process's `part` ("generated" or "scored") of the stage in flight."""
        self.in_flight.save(
            stage, part, identity, {**values, "candidates": self.candidates_to_file(values["candidates"])}
        )

    def _resumed_in_flight(self, stage: int, part: str, identity: dict) -> dict | None:
        """The `part` of `stage` that a resumed run finds on disk, for the stage it resumes at only (a later stage's
        files came from a model this run trains again, the same only where training is bitwise reproducible), when
        every process finds its own and they belong to this run; the random state is then put back to where it was
        after that phase. None otherwise."""
        saved = self.in_flight.load(stage, part, identity) if self._resume_in_flight else None
        if not on_every_process(self.accelerator, saved is not None):
            return None
        set_random_state(saved["random_state"])
        return {**saved["values"], "candidates": self.candidates_from_file(saved["values"]["candidates"])}

    def candidates_to_file(self, candidates: Candidates) -> dict:
        """The candidates in types `torch.load(weights_only=True)` reads back; they are already, unless a subclass
        holds other objects (images, say)."""
        return candidates

    def candidates_from_file(self, saved: dict) -> Candidates:
        """The inverse of `candidates_to_file`."""
        return saved

    def _stop_requested(self) -> bool:
        """Whether a process received SIGTERM or SIGINT; the processes agree, so they stop at the same point."""
        signum = largest(self.accelerator, self._stop.signum or 0)
        if signum:
            self._stop.signum = signum
        return bool(signum)

    def _stop_at_phase_end(self) -> None:
        """Before a stage, and after its generation or scoring (whose results are on disk): stop if a signal asked
        to, with a checkpoint of the steps trained so far, unless there is one already."""
        if not self._stop_requested():
            return
        if self.state.global_step > 0 and not self._checkpoint_saved_at_this_step():
            self._save_checkpoint(self.model_wrapped, trial=None)
        raise StopAtPhaseEnd

    def _checkpoint_path(self, trial=None) -> str:
        return os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")

    def _checkpoint_saved_at_this_step(self) -> bool:
        return is_complete(self._checkpoint_path())

    def _interrupted_message(self) -> str:
        signal_name = signal.Signals(self._stop.signum).name
        step, stage = self.state.global_step, self.current_stage()
        checkpoint = last_complete_checkpoint(self.args.output_dir)
        saved = [f"the last checkpoint is {checkpoint}" if checkpoint else "no optimizer step to checkpoint yet"]
        if os.path.isdir(self.in_flight.folder) and os.listdir(self.in_flight.folder):
            saved.append(f"stage {stage}'s finished phases are in {self.in_flight.folder}")
        return (
            f"raft-trainer: stopped by {signal_name} at step {step} (stage {stage} of {self.args.num_stages}); "
            f"{'; '.join(saved)}. Resume with trainer.train(resume_from_checkpoint=True), or raft-train ... --resume."
        )

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """The held-out reward: one candidate per prompt of `eval_dataset` (default: the trainer's; a dict of
        datasets is evaluated per name, as in TRL), sampled with the training settings, scored by the reward
        functions; no gradient, no ranking, nothing written to the stage files. Logs and returns `eval_reward`
        (`eval_reward/<name>` per function when there are several), `eval_accuracy` (the share reaching
        `reward_threshold`, when one is set) and the trainer's own figures (`eval_completion_length`)."""
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if dataset is None:
            raise ValueError("evaluate needs an eval_dataset: pass one to the trainer or to evaluate().")
        if isinstance(dataset, dict):
            metrics = {}
            for name, part in dataset.items():
                metrics.update(self.evaluate(part, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        rows = dataset.select(self.process_share(range(len(dataset)))).to_dict()
        prompts = rows.pop("prompt")
        # A fixed seed per step, outside the training random stream: a run trains the same with or without it.
        devices = range(torch.cuda.device_count()) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices), eval_mode(self.model):
            torch.manual_seed(self.args.seed + self.state.global_step)
            candidates = self.evaluation_candidates(prompts)
        prompt_of = candidates.pop("prompt_position")
        candidates["prompt"] = [prompts[i] for i in prompt_of]
        columns = {name: [values[i] for i in prompt_of] for name, values in rows.items()}
        self.reward_log = RewardLog()
        rewards, rewards_per_func = self.score(candidates, columns)
        candidates["reward"] = rewards.tolist()
        _, reward_metrics = self.reward_log.take(len(rewards))
        rewards, rewards_per_func = (torch.cat(gather_object([tensor])) for tensor in (rewards, rewards_per_func))
        metrics = {f"{metric_key_prefix}_reward": rewards.nanmean().item()}
        for name, value in mean_over_processes(reward_metrics).items():
            metrics[f"{metric_key_prefix}_{name}"] = value
        if len(self.reward_funcs) > 1:
            for name, column in zip(self.reward_names, rewards_per_func.T):
                metrics[f"{metric_key_prefix}_reward/{name}"] = column.nanmean().item()
        if self.args.reward_threshold is not None:
            metrics[f"{metric_key_prefix}_accuracy"] = (rewards >= self.args.reward_threshold).double().mean().item()
        for name, value in self.evaluation_metrics(candidates).items():
            metrics[f"{metric_key_prefix}_{name}"] = value
        self.write_evaluation_media(candidates, metric_key_prefix)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def evaluation_candidates(self, prompts: list) -> Candidates:
        """One candidate per prompt, with a `prompt_position` column, for `evaluate`."""
        raise NotImplementedError(f"{type(self).__name__} does not evaluate on held-out prompts yet.")

    def evaluation_metrics(self, candidates: Candidates) -> dict[str, float]:
        """The modality's own held-out figures (averaged over processes by the caller's gather, or local)."""
        return {}

    def write_evaluation_media(self, candidates: Candidates, metric_key_prefix: str) -> None:
        """Files showing this process's held-out candidates, with their rewards (none by default)."""

    def process_share(self, items: list) -> list:
        """This process's contiguous share of `items` (the shares of all processes, in order, make up `items`)."""
        return contiguous_share(items, self.accelerator.process_index, self.accelerator.num_processes)

    def _stage_examples(self, stage: int) -> list[dict]:
        """The training examples of `stage`: taken back from the checkpoint if the run resumed inside this stage,
        else made by running it."""
        saved, self._stage_to_resume = self._stage_to_resume, None
        if saved is not None and saved["stage"] == stage:
            examples, self._stage_metrics = saved["examples"], saved["metrics"]
        else:
            examples = self.run_stage(stage)
        if self._resume_in_flight:  # the stage the run resumed at is under way: later stages' files are stale
            self._resume_in_flight = False
            self.in_flight.discard(lambda other: other > stage)
        self._stage_in_flight = {"stage": stage, "examples": examples, "metrics": dict(self._stage_metrics)}
        return examples

    def current_stage(self) -> int:
        """The stage the run is in, from the optimizer steps taken."""
        return self.state.global_step // self.optimizer_steps_per_stage()

    def optimizer_steps_per_stage(self) -> int:
        """Optimizer steps per stage: `batches_per_stage()` over the gradient accumulation steps, rounded up."""
        return math.ceil(self.batches_per_stage() / self.args.gradient_accumulation_steps)

    def _stage_rows(self, stage, candidates, rewards, rewards_per_func, kept_by_filter, kept) -> dict[str, list]:
        """The stage file's columns: one row per candidate, what it is, its reward(s) and whether it was kept."""
        rows = {
            "stage": [stage] * len(rewards),
            "group": candidates["group"],  # candidates ranked together (local ranking) share it
            **self.stage_file_columns(candidates),
            **reward_columns(rewards, rewards_per_func, self.reward_names),
        }
        logged = sorted({column for values in candidates["logged"] for column in values})
        clashes = set(logged) & (set(rows) | {"filtered", "selected"})
        if clashes:
            raise ValueError(
                f"a reward function logged the columns {sorted(clashes)} with log_extra, which the stage file has "
                "already: log them under other names."
            )
        rows.update({column: [values.get(column) for values in candidates["logged"]] for column in logged})
        if self.sample_filter is not None:
            rows["filtered"] = (~kept_by_filter).tolist()
        rows["selected"] = kept.tolist()
        return rows

    def _reward_kwargs(self, candidates: Candidates, columns: dict[str, list]) -> dict:
        """The keywords every reward function (and the sample filter) is called with, in TRL's convention;
        `columns` are the other dataset columns, one entry per candidate."""
        return {
            "prompts": candidates["prompt"],
            **self.reward_inputs(candidates),
            **columns,
            "trainer_state": self.state,
            "log_extra": self.reward_log.log_extra,
            "log_metric": self.reward_log.log_metric,
        }

    def _apply_sample_filter(self, candidates: Candidates, columns: dict[str, list]) -> torch.Tensor:
        """Run the user's sample filter: the mask of candidates it keeps. Text it returns replaces a completion."""
        num_candidates = len(candidates["prompt"])
        if self.sample_filter is None:
            return torch.ones(num_candidates, dtype=torch.bool)
        verdicts = list(self.sample_filter(**self._reward_kwargs(candidates, columns)))
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
            self._reward_kwargs(candidates, columns),
            self.accelerator.device,
            self.args.offload_inactive_models,
        )

    def ranking_scores(self, candidates: Candidates, rewards: torch.Tensor) -> torch.Tensor:
        """The score candidates are ranked by: the reward, unless a subclass penalises it."""
        return rewards

    def _reward_metrics(
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
                for name, column in zip(self.reward_names, rewards_per_func[valid & sampled].T):
                    metrics[f"reward_mean/{name}"] = column.nanmean().item()
        if (valid & ~sampled).any():
            metrics["reward_dataset_mean"] = rewards[valid & ~sampled].mean().item()
        return {
            **metrics,
            "reward_kept_mean": rewards[kept].mean().item() if kept.any() else 0.0,
            "num_kept": int(kept.sum()),
            "num_without_reward": int((~valid).sum()),
        }

    def model_samples(self, candidates: Candidates) -> torch.Tensor:
        """The mask of candidates the model sampled: all of them, unless a subclass adds others."""
        return torch.ones(len(candidates["prompt"]), dtype=torch.bool)

    def _stage_batches(self, examples: list[dict], stage: int) -> Iterator[dict]:
        """Shuffled passes over the kept set, endlessly; the dataloader takes `batches_per_stage()` of them.

        Every process draws the same order and takes its own slice of it, so one pass trains on each kept sample
        once across processes.
        """
        if not examples:  # a stage passed over (see `pass_over`): steps without a gradient
            yield from itertools.repeat(pass_over_batch())
        generator = torch.Generator().manual_seed(self.args.seed + stage)  # the same on every process
        batch_size = self.args.per_device_train_batch_size
        processes = self.accelerator.num_processes
        while True:
            order = torch.randperm(len(examples), generator=generator).tolist()
            if len(order) < processes:  # fewer kept samples than processes: cycled, so that every process has some
                order = (order * processes)[:processes]
            shard = order[self.accelerator.process_index :: processes]
            for start in range(0, len(shard), batch_size):
                yield self.data_collator([examples[i] for i in shard[start : start + batch_size]])

    # ----------------------------------------------------------------------------------------------------------------
    # Trainer integration
    # ----------------------------------------------------------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        """`Trainer.training_step`, except that a batch of a stage passed over (`pass_over`) trains nothing."""
        if PASS_OVER in inputs:
            # No forward, no backward: every gradient stays None, so the optimizer step skips every parameter (no
            # moment update, no weight decay) while the scheduler steps as planned.
            return torch.zeros((), device=self.args.device)
        return super().training_step(model, inputs, num_items_in_batch)

    def floating_point_ops(self, inputs) -> int:
        """`Trainer.floating_point_ops`; none for a batch of a stage passed over."""
        return 0 if PASS_OVER in inputs else super().floating_point_ops(inputs)

    def get_train_dataloader(self) -> DataLoader:
        """The stages as one dataloader: each epoch runs a stage and serves its batches (`stages/batches.py`)."""
        # batch_size=None: the stage yields whole batches; no workers, since a stage generates with the model.
        return DataLoader(StageBatches(self), batch_size=None)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """`transformers.Trainer.train`, with nothing lost when a run dies (see the module docstring).

        `resume_from_checkpoint=True` resumes from the newest complete checkpoint in `output_dir` (one a crash cut
        short is passed over), or from the start when there is none yet; in both cases the stage in flight goes on
        from its files on disk. SIGTERM or SIGINT during training stop at the next safe point with a checkpoint and
        raise `TrainingInterrupted` (a `SystemExit` with status 128 + the signal's number).
        """
        resuming = bool(resume_from_checkpoint)
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
        elif isinstance(resume_from_checkpoint, str) and not is_complete(resume_from_checkpoint):
            raise ValueError(
                f"resume_from_checkpoint={resume_from_checkpoint!r} is not a complete checkpoint (no readable "
                "trainer_state.json): pass an earlier one, or True for the newest complete one."
            )
        self._resume_in_flight = resuming
        if not resuming:  # a fresh run: another run's in-flight files must not be mistaken for its own
            self.in_flight.discard()
        if isinstance(resume_from_checkpoint, str):
            path = os.path.join(resume_from_checkpoint, self._stage_checkpoint_name())
            if os.path.isfile(path):
                self._stage_to_resume = torch.load(path, weights_only=True)
        self._stop = StopRequest()
        try:
            with self._stop.listening():
                output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        except StopAtPhaseEnd:
            output = None
        # Every process asks, so that all of them raise, or none (a signal after the last step ends nothing).
        if self._stop_requested() and self.state.global_step < self.state.max_steps:
            message = self._interrupted_message()
            if self.is_world_process_zero():
                print(message, file=sys.stderr, flush=True)
            raise TrainingInterrupted(self._stop.signum, message)
        self.in_flight.discard()  # the run is over: nothing is in flight
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_local_main_process:
            self.in_flight.remove_folder()
        return output

    def _save_checkpoint(self, model, trial) -> None:
        # Inside a stage the checkpoint holds its kept set, written before the Trainer's files so that the
        # Trainer's state, written last, marks a complete checkpoint (see checkpoints.py).
        if self.state.global_step % self.optimizer_steps_per_stage() != 0:
            with atomic_path(os.path.join(self._checkpoint_path(trial), self._stage_checkpoint_name())) as partial:
                # the stage's metrics only while they wait for a log record: once logged, a resumed run must not
                # log them again
                torch.save({**self._stage_in_flight, "metrics": dict(self._stage_metrics)}, partial)
        super()._save_checkpoint(model, trial)
        # The stages before this one are in the checkpoint now (once every process has saved its part): their
        # in-flight files are not needed any more.
        self.accelerator.wait_for_everyone()
        current = self.current_stage()
        self.in_flight.discard(lambda stage: stage < current)

    def _stage_checkpoint_name(self) -> str:
        return f"raft_stage_{self.args.process_index}.pt"  # every process keeps its own kept set

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """`Trainer.log`, with the stage's own record (rewards, selection, memory) joined to its next log record,
        and its kept samples printed or logged as a table with `log_completions`."""
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
        base_model = self.base_model_name
        if base_model is not None and os.path.isdir(base_model):
            base_model = None  # a local path means nothing on the Hub
        name = model_name or os.path.basename(os.path.abspath(output_dir))
        write_model_card(self, base_model, name, ["raft", "reward-ranked-finetuning", *tags], output_dir)

    def _quiet(self) -> bool:
        """No progress bars: turned off, or not the first process of this machine."""
        return self.args.disable_tqdm or not self.is_local_process_zero()

    # ----------------------------------------------------------------------------------------------------------------
    # What a subclass provides
    # ----------------------------------------------------------------------------------------------------------------

    def generate(self, prompt_indices: list[int], prompts: list, per_prompt: list[int] | None = None) -> Candidates:
        """The candidates of `prompts` (`generations_per_prompt` each, or more), as per-candidate columns, with a
        `prompt_position` column: the position in `prompts` of each candidate's prompt (see `each_prompt_repeated`).
        Only `sample_allocation='gvm'` passes `per_prompt`, the count of each prompt; a trainer that does not offer
        it may leave the argument out."""
        raise NotImplementedError

    def gradient_norms(self, candidates: Candidates, indices: list[int]) -> list[float]:
        """The gradient norm of the fine-tuning loss of each candidate in `indices`, for `sample_allocation='gvm'`."""
        raise NotImplementedError(
            f"{type(self).__name__} does not measure gradient norms for sample_allocation='gvm'."
        )

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

    def write_stage_media(self, stage: int, candidates: Candidates, rows: dict[str, list]) -> dict[str, list]:
        """Write what the stage file points to rather than holds (images, say) and return the stage-file columns
        that name it; nothing by default. Runs on the main process, before the stage file is written."""
        return {}

    def replace_candidate(self, candidates: Candidates, index: int, replacement) -> None:
        """Apply a replacement a sample filter returned for one candidate."""
        raise ValueError(
            f"sample_filter returned a replacement ({replacement!r}) that {type(self).__name__} cannot use."
        )
