"""Sampling candidates with vLLM, through TRL's `VLLMGeneration` (the engine TRL's GRPO uses): colocate or server
mode, tensor parallelism, sleep mode, and pushing the trained weights under PEFT, DeepSpeed and FSDP."""

from accelerate import Accelerator
from transformers import PreTrainedModel
from trl.generation.vllm_generation import VLLMGeneration
from trl.import_utils import is_vllm_available

from .raft_config import RAFTConfig


def check_vllm_settings(args: RAFTConfig) -> None:
    """Reject `use_vllm` where it cannot work, before any model loads."""
    if not is_vllm_available():
        raise ValueError(
            "use_vllm=True needs vLLM, which is not installed: `pip install vllm` on a GPU machine, or vLLM's CPU "
            "build (docs/vllm.md)."
        )
    if args.candidate_source == "dataset":
        raise ValueError("use_vllm=True with candidate_source='dataset': nothing is sampled; set use_vllm=False.")
    # Server mode, and tensor parallelism in colocate mode, gather the processes' prompts and cut the completions
    # back out in equal slices.
    uneven = args.prompts_drawn_per_stage % args.world_size
    if uneven and (args.vllm_mode == "server" or args.vllm_tensor_parallel_size > 1):
        raise ValueError(
            f"use_vllm with vllm_mode={args.vllm_mode!r} and vllm_tensor_parallel_size="
            f"{args.vllm_tensor_parallel_size} needs the {args.prompts_drawn_per_stage} prompts a stage draws to "
            f"split evenly over the {args.world_size} processes: change prompts_per_stage."
        )


def vllm_generation(model: PreTrainedModel, accelerator: Accelerator, tokenizer, args: RAFTConfig) -> VLLMGeneration:
    """A vLLM engine for `model` (loaded from its `name_or_path`), sampling as `args` says."""
    return VLLMGeneration(
        model=model,
        accelerator=accelerator,
        processing_class=tokenizer,
        mode=args.vllm_mode,
        server_base_url=args.vllm_server_base_url,
        tensor_parallel_size=args.vllm_tensor_parallel_size,
        gpu_memory_utilization=args.vllm_gpu_memory_utilization,
        enable_sleep_mode=args.vllm_enable_sleep_mode,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p or 0.0,
        repetition_penalty=args.repetition_penalty,
        max_completion_length=args.max_completion_length,
        generation_kwargs=args.generation_kwargs,
        trust_remote_code=args.trust_remote_code,
    )


def push_weights(generation: VLLMGeneration) -> None:
    """The policy's current weights into vLLM, by TRL's `sync_weights` (merged from PEFT, gathered from FSDP and
    DeepSpeed), but for a colocated vLLM on CPUs.

    TRL writes each tensor with the vLLM model's `load_weights`. vLLM's CPU build (which a colocated engine on a CPU
    process is) repacks every linear layer's weight for its kernels once it has loaded and drops the original, which
    `load_weights` then cannot write into ("'Parameter' object has no attribute 'weight_loader'"); there the weights
    go through vLLM's in-place reload, which restores each layer as a checkpoint holds it, loads the tensors and packs
    them again.
    """
    if generation.mode != "colocate" or generation.accelerator.device.type != "cpu":
        generation.sync_weights()
        return
    runner = generation.llm.llm_engine.model_executor.driver_worker.model_runner
    runner.reload_weights(weights_iterator=generation._iter_named_params(), is_checkpoint_format=True)
    generation.llm.reset_prefix_cache()


def sample_with_vllm(
    generation: VLLMGeneration,
    prompt_ids: list[list[int]],
    per_prompt: int,
    sync_weights: bool = True,
    with_log_probs: bool = False,
):
    """`per_prompt` completions of each prompt, prompt-major, from vLLM; with `sync_weights` it first takes the
    model's current weights (which the last stage's fine-tuning changed). With `with_log_probs`, also vLLM's log-prob
    of each sampled token (None per completion where vLLM returned none), for the importance-sampling correction."""
    if sync_weights:
        push_weights(generation)
    _, completion_ids, log_probs, _ = generation.generate(
        prompts=[ids for ids in prompt_ids for _ in range(per_prompt)], images=None, num_generations=per_prompt
    )
    completion_ids = [list(ids) for ids in completion_ids]
    if not with_log_probs:
        return completion_ids
    # Each token's entry lists log-probs best first with the sampled token's first (logprobs=0 returns only it).
    sampled = [
        None if rows is None else [row[0] for row in rows] for rows in (log_probs or [None] * len(completion_ids))
    ]
    return completion_ids, sampled
