"""The shared stage cycle as functions, used by every trainer:

    draw prompts (prompts.py) -> score candidates (scoring.py) -> select the kept ones (selection.py)
    -> write the stage file (stage_files.py) -> serve the kept set as training batches (batches.py)

Nothing here holds a model or knows a modality; the trainers supply generation and the loss.
"""

# A stage's candidates as per-candidate columns. `generate` returns them with `prompt_position` (which of the prompts
# it was given each answers); the cycle then replaces it with `group`, the prompt's place in the stage's draw.
Candidates = dict[str, list]
