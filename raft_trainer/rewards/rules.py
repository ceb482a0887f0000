"""Rule rewards for verifiable tasks, in TRL's reward-function convention (`f(completions, **columns)`)."""

import re

# A number: an optional sign (a minus directly before the digits, not one joining two terms as in "20-3"), digits
# with optional thousands separators ("1,000") and an optional decimal part ("2.5"; the period of "is 32." is not
# one).
NUMBER = re.compile(r"(?:(?<![\w)\]}])[-−])?\d+(?:,\d{3})*(?:\.\d+)?")
BOXED = "\\boxed{"


def final_number(text: str) -> str | None:
    """The last number in `text`, normalised ("1,000" -> "1000", "-4.50" -> "-4.5", "07.0" -> "7"), or None.

    The last one counts because models often restate the question before answering ("17 + 25 = 42"). If the text
    holds a `\\boxed{...}`, the last number inside the last one counts, as an answer in a box is meant to be final.
    """
    boxed = _last_boxed(text)
    if boxed is not None and NUMBER.search(boxed):
        text = boxed
    numbers = NUMBER.findall(text)
    if not numbers:
        return None
    return _normalise(numbers[-1])


def _normalise(number: str) -> str:
    """One spelling per value, so that answers compare as strings: no separators, no leading or trailing zeros."""
    number = number.replace(",", "").replace("−", "-")
    sign, number = ("-", number[1:]) if number.startswith("-") else ("", number)
    whole, _, fraction = number.partition(".")
    number = str(int(whole)) + ("." + fraction.rstrip("0") if fraction.rstrip("0") else "")
    return "0" if number == "0" else sign + number


def _last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` in `text` (braces inside it balanced), or None."""
    start = text.rfind(BOXED)
    if start == -1:
        return None
    depth, begin = 1, start + len(BOXED)
    for end in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            return text[begin:end]
    return text[begin:]  # an unclosed box (a completion cut at max_new_tokens): its content so far


def completion_text(completion) -> str:
    """The text of a completion: plain text, or a chat completion (a list holding one assistant message)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return completion[-1]["content"]
    raise ValueError(
        "completions must be strings or lists with one message dict ({'role': 'assistant', 'content': ...}); "
        f"got {completion!r}."
    )


def exact_answer_reward(completions: list, answer: list, **kwargs) -> list[float]:
    """1.0 where a completion's final number (see `final_number`) equals the `answer` column's number, else 0.0."""
    if len(completions) != len(answer):
        raise ValueError(
            f"exact_answer_reward got {len(completions)} completions and {len(answer)} answers: the answer column "
            "needs one entry per completion."
        )
    rewards = []
    for completion, expected in zip(completions, answer):
        target = final_number(str(expected))
        if target is None:
            raise ValueError(f"the answer column must hold numbers; got {expected!r}.")
        rewards.append(float(final_number(completion_text(completion)) == target))
    return rewards
