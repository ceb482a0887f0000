import re

import pytest
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from raft_trainer.rewards.rules import exact_answer_reward, final_number
from raft_trainer.tasks.accuracy import evaluate_accuracy
from raft_trainer.tasks.arithmetic import LEVELS, WORDINGS, arithmetic_dataset

# A minimal chat template for the tiny word-level tokenizer of the `tokenizer` fixture.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}Assistant : {% endif %}"
)


def questions(split) -> list[str]:
    return [prompt[0]["content"] for prompt in split["prompt"]]


@pytest.mark.parametrize("level", list(LEVELS))
def test_test_split_is_fixed_and_disjoint_from_train(level):
    first = arithmetic_dataset(level, num_train=200, seed=0)
    second = arithmetic_dataset(level, num_train=50, seed=1)
    assert first["test"].to_dict() == second["test"].to_dict()
    assert questions(first["train"])[:50] != questions(second["train"])
    for dataset in (first, second):
        train, test = questions(dataset["train"]), questions(dataset["test"])
        assert len(set(train)) == len(train) and len(set(test)) == len(test) == 100
        assert not set(train) & set(test)
    # A smaller test split is the start of a larger one.
    assert questions(arithmetic_dataset(level, num_train=0, num_test=10)["test"]) == questions(first["test"])[:10]
    assert first["train"].column_names == ["prompt", "answer", "solution", "level"]
    assert set(first["train"]["level"]) == {level}


def solve(question: str) -> int:
    """The answer to a generated question, computed from its text alone."""
    numbers = [int(number) for number in re.findall(r"\d+", question)]
    if question.startswith("What is"):
        a, b = numbers
        return a + b if "+" in question else a - b
    if "buys" in question and "more and gives" in question:
        return numbers[0] + numbers[1] - numbers[2]
    if "to a friend" in question:
        return numbers[0] - numbers[1] + numbers[2]
    if "bags of" in question:
        return numbers[0] * numbers[1] - numbers[2]
    if "equally among" in question:
        return numbers[0] // numbers[1] + numbers[2]
    if "a day for" in question:
        return numbers[0] * numbers[1] - numbers[2]
    raise AssertionError(f"unknown question: {question}")


@pytest.mark.parametrize("level", list(LEVELS))
def test_answers_are_correct(level):
    data = arithmetic_dataset(level, num_train=300)
    for split in ("train", "test"):
        for row in data[split]:
            question = row["prompt"][0]["content"]
            assert row["prompt"][0]["role"] == "user"
            assert question.endswith(" Reply with the number only.")
            assert row["answer"] == str(solve(question)) and int(row["answer"]) >= 0
            assert row["solution"] == f"${row['answer']}$"


def test_levels_ask_what_they_say():
    sums = questions(arithmetic_dataset("sums", num_train=300)["train"])
    for question in sums:
        a, b = map(int, re.fullmatch(r"What is (\d+) \+ (\d+)\? Reply with the number only\.", question).groups())
        assert 1 <= a <= 20 and 1 <= b <= 20
    two_digit = questions(arithmetic_dataset("two_digit", num_train=300)["train"])
    operations = set()
    for question in two_digit:
        a, operation, b = re.fullmatch(r"What is (\d+) ([+-]) (\d+)\? .*", question).groups()
        assert 10 <= int(a) <= 99 and 10 <= int(b) <= 99
        operations.add(operation)
    assert operations == {"+", "-"}
    words = questions(arithmetic_dataset("word_problems", num_train=300)["train"])
    for template in ("more and gives", "to a friend", "bags of", "equally among", "a day for"):
        assert any(template in question for question in words)


@pytest.mark.parametrize("level", ["sums", "two_digit"])
def test_every_wording_asks_the_same_problems_in_its_own_words(level):
    asked = {wording: arithmetic_dataset(level, num_train=40, num_test=20, wording=wording) for wording in WORDINGS}
    for split in ("train", "test"):
        answers = {wording: data[split]["answer"] for wording, data in asked.items()}
        assert all(values == answers["question"] for values in answers.values())
        texts = {wording: questions(data[split]) for wording, data in asked.items()}
        for position in range(len(answers["question"])):
            asked_here = {wording: texts[wording][position] for wording in WORDINGS}
            assert len(set(asked_here.values())) == len(WORDINGS)  # each wording its own words...
            operands = {tuple(re.findall(r"\d+", text)) for text in asked_here.values()}
            assert len(operands) == 1  # ...for the same two numbers
            a, b = map(int, operands.pop())
            minus = "-" in asked_here["question"]
            assert int(answers["question"][position]) == (a - b if minus else a + b)
            assert ("take away" in asked_here["words"]) == minus and ("- " in asked_here["equation"]) == minus
    for wording, (_, instruction) in WORDINGS.items():
        assert all(text.endswith(instruction) for text in questions(asked[wording]["train"]))
    boxed = arithmetic_dataset(level, num_train=1, num_test=1, boxed=True, wording="equation")["test"][0]
    assert boxed["prompt"][0]["content"].endswith("= ? Put your final answer within \\boxed{}.")


def test_boxed_asks_for_a_box():
    row = arithmetic_dataset("sums", num_train=1, num_test=1, boxed=True)["test"][0]
    assert row["prompt"][0]["content"].endswith("Put your final answer within \\boxed{}.")
    assert row["prompt"][0]["content"].startswith("What is ")


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="level='sum'.*'sums'"):
        arithmetic_dataset("sum")
    with pytest.raises(ValueError, match="num_train to at most 300"):
        arithmetic_dataset("sums", num_train=301)
    with pytest.raises(ValueError, match="num_test"):
        arithmetic_dataset(num_test=-1)
    with pytest.raises(ValueError, match="wording='plain'.*'imperative'"):
        arithmetic_dataset(wording="plain")
    with pytest.raises(ValueError, match="leave wording at 'question'"):
        arithmetic_dataset("word_problems", wording="words")


