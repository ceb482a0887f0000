"""Synthetic arithmetic in chat form: a verifiable task for RAFT that needs no download.

Each row has `prompt` (one user message), `answer` (the integer, as a string: what `exact_answer_reward` reads),
`solution` (the answer as LaTeX, `$42$`: what TRL's `trl.rewards.accuracy_reward` reads) and `level`.

The test split is the same whatever the training seed: it is drawn with a fixed seed of its own, and the training
split is drawn with `seed` from the problems not in it. A smaller `num_test` gives the first rows of a larger one.
"""

import random
import re
from collections.abc import Callable

from datasets import Dataset, DatasetDict

ANSWER_INSTRUCTION = "Reply with the number only."
BOXED_INSTRUCTION = "Put your final answer within \\boxed{}."
# The same sums and differences asked in other words, so that a comparison's verdict is not one phrasing's: a
# template of the operands and the operator (+ or -), and its own request for a bare number. "question" is the
# levels' own wording. The problems, the splits and the answers are the same under every wording.
WORDINGS = {
    "question": ("What is {a} {op} {b}?", ANSWER_INSTRUCTION),
    "imperative": ("Compute {a} {op} {b}.", "Give only the result."),
    "equation": ("{a} {op} {b} = ?", "Answer with a single number."),
    "words": ("{verb} {a} {preposition} {b}.", "Write just the number."),
}
WORDS = {"+": ("Add", "and"), "-": ("From", "take away")}

NAMES = [("Tom", "he"), ("Mia", "she"), ("Sam", "he"), ("Lena", "she"), ("Omar", "he"), ("Ava", "she")]
NAMES += [("Ben", "he"), ("Zoe", "she"), ("Ravi", "he"), ("Nora", "she")]
ITEMS = ["apples", "marbles", "stickers", "pencils", "cookies", "books", "shells", "cards"]

# A problem: its question (without the answer instruction) and its integer answer.
Problem = tuple[str, int]


def sums(rng: random.Random) -> Problem:
    a, b = rng.randint(1, 20), rng.randint(1, 20)
    return f"What is {a} + {b}?", a + b


def two_digit(rng: random.Random) -> Problem:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if rng.random() < 0.5:
        return f"What is {a} + {b}?", a + b
    a, b = max(a, b), min(a, b)  # the larger number first, so that answers are never negative
    return f"What is {a} - {b}?", a - b


def word_problems(rng: random.Random) -> Problem:
    """A two-step word problem in the style of GSM8K's easiest ones."""
    name, pronoun = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    kind = rng.randrange(5)
    if kind == 0:
        a, b = rng.randint(5, 30), rng.randint(2, 15)
        c = rng.randint(1, a + b - 1)
        question = f"{name} has {a} {item}, buys {b} more and gives {c} away. How many {item} does {pronoun} have now?"
        return question, a + b - c
    if kind == 1:
        a = rng.randint(10, 40)
        c, b = rng.randint(1, a - 1), rng.randint(2, 20)
        question = (
            f"{name} has {a} {item} and gives {c} of them to a friend. Then {pronoun} finds {b} more. "
            f"How many {item} does {name} have now?"
        )
        return question, a - c + b
    if kind == 2:
        a, b = rng.randint(2, 9), rng.randint(2, 12)
        c = rng.randint(1, a * b - 1)
        question = (
            f"{name} buys {a} bags of {item} with {b} {item} in each bag, then gives {c} {item} away. "
            f"How many {item} does {pronoun} have left?"
        )
        return question, a * b - c
    if kind == 3:
        b, share, c = rng.randint(2, 6), rng.randint(2, 10), rng.randint(1, 10)
        question = (
            f"{name} shares {b * share} {item} equally among {b} friends. Then each friend gets {c} more. "
            f"How many {item} does each friend have?"
        )
        return question, share + c
    a, b = rng.randint(2, 20), rng.randint(2, 9)
    c = rng.randint(1, a * b - 1)
    question = f"{name} earns ${a} a day for {b} days and spends ${c}. How many dollars does {pronoun} have left?"
    return question, a * b - c


