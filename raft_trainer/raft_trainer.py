"""RAFTTrainer: the RAFT stage cycle (stage_trainer.py) for causal language models.

What is specific to language models: sampling completions with `generate`, the KL-penalised ranking score, and
the SFT loss, which is the model's own causal-LM loss with the prompt and padding masked out of the labels, i.e.
the mean negative log-likelihood over completion tokens (`reference.sft_loss`).
"""

import copy
import logging
import math
from collections.abc import Callable

import torch
from datasets import Dataset
from peft import PeftConfig, get_peft_model
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel
from trl.data_utils import is_conversational, maybe_apply_chat_template
from trl.models import unwrap_model_for_generation
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from . import ranking
from .candidate_dataset import completions_by_prompt, prompt_key
from .memory import move_models, visiting
from .metrics import distinct_n
from .raft_config import RAFTConfig
from .rewards import as_reward_functions
from .sequences import completion_token_log_probs, generate_completions, load_tokenizer, sft_example
from .stage_trainer import Candidates, StageTrainer, each_prompt_repeated, validate_prompt_dataset
from .vllm_sampling import check_vllm_settings, sample_with_vllm, vllm_generation

logger = logging.getLogger(__name__)


class RAFTTrainer(StageTrainer):
    """RAFT (Reward rAnked FineTuning) for causal language models.

    Args:
        model (`str` or `PreTrainedModel`): the policy, or the id / path to load it from.
        reward_fn: a reward function (TRL's convention, see `raft_trainer.rewards`), a reward-model id or
            `PreTrainedModel` (sequence classification, `num_labels=1`), or a list of these weighted by
            `args.reward_weights`.
        args (`RAFTConfig`): the configuration.
        train_dataset (`datasets.Dataset`): prompts in a `prompt` column, as text or as chat messages; the other
            columns are passed to the reward functions.
        processing_class: the policy's tokenizer (loaded from the model's path when omitted).
        reward_processing_classes: tokenizers of reward models given as `PreTrainedModel`, one per reward function.
        peft_config (`peft.PeftConfig`, *optional*): train a PEFT adapter (e.g. LoRA) on the policy instead of all its
            weights; with `beta > 0` the reference log-probs come from the same model with the adapter disabled, so
            no second copy is held. `save_model` then writes the adapter.
        sample_filter: called before ranking with the reward-function keywords; returns per candidate `True`
            (keep), `False` (drop: never selected) or replacement completion text (paper appendix A.2).
        callbacks, optimizers: as in `transformers.Trainer`.
        candidate_model (`str` or `PreTrainedModel`, *optional*): another (usually larger) model that generates the
            candidates; the policy learns from its ranked samples (paper section 4.3: GPT-Neo-2.7B learning from
            LLaMA-7B's best of 32). Its completions are re-tokenized with the policy's tokenizer.
        candidate_processing_class: the candidate model's tokenizer (loaded from its path when omitted).
        candidate_dataset (`datasets.Dataset`, *optional*): completions to rank with or instead of the model's
            samples (`args.candidate_source`), in `prompt` and `completion` columns (text, or chat messages with the
            completion as one assistant message); rows are matched to the training prompts by the prompt, and a
            prompt may have any number of them. They are trained on whole, ending with the end-of-sequence token.
        prompt_for_generation (`Callable`, *optional*): maps a dataset prompt to the prompt candidates are generated
            from (prompt engineering: generate from x~, train on x); the policy is still trained on the original.
    """

    def __init__(
        self,
        model: str | PreTrainedModel,
        reward_fn,
        args: RAFTConfig | None = None,
        train_dataset: Dataset | None = None,
        processing_class=None,
        reward_processing_classes=None,
        sample_filter=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config: PeftConfig | None = None,
        candidate_model: str | PreTrainedModel | None = None,
        candidate_processing_class=None,
        prompt_for_generation: Callable | None = None,
        candidate_dataset: Dataset | None = None,
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = RAFTConfig(output_dir=f"{name.split('/')[-1]}-RAFT")
        # Everything about the prompts is checked before any model is loaded.
        validate_prompt_dataset(train_dataset)
        model_id = model if isinstance(model, str) else None
        processing_class = load_tokenizer(model_id or model.name_or_path, processing_class)
        if prompt_for_generation is not None and not callable(prompt_for_generation):
            raise ValueError(f"prompt_for_generation must be a callable (got {type(prompt_for_generation).__name__}).")
        if (candidate_dataset is None) != (args.candidate_source == "model"):
            raise ValueError(
                f"candidate_source={args.candidate_source!r} with candidate_dataset "
                f"{'missing' if candidate_dataset is None else 'given'}: pass a candidate_dataset with "
                "candidate_source 'dataset' or 'both', and none with 'model'."
            )
        if args.use_vllm:
            check_vllm_settings(args)
        if args.candidate_source == "dataset" and (candidate_model is not None or prompt_for_generation is not None):
            raise ValueError(
                "candidate_source='dataset' samples nothing, so candidate_model and prompt_for_generation would go "
                "unused: drop them, or set candidate_source='both'."
            )
        if args.use_vllm and candidate_model is not None:
            raise ValueError(
                "use_vllm=True samples with the policy: drop candidate_model, or set use_vllm=False to sample with it."
            )
        train_dataset, self.prompt_ids = tokenize_prompts(train_dataset, processing_class, args.max_prompt_length)
        dataset_completions = None
        if candidate_dataset is not None:
            dataset_completions = completions_by_prompt(candidate_dataset, train_dataset)
            if args.candidate_source == "dataset":  # a prompt without completions would have nothing to rank
                train_dataset, self.prompt_ids = prompts_with_completions(
                    train_dataset, self.prompt_ids, dataset_completions
                )

        model_init_kwargs = args.model_init_kwargs or {}
        if model_id is not None:
            model = AutoModelForCausalLM.from_pretrained(model_id, **model_init_kwargs)

        if peft_config is not None:
            model = get_peft_model(model, peft_config)
        # The reference model is the frozen initial policy; it is only needed for the KL-penalised score. With an
        # adapter it is the base model under the adapter.
        self.ref_model = None
        if args.beta > 0 and peft_config is None:
            self.ref_model = (
                AutoModelForCausalLM.from_pretrained(model_id, **model_init_kwargs)
                if model_id is not None
                else copy.deepcopy(model)
            )
            self.ref_model.eval().requires_grad_(False)

        self.eos_token_ids = candidate_generation_config(model, processing_class, args).eos_token_id
        # The token that ends a text the policy did not sample itself (a dataset completion, a re-tokenized or
        # replaced one): the tokenizer's eos if it is one of the model's (a chat model's end of turn), else the first.
        self.end_token_id = (
            processing_class.eos_token_id
            if processing_class.eos_token_id in self.eos_token_ids
            else self.eos_token_ids[0]
        )
        # Each training prompt's dataset completions as (text, policy token ids); complete answers, so they end
        # with the end-of-sequence token as a finished sample does.
        self.dataset_candidates = None
        if dataset_completions is not None:
            self.dataset_candidates = [
                [
                    (text, processing_class(text, add_special_tokens=False)["input_ids"] + [self.end_token_id])
                    for text in dataset_completions.get(prompt_key(prompt), [])
                ]
                for prompt in train_dataset["prompt"]
            ]

        # What generates the candidates, from which prompt tokens: the policy from the dataset's prompts, unless a
        # candidate model or a generation prompt is given.
        self.candidate_model, self.candidate_tokenizer = None, processing_class
        if candidate_model is not None:
            if isinstance(candidate_model, str):
                candidate_model = AutoModelForCausalLM.from_pretrained(candidate_model, **model_init_kwargs)
            self.candidate_model = candidate_model.eval().requires_grad_(False)
            self.candidate_tokenizer = load_tokenizer(candidate_model.name_or_path, candidate_processing_class)
        self.generation_config = candidate_generation_config(
            self.candidate_model or model, self.candidate_tokenizer, args
        )
        self.generation_prompt_ids = self.prompt_ids
        if prompt_for_generation is not None or self.candidate_model is not None:
            generation_prompts = train_dataset
            if prompt_for_generation is not None:
                generation_prompts = Dataset.from_dict(
                    {"prompt": list(map(prompt_for_generation, train_dataset["prompt"]))}
                )
            _, self.generation_prompt_ids = tokenize_prompts(generation_prompts, self.candidate_tokenizer, None)
        super().__init__(
            model,
            as_reward_functions(
                reward_fn,
                reward_processing_classes,
                show_progress=not args.disable_tqdm,
                batch_size=args.generation_batch_size,
            ),
            args,
            train_dataset,
            sample_filter=sample_filter,
            processing_class=processing_class,
            data_collator=DataCollatorForLanguageModeling(pad_token_id=processing_class.pad_token_id),
            callbacks=callbacks,
            optimizers=optimizers,
        )
        if not args.offload_inactive_models:
            move_models((self.ref_model, self.candidate_model), self.accelerator.device)
        self.vllm_generation = None
        if args.use_vllm:
            self.vllm_generation = vllm_generation(self.model, self.accelerator, processing_class, args)

    # ----------------------------------------------------------------------------------------------------------------
    # Generation
    # ----------------------------------------------------------------------------------------------------------------

    def generate(self, prompt_indices: list[int], prompts: list) -> Candidates:
        candidates = {"prompt_ids": [], "completion_ids": [], "completion": [], "group": []}
        if self.args.candidate_source != "dataset":
            candidates = self.sampled_candidates(prompt_indices)
        if self.dataset_candidates is not None:
            candidates["source"] = ["model"] * len(candidates["group"])
            for position, index in enumerate(prompt_indices):
                for text, completion_ids in self.dataset_candidates[index]:
                    candidates["prompt_ids"].append(self.prompt_ids[index])
                    candidates["completion_ids"].append(completion_ids)
                    candidates["completion"].append(text)
                    candidates["group"].append(position)
                    candidates["source"].append("dataset")
        return candidates

    def sampled_candidates(self, prompt_indices: list[int]) -> Candidates:
        """`generations_per_prompt` completions of each prompt, sampled by the policy or the candidate model."""
        per_prompt = self.args.generations_per_prompt
        prompt_ids = [self.prompt_ids[i] for i in prompt_indices]
        generation_prompt_ids = [self.generation_prompt_ids[i] for i in prompt_indices]
        if self.vllm_generation is not None:
            completion_ids = sample_with_vllm(self.vllm_generation, generation_prompt_ids, per_prompt)
        elif self.candidate_model is None:
            with unwrap_model_for_generation(self.model_wrapped, self.accelerator) as policy:
                completion_ids = self.sample(policy, generation_prompt_ids)
        else:
            with visiting(self.candidate_model, self.accelerator.device, self.args.offload_inactive_models):
                completion_ids = self.sample(self.candidate_model, generation_prompt_ids)
        completions = self.candidate_tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        if self.candidate_model is not None:
            completion_ids = self.policy_tokens(completions, completion_ids)
        return {
            "prompt_ids": [ids for ids in prompt_ids for _ in range(per_prompt)],
            "completion_ids": completion_ids,
            "completion": completions,
            "group": each_prompt_repeated(len(prompt_indices), per_prompt),
        }

    def sample(self, model: PreTrainedModel, prompt_ids: list[list[int]]) -> list[list[int]]:
        return generate_completions(
            model,
            prompt_ids,
            self.generation_config,
            self.args.generations_per_prompt,
            self.args.generation_batch_size,
            show_progress=not self._quiet(),
        )

    def policy_tokens(self, completions: list[str], candidate_ids: list[list[int]]) -> list[list[int]]:
        """The candidate model's completions in the policy's tokens; an ended completion ends with the policy's eos."""
        candidate_eos = self.generation_config.eos_token_id
        token_ids = self.processing_class(completions, add_special_tokens=False)["input_ids"]
        return [
            ids + ([self.end_token_id] if candidate and candidate[-1] in candidate_eos else [])
            for ids, candidate in zip(token_ids, candidate_ids)
        ]

    def reward_inputs(self, candidates: Candidates) -> dict:
        return completion_reward_inputs(candidates)

    def replace_candidate(self, candidates: Candidates, index: int, replacement: str) -> None:
        """A sample filter's cleaned text replaces the completion; it keeps its end-of-sequence token, if any."""
        ended = (
            bool(candidates["completion_ids"][index]) and candidates["completion_ids"][index][-1] in self.eos_token_ids
        )
        ids = self.processing_class(replacement, add_special_tokens=False)["input_ids"]
        candidates["completion_ids"][index] = ids + ([self.end_token_id] if ended else [])
        candidates["completion"][index] = replacement

    # ----------------------------------------------------------------------------------------------------------------
    # Ranking
    # ----------------------------------------------------------------------------------------------------------------

    def ranking_scores(self, candidates: Candidates, rewards: torch.Tensor) -> torch.Tensor:
        if self.args.beta == 0:
            return rewards
        examples = self.training_examples(candidates, range(len(rewards)))
        policy = self.accelerator.unwrap_model(self.model)
        log_probs = self.sequence_log_probs(policy, examples)
        if self.ref_model is not None:
            with visiting(self.ref_model, self.accelerator.device, self.args.offload_inactive_models):
                ref_log_probs = self.sequence_log_probs(self.ref_model, examples)
        else:
            with policy.disable_adapter():
                ref_log_probs = self.sequence_log_probs(policy, examples)
        scores = ranking.kl_penalized_scores(rewards, log_probs, ref_log_probs, self.args.beta)
        candidates["log_prob"], candidates["ref_log_prob"] = log_probs.tolist(), ref_log_probs.tolist()
        candidates["score"] = [None if math.isnan(score) else score for score in scores.tolist()]
        return scores

    @torch.no_grad()
    def sequence_log_probs(self, model: PreTrainedModel, examples: list[dict]) -> torch.Tensor:
        """log p(completion | prompt) of each example under `model`: the sum of its completion tokens' log-probs."""
        was_training = model.training
        model.eval()
        sums = []
        batch_size = self.args.generation_batch_size
        for start in range(0, len(examples), batch_size):
            token_log_probs, mask = completion_token_log_probs(
                model, self.data_collator(examples[start : start + batch_size])
            )
            sums.append((token_log_probs * mask).sum(dim=1).double().cpu())
        model.train(was_training)
        return torch.cat(sums)

    # ----------------------------------------------------------------------------------------------------------------
    # Fine-tuning and bookkeeping
    # ----------------------------------------------------------------------------------------------------------------

    def training_examples(self, candidates: Candidates, kept_indices) -> list[dict]:
        return [sft_example(candidates["prompt_ids"][i], candidates["completion_ids"][i]) for i in kept_indices]

    def batches_per_stage(self) -> int:
        """`epochs_per_stage` passes over the kept set, which the processes share."""
        batches_per_pass = math.ceil(
            self.args.prompts_per_stage / (self.args.per_device_train_batch_size * self.accelerator.num_processes)
        )
        return self.args.epochs_per_stage * batches_per_pass

    def model_samples(self, candidates: Candidates) -> torch.Tensor:
        if "source" not in candidates:
            return super().model_samples(candidates)
        return torch.tensor([source == "model" for source in candidates["source"]], dtype=torch.bool)

    def card_candidates(self) -> str:
        source = self.args.candidate_source
        if source == "dataset":
            return "ranks the completions of a candidate dataset for each prompt"
        return super().card_candidates() + (
            " together with the completions of a candidate dataset" if source == "both" else ""
        )

    def stage_file_columns(self, candidates: Candidates) -> dict[str, list]:
        columns = {name: candidates[name] for name in ("prompt_index", "prompt", "completion")}
        columns["completion_length"] = [len(ids) for ids in candidates["completion_ids"]]
        if "source" in candidates:
            columns["source"] = candidates["source"]
        if self.args.beta > 0:
            columns.update({name: candidates[name] for name in ("log_prob", "ref_log_prob", "score")})
        return columns

    def stage_metrics(self, candidates: Candidates, kept: torch.Tensor) -> dict:
        kept_texts = [text for text, is_kept in zip(candidates["completion"], kept.tolist()) if is_kept]
        metrics = {"kept_distinct_1": distinct_n(kept_texts, 1), "kept_distinct_2": distinct_n(kept_texts, 2)}
        sampled_lengths = [
            len(ids) for ids, sampled in zip(candidates["completion_ids"], self.model_samples(candidates)) if sampled
        ]
        if sampled_lengths:
            metrics["completion_length_mean"] = sum(sampled_lengths) / len(sampled_lengths)
        if "source" in candidates:
            from_dataset = [source == "dataset" for source, is_kept in zip(candidates["source"], kept) if is_kept]
            metrics["kept_from_dataset"] = sum(from_dataset) / len(from_dataset)
        if self.args.beta > 0:
            kl = torch.tensor(candidates["log_prob"]) - torch.tensor(candidates["ref_log_prob"])
            metrics["kl_mean"] = kl.mean().item()
        return metrics


def tokenize_prompts(dataset: Dataset, tokenizer, max_prompt_length: int | None) -> tuple[Dataset, list[list[int]]]:
    """Token ids of every prompt, and the dataset without the prompts longer than `max_prompt_length` tokens.

    Chat prompts are rendered with the tokenizer's chat template (with the generation prompt), whose text already
    holds the special tokens; plain-text prompts get the tokenizer's usual special tokens.
    """
    prompts = list(dataset["prompt"])
    if is_conversational({"prompt": prompts[0]}):
        texts = [maybe_apply_chat_template({"prompt": prompt}, tokenizer)["prompt"] for prompt in prompts]
        prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    else:
        prompt_ids = tokenizer(prompts)["input_ids"]
    if max_prompt_length is None:
        return dataset, prompt_ids
    short = [i for i, ids in enumerate(prompt_ids) if len(ids) <= max_prompt_length]
    if len(short) < len(prompt_ids):
        logger.warning(
            "Dropped %d of %d prompts longer than max_prompt_length=%d tokens.",
            len(prompt_ids) - len(short),
            len(prompt_ids),
            max_prompt_length,
        )
    if not short:
        raise ValueError(
            f"every prompt of train_dataset is longer than max_prompt_length={max_prompt_length} tokens: raise "
            "max_prompt_length or set it to None."
        )
    return dataset.select(short), [prompt_ids[i] for i in short]


def prompts_with_completions(
    dataset: Dataset, prompt_ids: list[list[int]], completions: dict[str, list[str]]
) -> tuple[Dataset, list[list[int]]]:
    """The prompts of `dataset` (and their token ids) that have completions in `completions`."""
    matched = [i for i, prompt in enumerate(dataset["prompt"]) if prompt_key(prompt) in completions]
    if len(matched) < len(dataset):
        logger.warning(
            "candidate_source='dataset': dropped %d of %d prompts that candidate_dataset has no completion for.",
            len(dataset) - len(matched),
            len(dataset),
        )
    return dataset.select(matched), [prompt_ids[i] for i in matched]


def completion_reward_inputs(candidates: Candidates) -> dict:
    """The completion keywords of TRL's reward-function convention: `completions=` (text, or one assistant message
    for chat prompts) and `completion_ids=`."""
    completions = candidates["completion"]
    if is_conversational({"prompt": candidates["prompt"][0]}):
        completions = [[{"role": "assistant", "content": text}] for text in completions]
    return {"completions": completions, "completion_ids": candidates["completion_ids"]}


def sampling_config(
    tokenizer,
    max_new_tokens: int,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_token_id: int | list[int] | None = None,
    bos_token_id: int | None = None,
) -> GenerationConfig:
    """Sampling up to `max_new_tokens`, ending at `eos_token_id` (default: the tokenizer's eos token)."""
    if eos_token_id is None:
        eos_token_id = tokenizer.eos_token_id
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos_token_id if isinstance(eos_token_id, list) else [eos_token_id],
        bos_token_id=tokenizer.bos_token_id if bos_token_id is None else bos_token_id,
    )


def candidate_generation_config(model: PreTrainedModel, tokenizer, args: RAFTConfig) -> GenerationConfig:
    """How candidates are sampled: the config's sampling settings, and the model's eos token(s) (the tokenizer's if
    the model names none)."""
    return sampling_config(
        tokenizer,
        args.max_completion_length,
        args.temperature,
        args.top_k,
        args.top_p,
        model.generation_config.eos_token_id,
        model.generation_config.bos_token_id,
    )