@pytest.mark.parametrize(
    "text, number",
    [
        ("17 + 25 = 42", "42"),
        ("The answer is 42.", "42"),
        ("It is -7", "-7"),
        ("20-3=17", "17"),
        ("20-3", "3"),
        ("5 - 8 = -3.", "-3"),
        ("That makes 1,000 apples", "1000"),
        ("about 2.50 dollars", "2.5"),
        ("7.0", "7"),
        ("007 and 0.0 and -0", "0"),
        ("it was 010.", "10"),
        ("$12$", "12"),
        ("So \\boxed{12} and then 3 more words 4", "12"),
        ("\\boxed{1,234} is it", "1234"),
        ("\\boxed{} then 5", "5"),
        ("no number here", None),
        ("", None),
    ],
)
def test_final_number(text, number):
    assert final_number(text) == number


def test_exact_answer_reward():
    completions = ["2 + 3 = 5", "It is 6.", "five", [{"role": "assistant", "content": "\\boxed{5}"}]]
    assert exact_answer_reward(completions, answer=["5", "5", "5", "5"], prompts=["p"] * 4) == [1.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="one entry per completion"):
        exact_answer_reward(["5"], answer=["5", "6"])


def test_trl_accuracy_reward_reads_the_solution_column():
    accuracy_reward = pytest.importorskip("trl.rewards").accuracy_reward
    pytest.importorskip("math_verify")
    rows = arithmetic_dataset("word_problems", num_train=0, num_test=3, boxed=True)["test"]
    right = [[{"role": "assistant", "content": f"So the answer is \\boxed{{{answer}}}."}] for answer in rows["answer"]]
    wrong = [[{"role": "assistant", "content": f"\\boxed{{{int(answer) + 1}}}"}] for answer in rows["answer"]]
    assert accuracy_reward(right, solution=rows["solution"]) == [1.0] * 3
    assert accuracy_reward(wrong, solution=rows["solution"]) == [0.0] * 3


@pytest.fixture
def chat_prompts():
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": text}] for text in ["say something", "tell me", "say a word"]],
            "answer": ["0", "1", "2"],
        }
    )


def first_prompt_only(completions, answer, **kwargs):
    """Correct for the first prompt's completions only: shows that columns are repeated in step with completions."""
    assert len(answer) == len(completions) == len(kwargs["prompts"]) == len(kwargs["completion_ids"])
    return [float(value == "0") for value in answer]


def test_evaluate_accuracy_on_a_tiny_model(tokenizer, make_model, chat_prompts, one_torch_thread):
    tokenizer.chat_template = CHAT_TEMPLATE
    results = evaluate_accuracy(make_model(), tokenizer, chat_prompts, first_prompt_only, num_samples=4)
    assert set(results) == {"greedy_accuracy", "sampled_accuracy", "pass@4", "mean_length", "truncated_share"}
    assert results["greedy_accuracy"] == results["sampled_accuracy"] == results["pass@4"] == pytest.approx(1 / 3)
    assert 1 <= results["mean_length"] <= 16

    def contains_apple(completions, **kwargs):
        return [float("apple" in completion[0]["content"]) for completion in completions]

    results = evaluate_accuracy(make_model(), tokenizer, chat_prompts, contains_apple, num_samples=8, seed=3)
    assert results["pass@8"] >= results["sampled_accuracy"]
    assert 0 <= results["sampled_accuracy"] <= 1 and 0 <= results["greedy_accuracy"] <= 1
    assert results == evaluate_accuracy(make_model(), tokenizer, chat_prompts, contains_apple, num_samples=8, seed=3)


def test_completions_without_eos_count_as_truncated(tokenizer, make_model, chat_prompts, one_torch_thread):
    tokenizer.chat_template = CHAT_TEMPLATE
    model = make_model()
    model.generation_config.eos_token_id = len(tokenizer) + 1  # a token the model can never emit
    results = evaluate_accuracy(model, tokenizer, chat_prompts, first_prompt_only, num_samples=2, max_new_tokens=5)
    assert results["truncated_share"] == 1.0 and results["mean_length"] == 5


def test_evaluate_accuracy_rejects_bad_input(tokenizer, make_model, chat_prompts, one_torch_thread):
    tokenizer.chat_template = CHAT_TEMPLATE
    model = make_model()
    with pytest.raises(ValueError, match="returns 1 \\(correct\\) or 0"):
        evaluate_accuracy(model, tokenizer, chat_prompts, lambda completions, **_: [0.5] * len(completions))
    with pytest.raises(ValueError, match="`answer` column"):
        evaluate_accuracy(model, tokenizer, chat_prompts.remove_columns("answer"))
    with pytest.raises(ValueError, match="temperature"):
        evaluate_accuracy(model, tokenizer, chat_prompts, temperature=0)


def test_real_model_greedy_accuracy_on_sums(smollm2_path, one_torch_thread):
    model = AutoModelForCausalLM.from_pretrained(smollm2_path)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    test = arithmetic_dataset(num_train=0, num_test=20)["test"]
    results = evaluate_accuracy(model, tokenizer, test, num_samples=1)
    # SmolLM2-135M-Instruct gets about 44% of these sums right greedily.
    assert 0.2 <= results["greedy_accuracy"] <= 0.8
    assert results["truncated_share"] < 0.5
