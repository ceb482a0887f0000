"""Where a stage's files live and how they are written: one JSON line per candidate, written atomically."""

import json
import os

from ..files import atomic_path


def stage_file_path(output_dir: str, stage: int) -> str:
    return os.path.join(output_dir, "stages", f"stage_{stage:03d}.jsonl")


def candidates_file_path(output_dir: str, stage: int) -> str:
    return os.path.join(output_dir, "stages", f"candidates_{stage:03d}.jsonl")


def stage_model_path(output_dir: str, stage: int) -> str:
    return os.path.join(output_dir, "models", f"stage_{stage:03d}")


def settings_file_path(output_dir: str, stage: int) -> str:
    return os.path.join(output_dir, "stages", f"candidates_{stage:03d}.settings.json")


def write_stage_file(path: str, columns: dict[str, list]) -> None:
    """Write one JSON line per candidate (loadable with `datasets.load_dataset("json", data_files=path)`),
    atomically: readers never see a half-written stage."""
    with atomic_path(path) as partial, open(partial, "w", encoding="utf-8") as file:
        for row in zip(*columns.values()):
            file.write(json.dumps(dict(zip(columns, row)), ensure_ascii=False) + "\n")
