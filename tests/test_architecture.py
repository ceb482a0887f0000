"""The import rule of docs/architecture.md, checked on the source: a module's place says what it may import."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "raft_trainer"
TRAINER_MODULES = {
    "raft_trainer.stage_trainer",
    "raft_trainer.raft_trainer",
    "raft_trainer.diffusion.diffusion_raft_trainer",
}
# The diffusion stack: only raft_trainer.diffusion may import it.
DIFFUSION_PACKAGES = {"diffusers", "open_clip", "torchvision"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module, imported names) for each import statement of the file, at any depth."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.append((base, [alias.name for alias in node.names]))
    return found


def python_files(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def library_files() -> list[Path]:
    return python_files("raft_trainer")


def test_nothing_imports_a_helper_out_of_a_trainer_module():
    import importlib

    offences = []
    for path in python_files("raft_trainer", "tests", "examples", "benchmarks"):
        for module, names in imports(path):
            if module not in TRAINER_MODULES or module == module_name(path):
                continue
            trainer_module = importlib.import_module(module)
            offences += [
                f"{path.relative_to(ROOT)}: {module}.{name}"
                for name in names
                if not isinstance(getattr(trainer_module, name), type)
            ]
    assert offences == []


@pytest.mark.parametrize("module", sorted(TRAINER_MODULES))
def test_a_trainer_module_holds_its_class_only(module):
    path = ROOT / (module.replace(".", "/") + ".py")
    definitions = [
        node
        for node in ast.parse(path.read_text()).body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign))
    ]
    assert [type(node).__name__ for node in definitions] == ["ClassDef"]


def test_the_maths_and_the_stage_functions_stand_on_their_own():
    # reference.py: numpy only; losses.py and stages/: no trainer, config, report, task or modality.
    allowed_everywhere = {"__future__", "collections", "math", "typing", "dataclasses", "itertools", "json", "os"}
    for module, _ in imports(PACKAGE / "reference.py"):
        assert module.split(".")[0] in allowed_everywhere | {"numpy"}, module
    pure = [PACKAGE / "losses.py", *sorted((PACKAGE / "stages").glob("*.py"))]
    allowed_in_package = {"raft_trainer.stages", "raft_trainer.files", "raft_trainer.memory", "raft_trainer.rewards"}
    for path in pure:
        for module, _ in imports(path):
            if module.startswith("raft_trainer"):
                assert any(module == allowed or module.startswith(allowed + ".") for allowed in allowed_in_package), (
                    f"{path.name} imports {module}"
                )


def test_only_the_diffusion_package_imports_the_diffusion_stack():
    for path in library_files():
        if module_name(path).startswith("raft_trainer.diffusion"):
            continue
        for module, _ in imports(path):
            assert not module.startswith("raft_trainer.diffusion"), f"{path.relative_to(ROOT)} imports {module}"
            assert module.split(".")[0] not in DIFFUSION_PACKAGES, f"{path.relative_to(ROOT)} imports {module}"


def test_no_module_imports_a_command_line_entry_point():
    for path in library_files():
        for module, _ in imports(path):
            assert module not in {"raft_trainer.cli", "raft_trainer.compare.cli"}, f"{path.relative_to(ROOT)}"


def test_reporting_and_evaluation_sit_below_the_trainers():
    # Imports run downward: what reports on a run or evaluates a policy is handed the trainer, never imports one.
    below = [
        *(PACKAGE / "reporting").glob("*.py"),
        PACKAGE / "evaluation.py",
        PACKAGE / "diffusion/image_evaluation.py",
    ]
    for path in below:
        for module, _ in imports(path):
            assert module not in TRAINER_MODULES, f"{path.relative_to(ROOT)} imports {module}"


def test_an_install_without_the_diffusion_extra_trains_a_language_model_and_says_which_extra_to_add(tmp_path):
    # diffusers, open_clip and torchvision made unimportable, as in an install without the `diffusion` extra.
    script = f"""
import sys
for name in {sorted(DIFFUSION_PACKAGES)!r}:
    sys.modules[name] = None
import torch
from datasets import Dataset
import raft_trainer
from raft_trainer import RAFTConfig, RAFTTrainer
from raft_trainer.tasks.toy.tiny import tiny_causal_lm, word_tokenizer

tokenizer = word_tokenizer(["apple", "pear", "say", "something"])
torch.manual_seed(0)
args = RAFTConfig(output_dir={str(tmp_path)!r}, num_stages=1, prompts_per_stage=2, num_generations=2,
                  max_completion_length=4, per_device_train_batch_size=2, report_to="none", save_strategy="no",
                  disable_tqdm=True)
trainer = RAFTTrainer(tiny_causal_lm(tokenizer), lambda completions, **kw: [float(len(c)) for c in completions],
                      args=args, train_dataset=Dataset.from_dict({{"prompt": ["say something"] * 2}}),
                      processing_class=tokenizer)
trainer.train()
print("trained", trainer.state.global_step > 0)
try:
    raft_trainer.DiffusionRAFTTrainer
except ImportError as error:
    print(error)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trained True" in result.stdout
    assert 'pip install "raft-trainer[diffusion]"' in result.stdout


def test_the_shared_cycle_knows_no_loss_and_no_language_model_field():
    # What a loss needs from selection comes through the trainer's `select`; the base reads only StageConfig.
    from raft_trainer.raft_config import RAFTConfig
    from raft_trainer.stage_config import StageConfig

    source = (PACKAGE / "stage_trainer.py").read_text()
    assert "getattr(self.args" not in source and "getattr(args" not in source
    for word in ("loss_type", "reinforce_rej", "raft++"):
        assert word not in source, word
    language_model_fields = set(RAFTConfig.__dataclass_fields__) - set(StageConfig.__dataclass_fields__)
    used = set(re.findall(r"args\.(\w+)", source))
    assert not used & language_model_fields, used & language_model_fields


def test_no_module_is_a_micro_module():
    # A module does one job, but a job worth its own file: under 30 lines it belongs to its natural neighbour.
    small = [
        f"{path.relative_to(ROOT)}: {len(path.read_text().splitlines())} lines"
        for path in library_files()
        if path.name != "__init__.py" and len(path.read_text().splitlines()) < 30
    ]
    assert small == []


def test_the_phases_take_the_cycles_own_draw_groups_and_selection():
    # phases.py drives the stage cycle's shared steps; it draws, groups and selects nothing by itself.
    source = (PACKAGE / "phases.py").read_text()
    for own_code in ("stage_prompt_indices", "selection.", "best_per_group", "accept_per_group", '"group": ['):
        assert own_code not in source, own_code
    for shared_step in ("draw_prompts(", "draw.label(", "Pool.gather(", "args.selection_rule().select("):
        assert shared_step in source, shared_step


def test_stage_trainers_public_methods_fit_on_a_screen_and_are_each_documented():
    # The steps of the cycle, the hooks a trainer overrides and the Trainer methods it replaces: each documented in
    # its docstring and listed, one line each, in docs/architecture.md, which lists nothing else of StageTrainer.
    from raft_trainer.stage_trainer import StageTrainer

    public = sorted(name for name, value in vars(StageTrainer).items() if callable(value) and name[0] != "_")
    assert len(public) <= 40, public
    assert [name for name in public if not (vars(StageTrainer)[name].__doc__ or "").strip()] == []
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    listed = set(re.findall(r"^\| `(\w+)\(?\)?` \|", architecture, flags=re.MULTILINE))
    assert {name for name in listed if name in vars(StageTrainer)} == set(public)
