"""What a RAFT run logged: its per-stage records, and the reward curve drawn from them."""

from transformers import Trainer

from ..files import atomic_path


def stage_records(trainer: Trainer) -> list[dict]:
    """The per-stage log records of a finished run, with the Trainer's bookkeeping keys left out."""
    bookkeeping = {"epoch", "step", "grad_norm", "learning_rate"}
    return [
        {key: value for key, value in record.items() if key not in bookkeeping}
        for record in trainer.state.log_history
        if "stage" in record
    ]


def plot_reward_curve(stages: list[dict], path: str) -> None:
    """Mean reward of the policy's samples (when it sampled) and of the kept best-of-K set per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.5))
    numbers = [record["stage"] for record in stages]
    if all("reward_mean" in record for record in stages):
        axes.plot(numbers, [record["reward_mean"] for record in stages], marker="o", label="policy (all samples)")
    axes.plot(numbers, [record["reward_kept_mean"] for record in stages], marker="s", label="kept (best of K)")
    axes.set_xlabel("stage")
    axes.set_ylabel("mean reward")
    axes.set_title("RAFT reward per stage")
    axes.legend()
    figure.tight_layout()
    with atomic_path(path) as partial:
        figure.savefig(partial, format="png", dpi=120)
    plt.close(figure)
