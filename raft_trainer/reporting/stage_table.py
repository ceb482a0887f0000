from tqdm.auto import tqdm
from transformers import TrainerCallback


def _always(args) -> bool:
    return True


def _language_model(args) -> bool:
    return hasattr(args, "max_completion_length")


def _threshold(args) -> bool:
    return getattr(args, "reward_threshold", None) is not None


def _kl_ranking(args) -> bool:
    return getattr(args, "beta", 0) > 0


def _ratio_loss(args) -> bool:
    return getattr(args, "loss_type", "raft") != "raft"


def _entropy(args) -> bool:
    return getattr(args, "log_entropy", False) or _ratio_loss(args)


def _evaluating(args) -> bool:
    return str(getattr(args.eval_strategy, "value", args.eval_strategy)) != "no"


class StageTableCallback(TrainerCallback):
    """Print one aligned line per RAFT stage: reward of the policy and of the kept set, acceptance, length,
    diversity, KL, entropy, loss and the held-out reward. The columns follow from the configuration and are fixed
    for the run (header once, blanks where a stage lacks a value); with evaluation on, a stage's line waits for its
    held-out figures."""

    COLUMNS = (  # title, log key, format, shown when
        ("stage", "stage", "{:>5d}", _always),
        ("reward", "reward_mean", "{:>8.3f}", _always),
        ("kept", "reward_kept_mean", "{:>8.3f}", _always),
        ("n_kept", "num_kept", "{:>6d}", _always),
        ("pass", "pass_rate", "{:>6.3f}", _threshold),
        ("length", "completion_length_mean", "{:>7.1f}", _language_model),
        ("dist-2", "kept_distinct_2", "{:>7.3f}", _language_model),
        ("kl", "kl_mean", "{:>7.3f}", _kl_ranking),
        ("entropy", "entropy", "{:>7.3f}", _entropy),
        ("clip", "clip_fraction", "{:>6.3f}", _ratio_loss),
        ("loss", "loss", "{:>8.4f}", _always),
        ("eval", "eval_reward", "{:>7.3f}", _evaluating),
    )

    def __init__(self):
        self.columns = None
        self.pending: dict | None = None  # a stage's record waiting for its evaluation

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "stage" in logs:
            if self.columns is None:
                self.columns = [(title, key, spec) for title, key, spec, shown in self.COLUMNS if shown(args)]
                say(" ".join(f"{title:>{len(spec.format(0))}}" for title, _, spec in self.columns))
            self.flush()
            self.pending = dict(logs)
            if not _evaluating(args):
                self.flush()
        elif self.pending is not None and any(key.startswith("eval_") for key in logs):
            self.pending.update(logs)
            self.flush()

    def on_train_end(self, args, state, control, **kwargs):
        self.flush()

    def flush(self) -> None:
        if self.pending is None:
            return
        cells = []
        for _, key, spec in self.columns:
            value = self.pending.get(key)
            cells.append(spec.format(value) if isinstance(value, (int, float)) else " " * len(spec.format(0)))
        say(" ".join(cells))
        self.pending = None


def say(line: str) -> None:
    """Print a line of the table on stdout above the progress bars: a plain print on a console they share would
    land after a bar's text, and the bar's next redraw would write over it."""
    tqdm.write(line)