LEVELS: dict[str, Callable[[random.Random], Problem]] = {
    "sums": sums,
    "two_digit": two_digit,
    "word_problems": word_problems,
}
# How many distinct questions a level can ask; None: far more than any split needs.
LEVEL_SIZES = {"sums": 20 * 20, "two_digit": 90 * 90 + 90 * 91 // 2, "word_problems": None}
TEST_SEED = "raft-trainer arithmetic test split"  # fixed forever: changing it changes every reported test score


def arithmetic_dataset(
    level: str = "sums",
    num_train: int = 256,
    num_test: int = 100,
    seed: int = 0,
    boxed: bool = False,
    wording: str = "question",
) -> DatasetDict:
    """`train` and `test` splits of distinct arithmetic problems of `level` ("sums": a + b with a, b in 1..20;
    "two_digit": sums and differences of two-digit numbers; "word_problems": two-step word problems).

    The prompt asks for the number only, or with `boxed=True` for the final answer in `\\boxed{}` (for math_verify
    rewards such as TRL's `accuracy_reward`). No question is in both splits, and the test split does not depend on
    `seed` or `num_train`. `wording` (a key of `WORDINGS`, for "sums" and "two_digit") asks the same problems in
    other words, with its own request for the number (`boxed` replaces it).
    """
    if level not in LEVELS:
        raise ValueError(f"level={level!r} is not a known level: use one of {', '.join(map(repr, LEVELS))}.")
    if wording not in WORDINGS:
        raise ValueError(f"wording={wording!r} is not a known wording: use one of {', '.join(map(repr, WORDINGS))}.")
    if wording != "question" and level == "word_problems":
        raise ValueError(
            f"wording={wording!r} rewords a sum or a difference; level 'word_problems' has its own words: leave "
            "wording at 'question'."
        )
    for name, value in (("num_train", num_train), ("num_test", num_test)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer; got {value!r}.")
    size = LEVEL_SIZES[level]
    if size is not None and num_train + num_test > size:
        raise ValueError(
            f"level {level!r} has {size} distinct problems: num_train + num_test = {num_train + num_test} is too "
            f"many; lower num_train to at most {size - num_test}."
        )
    test = _distinct_problems(LEVELS[level], random.Random(f"{TEST_SEED} {level}"), num_test, exclude=set())
    train = _distinct_problems(
        LEVELS[level], random.Random(f"train {level} {seed}"), num_train, exclude={q for q, _ in test}
    )
    if wording != "question":
        train = [(reworded(question, wording), answer) for question, answer in train]
        test = [(reworded(question, wording), answer) for question, answer in test]
    instruction = BOXED_INSTRUCTION if boxed else WORDINGS[wording][1]
    return DatasetDict(
        {
            "train": _as_dataset(train, level, instruction),
            "test": _as_dataset(test, level, instruction),
        }
    )


def reworded(question: str, wording: str) -> str:
    """A "What is a + b?" question of the sums or two_digit level in `wording`'s words."""
    a, op, b = re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", question).groups()
    verb, preposition = WORDS[op]  # "Add 12 and 7.", "From 57 take away 12."
    return WORDINGS[wording][0].format(a=a, op=op, b=b, verb=verb, preposition=preposition)


def _distinct_problems(
    draw: Callable[[random.Random], Problem], rng: random.Random, count: int, exclude: set[str]
) -> list[Problem]:
    problems, seen = [], set(exclude)
    while len(problems) < count:
        question, answer = draw(rng)
        if question not in seen:
            seen.add(question)
            problems.append((question, answer))
    return problems


def _as_dataset(problems: list[Problem], level: str, instruction: str) -> Dataset:
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": f"{question} {instruction}"}] for question, _ in problems],
            "answer": [str(answer) for _, answer in problems],
            "solution": [f"${answer}$" for _, answer in problems],
            "level": [level] * len(problems),
        }
    )
