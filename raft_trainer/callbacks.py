from transformers import TrainerCallback


class StageTableCallback(TrainerCallback):
    """Print a compact line per RAFT stage: reward of the policy and of the kept set, length, diversity, KL, loss."""

    COLUMNS = (
        ("stage", "stage", "{:>5d}"),
        ("reward", "reward_mean", "{:>8.3f}"),
        ("kept", "reward_kept_mean", "{:>8.3f}"),
        ("length", "completion_length_mean", "{:>7.1f}"),
        ("dist-2", "kept_distinct_2", "{:>7.3f}"),
        ("kl", "kl_mean", "{:>7.3f}"),
        ("loss", "loss", "{:>7.3f}"),
    )

    def __init__(self):
        self.header_printed = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "stage" not in logs:
            return
        columns = [(title, key, spec) for title, key, spec in self.COLUMNS if key in logs]
        if not self.header_printed:
            print(" ".join(f"{title:>{len(spec.format(0))}}" for title, _, spec in columns))
            self.header_printed = True
        print(" ".join(spec.format(logs[key]) for _, key, spec in columns), flush=True)
