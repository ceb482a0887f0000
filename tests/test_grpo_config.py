"""docs/grpo_config.md maps every field TRL's GRPOConfig adds to TrainingArguments, read from the installed trl: a
TRL release that adds a field fails here until the page says what it is in RAFTConfig."""

import dataclasses
import re
from pathlib import Path

from transformers import TrainingArguments
from trl import GRPOConfig

from raft_trainer import RAFTConfig

PAGE = Path(__file__).resolve().parent.parent / "docs" / "grpo_config.md"
STATUSES = ("same", "other meaning", "equivalent", "does not apply", "not supported")


def mapped() -> dict[str, str]:
    """The page's first table: GRPOConfig field -> its status in RAFTConfig."""
    rows = {}
    for line in PAGE.read_text().split("## Shared names")[0].splitlines():
        match = re.match(r"\| `(\w+)` \| ([^|]+) \|", line)
        if match:
            rows[match.group(1)] = match.group(2).strip()
    return rows


def test_every_grpo_config_field_is_mapped_to_raft_config():
    grpo_fields = [
        f.name for f in dataclasses.fields(GRPOConfig) if f.name not in TrainingArguments.__dataclass_fields__
    ]
    rows = mapped()
    assert [name for name in grpo_fields if name not in rows] == []
    raft_fields = set(RAFTConfig.__dataclass_fields__)
    for name, status in rows.items():
        assert status.split(":")[0] in STATUSES, (name, status)
        # "same" and "other meaning" are exactly the names the two configurations share
        assert (status in ("same", "other meaning")) == (name in raft_fields), (name, status)
        if status.startswith("equivalent: "):
            named = re.findall(r"`([\w.]+)`", status)
            # a RAFTConfig field, or the one setting that stays with the model (its generation_config)
            allowed = raft_fields | {"generation_config.cache_implementation"}
            assert named and set(named) <= allowed, (name, status)


def test_the_shared_names_with_another_meaning_are_explained():
    rows = mapped()
    other = {name for name, status in rows.items() if status == "other meaning"}
    explained = set(re.findall(r"^\| `(\w+)` \|", PAGE.read_text().split("## Shared names")[1], re.M))
    assert other == explained == {"beta", "loss_type", "generation_batch_size"}
