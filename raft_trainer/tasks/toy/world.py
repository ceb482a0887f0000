"""A miniature HH-RLHF: synthetic "Human: ... Assistant:" dialogs with a hidden ground truth.

Prompts ask about one of a few dozen topics with one of several intents. Responses come from templates in six
qualities: helpful and on topic (using some of the topic's keywords), vague, off topic (helpful, but about another
topic), rude, repetitive and too short. `true_score` is the hidden human preference that rates a response for a
prompt; preference pairs are labelled by it with some label noise, so a reward model learned from them is
imperfect, as real ones are.
"""

import random
import re
from dataclasses import dataclass

from datasets import Dataset

TOPICS = {
    "bread": ["flour", "yeast", "dough", "oven"],
    "coffee": ["beans", "grinder", "water", "filter"],
    "garden": ["soil", "seeds", "compost", "sunlight"],
    "bicycle": ["tires", "chain", "brakes", "helmet"],
    "sleep": ["bedtime", "darkness", "routine", "pillow"],
    "running": ["shoes", "pace", "stretching", "distance"],
    "guitar": ["chords", "strings", "tuning", "rhythm"],
    "camping": ["tent", "stove", "map", "flashlight"],
}
QUESTIONS = [
    "How do I get started with {topic} ?",
    "Can you give me some tips on {topic} ?",
    "What should I know about {topic} ?",
    "I need help with {topic} .",
    "What is the best way to learn {topic} ?",
    "Any advice about {topic} ?",
    "How can I get better at {topic} ?",
    "What are common mistakes with {topic} ?",
    "Where do I begin with {topic} ?",
    "Could you explain {topic} to a beginner ?",
]
GREETINGS = ["", "Hi .", "Hello .", "Quick question .", "Please help ."]

OPENERS = ["Sure .", "Happy to help .", "Good question .", "Of course .", "Great question ."]
STEPS = [
    "Start with the {0} and the {1} .",
    "Focus on {0} first , then {1} .",
    "Make sure the {0} is ready before you think about {1} .",
    "Spend a little time on {0} every day .",
    "Keep the {0} simple and check the {1} often .",
    "A good {0} makes a big difference .",
    "Do not forget the {0} .",
]
CLOSERS = ["", "Good luck !", "Hope this helps .", "Enjoy it !", "You will do great ."]
VAGUE = [
    "It depends .",
    "There are many things to consider .",
    "You could try different things .",
    "Some people like it and some do not .",
    "Maybe look it up somewhere .",
    "Everyone is different .",
    "It is hard to say .",
]
RUDE = [
    "That is a stupid question .",
    "Figure it out yourself .",
    "Why would anyone care about {topic} ?",
    "Stop asking me things .",
    "Nobody cares , go away .",
]
SHORT = ["Yes .", "Okay .", "No .", "Sure .", "Maybe ."]

POLITE_WORDS = {"sure", "happy", "luck", "hope", "course", "great", "enjoy"}
RUDE_WORDS = {"stupid", "yourself", "stop", "nobody", "away"}
QUALITIES = ("helpful", "vague", "off_topic", "rude", "repetitive", "short")
QUALITY_WEIGHTS = (0.3, 0.15, 0.2, 0.1, 0.1, 0.15)


def words(text: str) -> list[str]:
    """Lower-cased words of a text, punctuation dropped."""
    return re.findall(r"[a-z]+", text.lower())


def make_prompt(topic: str, question: str, greeting: str) -> str:
    return " ".join(part for part in ("Human:", greeting, question.format(topic=topic), "Assistant:") if part)


def topic_of(prompt: str) -> str:
    """The topic a prompt asks about (its last topic word: greetings hold none)."""
    return [word for word in words(prompt) if word in TOPICS][-1]


def helpful_response(topic: str, rng: random.Random) -> str:
    keywords = rng.sample(TOPICS[topic], k=4)
    num_steps = rng.randint(1, 3)
    steps = [rng.choice(STEPS).format(keywords[i], keywords[(i + 1) % 4]) for i in range(num_steps)]
    if rng.random() < 0.5:
        steps[0] = f"With {topic} , {steps[0][0].lower()}{steps[0][1:]}"
    parts = [rng.choice(OPENERS) if rng.random() < 0.8 else "", *steps, rng.choice(CLOSERS)]
    return " ".join(part for part in parts if part)


