"""Tasks to run RAFT on offline: verifiable arithmetic (arithmetic.py) and the miniature HH-RLHF world (toy/); and the
prompt datasets named on the command line (a Hub id or a local folder), for `raft-train` and `raft-compare`."""

from datasets import Dataset, load_dataset


def load_prompts(script_args) -> tuple[Dataset, Dataset, Dataset | None]:
    """Training prompts, held-out prompts and (when the test split has a 'chosen' column) held-out chosen answers,
    from `script_args` (`dataset_name`, `dataset_config`, `dataset_train_split`, `dataset_test_split` and
    `num_eval_prompts`, as `raft-train` and `raft-compare` take them)."""
    dataset = load_dataset(script_args.dataset_name, script_args.dataset_config)
    train = dataset[script_args.dataset_train_split]
    if script_args.dataset_test_split is None or script_args.dataset_test_split not in dataset:
        split = train.train_test_split(test_size=min(script_args.num_eval_prompts, len(train) // 10 or 1), seed=0)
        train, test = split["train"], split["test"]
    else:
        test = dataset[script_args.dataset_test_split]
    test = test.select(range(min(script_args.num_eval_prompts, len(test))))
    chosen = None
    if "chosen" in test.column_names:
        chosen = Dataset.from_dict({"prompt": list(test["prompt"]), "completion": list(test["chosen"])})
    return train, test.select_columns(["prompt"]), chosen
