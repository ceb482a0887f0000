"""RAFTTrainer: the RAFT stage cycle (stage_trainer.py) for causal language models.

What is specific to language models: sampling completions with `generate`, the KL-penalised ranking score, and
the SFT loss, which is the model's own causal-LM loss with the prompt and padding masked out of the labels, i.e.
the mean negative log-likelihood over completion tokens (`reference.sft_loss`).
"""

import copy
import itertools
import math
from collections import defaultdict
from collections.abc import Callable

import torch
from accelerate.utils import gather_object
from datasets import Dataset
from peft import PeftConfig, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedModel
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from . import losses
from .candidate_dataset import completions_by_prompt, prompt_key, prompts_with_completions
from .memory import eval_mode, move_models, policy_for_generation, visiting
from .metrics import distinct_n
from .models import resolve_model_name
from .raft_config import RAFTConfig, as_raft_config
from .rewards import as_reward_functions, one_reward_argument
from .sequences import (
    POLICY_LOSS_KEYS,
    PolicyLossCollator,
    TextCandidates,
    candidate_generation_config,
    cast_lm_head_to_fp32,
    completion_reward_inputs,
    completion_token_log_probs,
    disable_dropout,
    generate_completions,
    high_entropy_mask,
    left_padded,
    load_tokenizer,
    output_layer_gradient_norms,
    per_token_log_probs,
    sampling_logits,
    sft_example,
    tokenize_prompts,
    truncated_flags,
)
from .stage_trainer import StageTrainer
from .stages import selection
from .stages.prompts import each_prompt_repeated, validate_prompt_dataset
from .vllm_sampling import check_vllm_settings, sample_with_vllm, vllm_generation