def response(topic: str, quality: str, rng: random.Random) -> str:
    """A response of the given quality to a prompt about `topic`."""
    if quality == "helpful":
        return helpful_response(topic, rng)
    if quality == "vague":
        return " ".join(rng.sample(VAGUE, k=rng.randint(1, 3)))
    if quality == "off_topic":
        return helpful_response(rng.choice([other for other in TOPICS if other != topic]), rng)
    if quality == "rude":
        return " ".join(sentence.format(topic=topic) for sentence in rng.sample(RUDE, k=rng.randint(1, 2)))
    if quality == "repetitive":
        keyword = rng.choice(TOPICS[topic])
        return " ".join([keyword] * rng.randint(3, 6) + ["is", "good"] * rng.randint(2, 4) + ["."])
    return rng.choice(SHORT)


def true_score(prompt: str, text: str) -> float:
    """The hidden human preference: on-topic, specific, polite, varied answers of a sensible length score high."""
    topic = topic_of(prompt)
    tokens = words(text)
    if not tokens:
        return -4.0
    keywords = set(TOPICS[topic])
    other_keywords = {word for other, words_ in TOPICS.items() if other != topic for word in words_} - keywords
    coverage = len(keywords & set(tokens)) / len(keywords)
    repetition = 1 - len(set(tokens)) / len(tokens)
    return (
        3.0 * coverage
        + 0.5 * (topic in tokens)
        + 0.5 * bool(POLITE_WORDS & set(tokens))
        - 2.0 * bool(RUDE_WORDS & set(tokens))
        - 1.5 * bool(other_keywords & set(tokens))
        - 3.0 * repetition
        - 2.0 * max(0, 6 - len(tokens)) / 6
        - max(0, len(tokens) - 40) / 40
    )


@dataclass
class ToyWorld:
    """The miniature world's data: what the paper's HH-RLHF pipeline needs, and its ground truth."""

    sft: Dataset  # prompt, completion: the chosen responses, for the SFT start
    pairs: Dataset  # prompt, chosen, rejected: for the reward model
    train_prompts: Dataset  # prompt: RAFT draws from these
    eval_prompts: Dataset  # prompt: held out, for reward, true score and diversity
    eval_chosen: Dataset  # prompt, completion: held-out chosen responses, for perplexity

    def corpus(self) -> list[str]:
        """Every text of the world, to train the tokenizer on."""
        return [text for row in self.pairs for text in row.values()] + list(self.eval_chosen["completion"])


def make_world(
    seed: int = 0, num_pairs: int = 4000, num_eval: int = 200, label_noise: float = 0.1, helpful_pairs: float = 0.5
) -> ToyWorld:
    """Generate the world. Prompts are split into training and held-out ones; each preference pair compares two
    responses to one prompt, the better by `true_score` chosen (flipped with `label_noise`). A share
    `helpful_pairs` of the pairs sets a helpful answer against one of another quality (as in HH-RLHF, where one
    answer of a pair is usually a real attempt); the others compare two responses of random qualities."""
    rng = random.Random(seed)
    prompts = [make_prompt(t, q, g) for t in TOPICS for q in QUESTIONS for g in GREETINGS]
    rng.shuffle(prompts)
    eval_prompts, train_prompts = prompts[:num_eval], prompts[num_eval:]

    def pair(prompt: str) -> tuple[str, str]:
        topic = topic_of(prompt)
        while True:
            if rng.random() < helpful_pairs:  # half of these against an answer that sounds good but is off topic
                qualities = ["helpful", "off_topic" if rng.random() < 0.5 else rng.choice(QUALITIES[1:])]
            else:
                qualities = rng.choices(QUALITIES, QUALITY_WEIGHTS, k=2)
            a, b = (response(topic, quality, rng) for quality in qualities)
            if true_score(prompt, a) != true_score(prompt, b):
                break
        chosen, rejected = (a, b) if true_score(prompt, a) > true_score(prompt, b) else (b, a)
        return (rejected, chosen) if rng.random() < label_noise else (chosen, rejected)

    pair_prompts = [rng.choice(train_prompts) for _ in range(num_pairs)]
    pairs = [pair(prompt) for prompt in pair_prompts]
    eval_chosen = [pair(prompt)[0] for prompt in eval_prompts]
    return ToyWorld(
        sft=Dataset.from_dict({"prompt": pair_prompts, "completion": [" " + chosen for chosen, _ in pairs]}),
        pairs=Dataset.from_dict(
            {
                "prompt": pair_prompts,
                "chosen": [" " + chosen for chosen, _ in pairs],
                "rejected": [" " + rejected for _, rejected in pairs],
            }
        ),
        train_prompts=Dataset.from_dict({"prompt": train_prompts}),
        eval_prompts=Dataset.from_dict({"prompt": eval_prompts}),
        eval_chosen=Dataset.from_dict({"prompt": eval_prompts, "completion": [" " + text for text in eval_chosen]}),
    )
