"""Files written atomically: a reader (or a crash) never sees one half-written."""

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