class RAFTTrainer(StageTrainer):
    """RAFT (Reward rAnked FineTuning) for causal language models.

    The first nine parameters are `trl.GRPOTrainer`'s, in its order; the others are keyword-only.

    Args:
        model (`str` or `PreTrainedModel`): the policy, or the id / path to load it from.
        reward_funcs: a reward function (TRL's convention, see `raft_trainer.rewards`), a reward-model id or
            `PreTrainedModel` (sequence classification, `num_labels=1`), or a list of these weighted by
            `args.reward_weights`. `reward_fn=` is accepted as an alias.
        args (`RAFTConfig`): the configuration; a trl `GRPOConfig` is carried over (`RAFTConfig.from_grpo_config`).
        train_dataset (`datasets.Dataset`): prompts in a `prompt` column, as text or as chat messages; the other
            columns are passed to the reward functions.
        eval_dataset (`datasets.Dataset` or a dict of them, *optional*): held-out prompts for `evaluate()` (and
            `eval_strategy`), in the same form.
        processing_class: the policy's tokenizer (loaded from the model's path when omitted).
        reward_processing_classes: tokenizers of reward models given as `PreTrainedModel`, one per reward function.
        callbacks, optimizers: as in `transformers.Trainer`.
        peft_config (`peft.PeftConfig`, *optional*): train a PEFT adapter (e.g. LoRA) on the policy instead of all its
            weights; with `beta > 0` the reference log-probs come from the same model with the adapter disabled, so
            no second copy is held. `save_model` then writes the adapter.
        sample_filter: called before ranking with the reward-function keywords; returns per candidate `True`
            (keep), `False` (drop: never selected) or replacement completion text (paper appendix A.2).
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
        reward_funcs=None,
        args: RAFTConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class=None,
        reward_processing_classes=None,
        callbacks=None,
        optimizers=(None, None),
        *,
        peft_config: PeftConfig | None = None,
        sample_filter=None,
        candidate_model: str | PreTrainedModel | None = None,
        candidate_processing_class=None,
        prompt_for_generation: Callable | None = None,
        candidate_dataset: Dataset | None = None,
        reward_fn=None,
    ):
        reward_funcs = one_reward_argument(reward_funcs, reward_fn)
        args = as_raft_config(args)
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = RAFTConfig(output_dir=f"{name.split('/')[-1]}-RAFT")
        # Everything about the prompts is checked before any model is loaded.
        self.check_arguments(
            args, train_dataset, eval_dataset, candidate_dataset, candidate_model, prompt_for_generation
        )
        model_id = resolve_model_name(model) if isinstance(model, str) else None  # the packaged SmolLM2 by name
        processing_class = load_tokenizer(model_id or model.name_or_path, processing_class, args.trust_remote_code)
        train_dataset, self.prompt_ids = tokenize_prompts(
            train_dataset, processing_class, args.max_prompt_length, args.chat_template_kwargs
        )
        dataset_completions = None
        if candidate_dataset is not None:
            dataset_completions = completions_by_prompt(candidate_dataset, train_dataset)
            if args.candidate_source == "dataset":  # a prompt without completions would have nothing to rank
                train_dataset, self.prompt_ids = prompts_with_completions(
                    train_dataset, self.prompt_ids, dataset_completions
                )

        model_init_kwargs = args.from_pretrained_kwargs
        if model_id is not None:
            model = AutoModelForCausalLM.from_pretrained(model_id, **model_init_kwargs)

        if peft_config is not None:
            model = get_peft_model(model, peft_config)
        if args.dropout_disabled:
            # The sampling log-probs are taken without dropout; with it on in training the ratio would not start at 1.
            # After the adapter is added, so that its own dropout is off too.
            disable_dropout(model)
        # The reference model is the frozen initial policy; it is only needed for the KL-penalised score and the KL
        # loss. With an adapter it is the base model under the adapter.
        self.ref_model = None
        if (args.beta > 0 or args.kl_loss_coef > 0) and peft_config is None:
            self.ref_model = (
                AutoModelForCausalLM.from_pretrained(model_id, **model_init_kwargs)
                if model_id is not None
                else copy.deepcopy(model)
            )
            self.ref_model.eval().requires_grad_(False)
        if args.cast_lm_head_to_fp32:
            for policy_or_reference in (model, self.ref_model):
                if policy_or_reference is not None:
                    cast_lm_head_to_fp32(policy_or_reference)

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
                candidate_model = AutoModelForCausalLM.from_pretrained(
                    resolve_model_name(candidate_model), **model_init_kwargs
                )
            self.candidate_model = candidate_model.eval().requires_grad_(False)
            self.candidate_tokenizer = load_tokenizer(
                candidate_model.name_or_path, candidate_processing_class, args.trust_remote_code
            )
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
            _, self.generation_prompt_ids = tokenize_prompts(
                generation_prompts, self.candidate_tokenizer, None, args.chat_template_kwargs
            )
        super().__init__(
            model,
            as_reward_functions(
                reward_funcs,
                reward_processing_classes,
                show_progress=not args.disable_tqdm,
                batch_size=args.generation_batch_size,
                trust_remote_code=args.trust_remote_code,
            ),
            args,
            train_dataset,
            sample_filter=sample_filter,
            processing_class=processing_class,
            data_collator=PolicyLossCollator(
                DataCollatorForLanguageModeling(pad_token_id=processing_class.pad_token_id)
            ),
            callbacks=callbacks,
            optimizers=optimizers,
            eval_dataset=eval_dataset,
        )
        if not args.offload_inactive_models:
            move_models((self.ref_model, self.candidate_model), self.accelerator.device)
        self._loss_metrics = defaultdict(list)  # per optimizer step, averaged into the next log record
        self.vllm_generation = None
        if args.use_vllm:
            self.vllm_generation = vllm_generation(self.model, self.accelerator, processing_class, args)

    @staticmethod
    def check_arguments(
        args: RAFTConfig,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        candidate_dataset=None,
        candidate_model=None,
        prompt_for_generation: Callable | None = None,
        *,
        datasets_loaded: bool = True,
    ) -> None:
        """Reject what RAFTTrainer cannot run, before any model is loaded (a mistake costs a second, not a download):
        the data and how the arguments go together; the values alone are RAFTConfig's own checks. raft-train calls
        it with `datasets_loaded=False` before it loads anything (`candidate_dataset` then stands for its name)."""
        if datasets_loaded:
            validate_prompt_dataset(train_dataset)
            for name, dataset in (eval_dataset if isinstance(eval_dataset, dict) else {"": eval_dataset}).items():
                if dataset is not None:
                    validate_prompt_dataset(dataset, f"eval_dataset{f'[{name!r}]' if name else ''}")
        if prompt_for_generation is not None and not callable(prompt_for_generation):
            raise ValueError(f"prompt_for_generation must be a callable (got {type(prompt_for_generation).__name__}).")
        given = candidate_dataset is not None
        if given != (args.candidate_source != "model"):
            raise ValueError(
                f"candidate_source={args.candidate_source!r} with candidate_dataset "
                f"{'given' if given else 'missing'}: pass a candidate_dataset (raft-train: --candidate_dataset_name) "
                "with candidate_source 'dataset' or 'both', and none with 'model'."
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

    # ----------------------------------------------------------------------------------------------------------------
    # Generation
    # ----------------------------------------------------------------------------------------------------------------

    def generate(
        self, prompt_indices: list[int], prompts: list, per_prompt: list[int] | None = None
    ) -> TextCandidates:
        return self.gathered_candidates(prompt_indices, per_prompt)

    def gradient_norms(self, candidates: TextCandidates, indices: list[int]) -> list[float]:
        """Each candidate's gradient norm of its completion's NLL on the policy's output layer (one forward)."""
        policy = self.accelerator.unwrap_model(self.model)
        examples = self.sft_examples(candidates, indices)
        return output_layer_gradient_norms(policy, examples, self.data_collator, self.log_prob_batch_size)

    def scored_candidates(self, candidates: TextCandidates, columns: dict[str, list]) -> dict:
        scored = super().scored_candidates(candidates, columns)
        if self.args.reads_sampling_log_probs:
            # pi_old: the policy at the stage's start, which sampled it; one batched forward, no second model. Taken
            # after the sample filter, which may have replaced completions, so that they are the trained tokens'.
            policy = self.accelerator.unwrap_model(self.model)
            examples = self.sft_examples(candidates, range(len(candidates["completion_ids"])))
            candidates["old_log_probs"], candidates["entropy"] = per_token_log_probs(
                policy,
                examples,
                self.data_collator,
                self.log_prob_batch_size,
                self.args.temperature,
                self.args.repetition_penalty,
            )
        if self.args.corrects_vllm_sampling:
            # vLLM's log-probs of its own samples against the policy's: their ratio corrects the sampler's drift.
            candidates["importance_weights"] = [
                losses.importance_sampling_weights(
                    old,
                    sampled,
                    self.args.vllm_importance_sampling_mode,
                    self.args.vllm_importance_sampling_clip_min,
                    self.args.vllm_importance_sampling_clip_max,
                )
                for old, sampled in zip(candidates["old_log_probs"], candidates["sampling_log_probs"])
            ]
        return scored

    def gathered_candidates(self, prompt_indices: list[int], per_prompt: list[int] | None = None) -> TextCandidates:
        """The policy's samples of the prompts (`per_prompt[i]` of prompt i when given), and their completions from
        the candidate dataset if there is one."""
        candidates = {"prompt_ids": [], "completion_ids": [], "completion": [], "truncated": [], "prompt_position": []}
        if self.vllm_generation is not None:
            candidates["sampling_log_probs"] = []
        if self.args.candidate_source != "dataset":
            candidates = self.sampled_candidates(prompt_indices, per_prompt)
        if self.dataset_candidates is not None:
            candidates["source"] = ["model"] * len(candidates["prompt_position"])
            for position, index in enumerate(prompt_indices):
                for text, completion_ids in self.dataset_candidates[index]:
                    candidates["prompt_ids"].append(self.prompt_ids[index])
                    candidates["completion_ids"].append(completion_ids)
                    candidates["completion"].append(text)
                    candidates["truncated"].append(False)  # a dataset completion is a whole answer
                    candidates["prompt_position"].append(position)
                    candidates["source"].append("dataset")
                    if self.vllm_generation is not None:
                        candidates["sampling_log_probs"].append(None)  # not sampled: no correction
        return candidates

    def sampled_candidates(self, prompt_indices: list[int], per_prompt: list[int] | None = None) -> TextCandidates:
        """`generations_per_prompt` completions of each prompt (`per_prompt[i]` of prompt i when given), sampled by
        the policy or the candidate model."""
        counts = per_prompt or [self.args.generations_per_prompt] * len(prompt_indices)
        prompt_of = each_prompt_repeated(len(prompt_indices), counts)
        prompt_ids = [self.prompt_ids[prompt_indices[i]] for i in prompt_of]
        if len(set(counts)) == 1:  # the same count for all: each prompt is sent once, with its number of samples
            sent, samples_each = [self.generation_prompt_ids[i] for i in prompt_indices], counts[0]
        else:  # each prompt once per sample
            sent, samples_each = [self.generation_prompt_ids[prompt_indices[i]] for i in prompt_of], 1
        sampled = {}
        if self.vllm_generation is not None:
            completion_ids, sampled["sampling_log_probs"] = sample_with_vllm(
                self.vllm_generation, sent, samples_each, with_log_probs=True
            )
        elif self.candidate_model is None:
            with policy_for_generation(self.model_wrapped, self.accelerator) as policy:
                completion_ids = self.sample(policy, sent, samples_each)
        else:
            with visiting(self.candidate_model, self.accelerator.device, self.args.offload_inactive_models):
                completion_ids = self.sample(self.candidate_model, sent, samples_each)
        completions = self.candidate_tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        truncated = truncated_flags(completion_ids, self.generation_config.eos_token_id)
        if self.candidate_model is not None:
            completion_ids = self.policy_tokens(completions, completion_ids)
        return {
            "prompt_ids": prompt_ids,
            "completion_ids": completion_ids,
            "completion": completions,
            "truncated": truncated,
            "prompt_position": prompt_of,
            **sampled,
        }

    def evaluation_candidates(self, prompts: list) -> TextCandidates:
        """`num_generations_eval` completions (default one) per held-out prompt, sampled by the policy with the
        training settings."""
        _, prompt_ids = tokenize_prompts(
            Dataset.from_dict({"prompt": prompts}), self.processing_class, None, self.args.chat_template_kwargs
        )
        per_prompt = self.args.num_generations_eval or 1
        with policy_for_generation(self.model_wrapped, self.accelerator) as policy:
            completion_ids = generate_completions(
                policy,
                prompt_ids,
                self.generation_config,
                per_prompt,
                self.args.generation_batch_size,
                show_progress=False,
                continuous_batching=self.args.continuous_batching,
            )
        prompt_of = each_prompt_repeated(len(prompts), per_prompt)
        return {
            "prompt_ids": [prompt_ids[i] for i in prompt_of],
            "completion_ids": completion_ids,
            "completion": self.processing_class.batch_decode(completion_ids, skip_special_tokens=True),
            "prompt_position": prompt_of,
        }

    def evaluation_metrics(self, candidates: TextCandidates) -> dict[str, float]:
        lengths = torch.tensor([len(ids) for ids in candidates["completion_ids"]], dtype=torch.float64)
        return {"completion_length": torch.cat(gather_object([lengths])).mean().item()}

    def sample(self, model: PreTrainedModel, prompt_ids: list[list[int]], per_prompt: int) -> list[list[int]]:
        return generate_completions(
            model,
            prompt_ids,
            self.generation_config,
            per_prompt,
            self.args.generation_batch_size,
            show_progress=not self._quiet(),
            continuous_batching=self.args.continuous_batching,
        )

    def policy_tokens(self, completions: list[str], candidate_ids: list[list[int]]) -> list[list[int]]:
        """The candidate model's completions in the policy's tokens; an ended completion ends with the policy's eos."""
        candidate_eos = self.generation_config.eos_token_id
        token_ids = self.processing_class(completions, add_special_tokens=False)["input_ids"]
        return [
            ids + ([self.end_token_id] if candidate and candidate[-1] in candidate_eos else [])
            for ids, candidate in zip(token_ids, candidate_ids)
        ]

    def reward_inputs(self, candidates: TextCandidates) -> dict:
        return completion_reward_inputs(candidates)

    def replace_candidate(self, candidates: TextCandidates, index: int, replacement: str) -> None:
        """A sample filter's cleaned text replaces the completion; it keeps its end-of-sequence token, if any."""
        ended = (
            bool(candidates["completion_ids"][index]) and candidates["completion_ids"][index][-1] in self.eos_token_ids
        )
        ids = self.processing_class(replacement, add_special_tokens=False)["input_ids"]
        candidates["completion_ids"][index] = ids + ([self.end_token_id] if ended else [])
        candidates["completion"][index] = replacement
        if self.vllm_generation is not None:
            candidates["sampling_log_probs"][index] = None  # no longer vLLM's sample: no correction

    # ----------------------------------------------------------------------------------------------------------------
    # Ranking and selection
    # ----------------------------------------------------------------------------------------------------------------

    def ranking_scores(self, candidates: TextCandidates, rewards: torch.Tensor) -> torch.Tensor:
        if self.args.beta == 0:
            return rewards
        examples = self.sft_examples(candidates, range(len(rewards)))
        policy = self.accelerator.unwrap_model(self.model)
        log_probs = self.sequence_log_probs(policy, examples)
        if self.ref_model is not None:
            with visiting(self.ref_model, self.accelerator.device, self.args.offload_inactive_models):
                ref_log_probs = self.sequence_log_probs(self.ref_model, examples)
        else:
            with policy.disable_adapter():
                ref_log_probs = self.sequence_log_probs(policy, examples)
        scores = selection.kl_penalized_scores(rewards, log_probs, ref_log_probs, self.args.beta)
        candidates["log_prob"], candidates["ref_log_prob"] = log_probs.tolist(), ref_log_probs.tolist()
        candidates["score"] = [None if math.isnan(score) else score for score in scores.tolist()]
        return scores

    @torch.no_grad()
    def sequence_log_probs(self, model: PreTrainedModel, examples: list[dict]) -> torch.Tensor:
        """log p(completion | prompt) of each example under `model`: the sum of its completion tokens' log-probs."""
        with eval_mode(model):
            sums = []
            batch_size = self.log_prob_batch_size  # full-vocabulary logits: a training batch's worth at a time
            for start in range(0, len(examples), batch_size):
                token_log_probs, mask = completion_token_log_probs(
                    model, self.data_collator(examples[start : start + batch_size])
                )
                sums.append((token_log_probs * mask).sum(dim=1).double().cpu())
        return torch.cat(sums)

    # ----------------------------------------------------------------------------------------------------------------
    # Fine-tuning and bookkeeping
    # ----------------------------------------------------------------------------------------------------------------

    @property
    def log_prob_batch_size(self) -> int:
        """Sequences per forward pass when log-probs and entropies are read off full-vocabulary logits: the
        training batch size, which is sized for the memory those logits take (a generation batch may be far larger)."""
        return self.args.per_device_train_batch_size

    def sft_examples(self, candidates: TextCandidates, indices) -> list[dict]:
        return [sft_example(candidates["prompt_ids"][i], candidates["completion_ids"][i]) for i in indices]

    def training_examples(self, candidates: TextCandidates, kept_indices) -> list[dict]:
        """The SFT examples of the kept candidates; for RAFT++ and Reinforce-Rej with their sampling log-probs and
        advantage (1 for RAFT++'s accepted samples, the reward for Reinforce-Rej), and with the KL loss with the
        reference model's log-probs (computed once a stage, the reference being frozen)."""
        kept_indices = list(kept_indices)
        examples = self.sft_examples(candidates, kept_indices)
        if self.args.uses_policy_ratio:
            advantages = [self.advantage(candidates["reward"][i]) for i in kept_indices]
            if self.args.advantage_baseline == "group_mean":
                advantages = losses.minus_group_mean(advantages, [candidates["group"][i] for i in kept_indices])
            for example, i, advantage in zip(examples, kept_indices, advantages):
                example["old_log_probs"] = left_padded(candidates["old_log_probs"][i], len(example["input_ids"]))
                example["advantages"] = advantage
                if self.args.corrects_vllm_sampling:
                    weights = candidates["importance_weights"][i]
                    example["importance_weights"] = left_padded(weights, len(example["input_ids"]))
        if self.args.kl_loss_coef > 0:
            for example, log_probs in zip(examples, self.kept_set_reference_log_probs(examples)):
                example["ref_log_probs"] = left_padded(log_probs, len(example["input_ids"]))
        return examples

    def advantage(self, reward: float) -> float:
        """A kept sample's advantage: 1 for RAFT++ (every kept sample is accepted); for Reinforce-Rej the reward, or
        with `reward_threshold` +1 / -1 for an accepted / rejected sample (the paper's reward for a verifiable
        answer, whatever values the reward function uses)."""
        if self.args.loss_type != "reinforce_rej":
            return 1.0
        if self.args.reward_threshold is None:
            return reward
        return 1.0 if reward >= self.args.reward_threshold else -1.0

    def kept_set_reference_log_probs(self, examples: list[dict]) -> list[list[float]]:
        """The reference log-probs of the whole kept set, which every process trains on: each process computes its
        share and they are gathered. A sharded policy (FSDP, DeepSpeed) is the reference under PEFT, and its forward
        passes gather parameters from every process, so there every process computes the whole set in step."""
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return self.reference_log_probs(examples)
        return list(itertools.chain(*gather_object([self.reference_log_probs(self.process_share(examples))])))

    def reference_log_probs(self, examples: list[dict]) -> list[list[float]]:
        """Each example's completion-token log-probs under the frozen initial model, in the loss's distribution (at the
        sampling temperature and repetition penalty for the clipped losses)."""
        sampling = (self.args.temperature, self.args.repetition_penalty) if self.args.uses_policy_ratio else (1.0, 1.0)
        batch_size = self.log_prob_batch_size
        if self.ref_model is not None:
            with visiting(self.ref_model, self.accelerator.device, self.args.offload_inactive_models):
                return per_token_log_probs(self.ref_model, examples, self.data_collator, batch_size, *sampling)[0]
        policy = self.accelerator.unwrap_model(self.model)
        with policy.disable_adapter():
            return per_token_log_probs(policy, examples, self.data_collator, batch_size, *sampling)[0]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """RAFT: the model's own causal-LM loss on the kept samples (the SFT loss). RAFT++ and Reinforce-Rej: the
        PPO-clipped importance-weighted loss (`losses.clipped_policy_loss`). Either may add the KL loss."""
        args = self.args
        if not args.uses_policy_ratio and args.kl_loss_coef == 0:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        extras = {name: inputs.pop(name) for name in POLICY_LOSS_KEYS if name in inputs}
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        labels = inputs["labels"][:, 1:]
        mask = labels != -100
        logits = outputs.logits[:, :-1]
        if args.uses_policy_ratio:  # the distribution the stage was sampled from
            logits = sampling_logits(logits, inputs["input_ids"], args.temperature, args.repetition_penalty)
        log_probs = losses.selected_token_log_probs(logits, labels)
        # Normalised as the Trainer normalises a model's own loss: by the completion tokens of every micro-batch of
        # the optimizer step (`num_items_in_batch`), so that neither gradient accumulation nor how the kept set falls
        # into batches changes the update. Without it (a model that takes no loss keywords) each micro-batch is a
        # token mean, which the Trainer divides by the accumulation steps.
        num_tokens = num_items_in_batch  # a count over the whole step, or None
        if args.uses_policy_ratio:
            epsilon_high = args.epsilon if args.epsilon_high is None else args.epsilon_high
            token_weights = extras["importance_weights"][:, 1:] if "importance_weights" in extras else None
            entropy = None
            if args.top_entropy_quantile < 1 or args.entropy_coef > 0:
                entropy = losses.entropy_from_logits(logits)
            if args.top_entropy_quantile < 1:
                # Only the high-entropy "forking" tokens are trained (the quantile over every process's tokens).
                trained = high_entropy_mask(entropy.detach(), mask, args.top_entropy_quantile, self.accelerator)
                token_weights = trained.to(log_probs.dtype) * (1.0 if token_weights is None else token_weights)
            loss, clip_fraction, ratio_mean = losses.clipped_policy_loss(
                log_probs,
                extras["old_log_probs"][:, 1:],
                extras["advantages"],
                mask,
                args.epsilon,
                epsilon_high,
                dual_clip=args.dual_clip,
                num_tokens=num_tokens,
                token_weights=token_weights,
            )
            self._loss_metrics["clip_fraction"].append(clip_fraction.item())
            self._loss_metrics["ratio_mean"].append(ratio_mean.item())
            if args.entropy_coef > 0:
                # The bonus acts on the tokens the policy term trains, normalised like it.
                trained = mask if args.top_entropy_quantile == 1 else mask & (token_weights > 0)
                loss = loss - args.entropy_coef * losses.token_mean(entropy, trained, num_tokens)
        else:
            loss = -losses.token_mean(log_probs, mask, num_tokens)
        if args.kl_loss_coef > 0:
            kl = losses.low_var_kl(log_probs, extras["ref_log_probs"][:, 1:])
            loss = loss + args.kl_loss_coef * losses.token_mean(kl, mask, num_tokens)
            self._loss_metrics["kl_loss"].append(losses.token_mean(kl.detach(), mask).item())
        if num_tokens is not None and args.average_tokens_across_devices and self.accelerator.num_processes > 1:
            # The count is of every process's tokens and the processes' gradients are averaged: scaled back up, as
            # the Trainer does for a model's own loss.
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # The loss's own metrics (clip fraction, mean ratio, KL), averaged over the steps since the last log.
        logs = {**logs, **{name: sum(values) / len(values) for name, values in self._loss_metrics.items() if values}}
        self._loss_metrics.clear()
        super().log(logs, start_time)

    def batches_per_stage(self) -> int:
        """`epochs_per_stage` passes of `samples_per_stage` kept samples (default `prompts_per_stage`), which the
        processes share."""
        samples = self.args.samples_per_stage or self.args.prompts_per_stage
        batches_per_pass = math.ceil(
            samples / (self.args.per_device_train_batch_size * self.accelerator.num_processes)
        )
        return self.args.epochs_per_stage * batches_per_pass

    def model_samples(self, candidates: TextCandidates) -> torch.Tensor:
        if self.dataset_candidates is None:
            return super().model_samples(candidates)
        return torch.tensor([source == "model" for source in candidates["source"]], dtype=torch.bool)

    def stage_file_columns(self, candidates: TextCandidates) -> dict[str, list]:
        columns = {name: candidates[name] for name in ("prompt_index", "prompt", "completion")}
        columns["completion_length"] = [len(ids) for ids in candidates["completion_ids"]]
        if self.dataset_candidates is not None:
            columns["source"] = candidates["source"]
        if self.args.mask_truncated_completions:
            columns["truncated"] = candidates["truncated"]
        if self.args.beta > 0:
            columns.update({name: candidates[name] for name in ("log_prob", "ref_log_prob", "score")})
        if self.args.uses_policy_ratio:
            columns["old_log_probs"] = candidates["old_log_probs"]  # per completion token, at the sampling temperature
        return columns

    def stage_metrics(self, candidates: TextCandidates, kept: torch.Tensor) -> dict:
        kept_texts = [text for text, is_kept in zip(candidates["completion"], kept.tolist()) if is_kept]
        metrics = {"kept_distinct_1": distinct_n(kept_texts, 1), "kept_distinct_2": distinct_n(kept_texts, 2)}
        sampled = self.model_samples(candidates)  # the length, entropy and truncation figures are of these
        if sampled.any():
            sampled_lengths = [
                len(ids) for ids, is_sampled in zip(candidates["completion_ids"], sampled) if is_sampled
            ]
            metrics["completion_length_mean"] = sum(sampled_lengths) / len(sampled_lengths)
            metrics["truncated_share"] = torch.tensor(candidates["truncated"])[sampled].float().mean().item()
        if self.dataset_candidates is not None:
            from_dataset = [source == "dataset" for source, is_kept in zip(candidates["source"], kept) if is_kept]
            metrics["kept_from_dataset"] = sum(from_dataset) / max(1, len(from_dataset))
        if self.args.beta > 0:
            kl = torch.tensor(candidates["log_prob"]) - torch.tensor(candidates["ref_log_prob"])
            metrics["kl_mean"] = kl.mean().item()
        if self.args.reads_sampling_log_probs:  # the sampling distribution's mean token entropy on the model's samples
            entropies = [value for value, is_sampled in zip(candidates["entropy"], sampled) if is_sampled]
            metrics["entropy"] = sum(entropies) / max(1, len(entropies))
        if self.args.loss_type == "reinforce_rej":
            groups = torch.tensor(candidates["group"])
            metrics["groups_dropped"] = 1 - len(torch.unique(groups[kept])) / len(torch.unique(groups))
        return metrics
