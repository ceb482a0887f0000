"""Sampling candidates with vLLM, through TRL's `VLLMGeneration` (the engine TRL's GRPO uses): colocate or server
mode, tensor parallelism, sleep mode, and pushing the trained weights under PEFT, DeepSpeed and FSDP."""

from accelerate import Accelerator
from transformers import PreTrainedModel
from trl.generation.vllm_generation import VLLMGeneration
from trl.import_utils import is_vllm_available

from .raft_config import RAFTConfig


def require_vllm() -> None:
    if not is_vllm_available():
        raise ValueError("use_vllm=True needs vLLM, which is not installed: `pip install vllm` (on a GPU machine).")


def vllm_generation(model: PreTrainedModel, accelerator: Accelerator, tokenizer, args: RAFTConfig) -> VLLMGeneration:
    """A vLLM engine for `model` (loaded from its `name_or_path`), sampling as `args` says."""
    if args.vllm_mode == "server" and args.prompts_drawn_per_stage % accelerator.num_processes:
        raise ValueError(
            f"vllm_mode='server' needs the {args.prompts_drawn_per_stage} prompts a stage draws to split evenly over "
            f"the {accelerator.num_processes} processes: change prompts_per_stage."
        )
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
        max_completion_length=args.max_completion_length,
    )


def sample_with_vllm(generation: VLLMGeneration, prompt_ids: list[list[int]], per_prompt: int) -> list[list[int]]:
    """`per_prompt` completions of each prompt, prompt-major, from vLLM holding the model's current weights."""
    generation.sync_weights()  # the model may have changed since vLLM last saw it (the last stage's fine-tuning)
    _, completion_ids, _, _ = generation.generate(
        prompts=[ids for ids in prompt_ids for _ in range(per_prompt)], images=None, num_generations=per_prompt
    )
    return [list(ids) for ids in completion_ids]
