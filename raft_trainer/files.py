"""Files written atomically (a reader, or a crash, never sees one half-written), and where a run's stage files live."""

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside `path`, which replaces `path` once the block has finished without error."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = f"{path}.partial"
    try:
        yield partial
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as partial, open(partial, "w", encoding="utf-8") as file:
        file.write(text)


def write_json(path: str, value) -> None:
    write_text(path, json.dumps(value, indent=2))


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
