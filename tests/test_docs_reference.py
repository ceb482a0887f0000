"""The reference pages cannot drift from the code: every field of RAFTConfig, DiffusionRAFTConfig and the
raft-compare arguments has a row in docs/ whose default is the dataclass's own."""

import dataclasses
import re
from pathlib import Path

import pytest
from transformers import TrainingArguments

from raft_trainer import RAFTConfig
from raft_trainer.compare.settings import CompareArguments
from raft_trainer.stage_config import StageConfig

DOCS = Path(__file__).resolve().parent.parent / "docs"


def documented_defaults(text: str) -> dict[str, list[str]]:
    """Each name in the first cell of a Markdown table row (`name`, `--name`; several per row allowed), with the
    row's cell of the column headed "default ..." (split by ", " when it holds one value per name)."""
    defaults: dict[str, list[str]] = {}
    header = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = [cell.lower() for cell in cells]
            continue
        if set(line) <= set("|-: "):
            continue
        column = next((i for i, title in enumerate(header) if title.startswith("default")), None)
        if column is None or column >= len(cells):
            continue
        names = re.findall(r"`(?:--)?([a-z][a-z0-9_]*)`", cells[0])
        values = [value.strip() for value in cells[column].split(", ")]
        if len(values) != len(names):
            values = [cells[column]] * len(names)
        for name, value in zip(names, values):
            defaults.setdefault(name, []).append(value)
    return defaults


def matches(value, cell: str) -> bool:
    """Whether a documented default cell (`None`, none, 0.2, 2e-5, "local", `False`, 3e-4 1e-3, ...) says `value`."""
    text = re.sub(r"\s*\(.*\)$", "", cell).strip().strip("`").strip('"')
    if value is None:
        return text.lower() in ("none", "")
    if isinstance(value, bool):
        return text.lower() == str(value).lower()
    if isinstance(value, (int, float)):
        try:
            return float(text) == value
        except ValueError:
            return False
    if isinstance(value, (list, tuple)):
        parts = text.replace("`", "").split()
        return len(parts) == len(value) and all(matches(item, part) for item, part in zip(value, parts))
    return text == str(value)


def default_of(config_class, name: str):
    field = config_class.__dataclass_fields__[name]
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def own_fields(config_class, base) -> list[str]:
    """The fields `config_class` adds to `base`, or whose default it changes."""
    names = []
    for name in config_class.__dataclass_fields__:
        if name not in base.__dataclass_fields__ or default_of(config_class, name) != default_of(base, name):
            names.append(name)
    return names


def check(config_class, names: list[str], text: str, page: str, every_field: bool = True) -> None:
    """Every one of `names` has a row on the page (or, without `every_field`, those that have one), each with the
    field's default."""
    documented = documented_defaults(text)
    missing = [name for name in names if name not in documented]
    assert not every_field or not missing, f"{page} has no table row for {missing}"
    wrong = {
        name: (default_of(config_class, name), documented[name])
        for name in names
        if name in documented and not all(matches(default_of(config_class, name), cell) for cell in documented[name])
    }
    assert not wrong, f"{page}: documented defaults differ from the code (field: (code, docs)): {wrong}"


def test_every_raft_config_field_is_documented_with_its_default():
    text = (DOCS / "configuration.md").read_text()
    language_models = text.split("## `DiffusionRAFTConfig`")[0]
    check(RAFTConfig, own_fields(RAFTConfig, TrainingArguments), language_models, "docs/configuration.md")


def test_every_diffusion_config_field_is_documented_with_its_default():
    pytest.importorskip("diffusers")
    from raft_trainer.diffusion import DiffusionRAFTConfig

    names = own_fields(DiffusionRAFTConfig, StageConfig)
    configuration = (
        "## `DiffusionRAFTConfig`" + (DOCS / "configuration.md").read_text().split("## `DiffusionRAFTConfig`")[1]
    )
    check(DiffusionRAFTConfig, names, configuration, "docs/configuration.md (DiffusionRAFTConfig)")
    check(DiffusionRAFTConfig, names, (DOCS / "diffusion.md").read_text(), "docs/diffusion.md", every_field=False)


def test_every_raft_compare_argument_is_documented_with_its_default():
    names = [field.name for field in dataclasses.fields(CompareArguments)]
    check(CompareArguments, names, (DOCS / "comparison.md").read_text(), "docs/comparison.md")
