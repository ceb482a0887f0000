import json

import pytest
from transformers import AutoModelForCausalLM

from raft_trainer.tasks.toy.tiny import tiny_causal_lm, word_tokenizer

from .helpers import load_example

hh = load_example("llm/raft_hh_rlhf.py")

TOPICS = ["bread", "tea", "chess", "music", "rain", "cats"]


def dahoas_rows(count: int) -> list[dict]:
    """Rows in Dahoas/full-hh-rlhf's format; the last one has a prompt far over the length limit."""
    rows = []
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        prompt = f"\n\nHuman: Tell me about {topic} .\n\nAssistant:"
        rows.append(
            {
                "prompt": prompt,
                "response": f" {topic} is nice .",
                "chosen": f" {topic} is nice .",
                "rejected": " go away .",
            }
        )
    rows[-1]["prompt"] = "\n\nHuman:" + " very" * 40 + " long .\n\nAssistant:"
    return rows


def anthropic_rows(count: int) -> list[dict]:
    """The same dialogs as whole transcripts, as in Anthropic/hh-rlhf."""
    return [
        {"chosen": row["prompt"] + row["chosen"], "rejected": row["prompt"] + row["rejected"]}
        for row in dahoas_rows(count)
    ]


def write_dataset(directory, make_rows) -> str:
    directory.mkdir()
    for split, count in (("train", 24), ("test", 6)):
        (directory / f"{split}.jsonl").write_text("\n".join(json.dumps(row) for row in make_rows(count)))
    return str(directory)


@pytest.fixture
def base_model(tmp_path):
    corpus = [text for row in dahoas_rows(12) for text in row.values()]
    tokenizer = word_tokenizer(corpus)
    path = tmp_path / "base"
    tiny_causal_lm(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_anthropic_transcripts_split_at_the_last_assistant_turn():
    transcript = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: fine, thanks"
    assert hh.split_transcript(transcript) == (
        "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant:",
        " fine, thanks",
    )


@pytest.mark.parametrize(("dataset_format", "use_peft"), [(dahoas_rows, False), (anthropic_rows, True)])
def test_the_whole_paper_pipeline_runs_on_local_stand_ins(tmp_path, base_model, dataset_format, use_peft):
    data = write_dataset(tmp_path / "data", dataset_format)
    out = tmp_path / "run"
    summary = hh.main(
        [
            "--dataset_name",
            data,
            "--base_model_name_or_path",
            base_model,
            "--reward_base_model_name_or_path",
            base_model,
            "--use_peft",
            str(use_peft),
            "--lora_r",
            "4",
            "--output_dir",
            str(out),
            "--num_stages",
            "2",
            "--prompts_per_stage",
            "4",
            "--num_generations",
            "2",
            "--max_completion_length",
            "6",
            "--max_prompt_length",
            "16",
            "--per_device_train_batch_size",
            "2",
            "--gradient_accumulation_steps",
            "1",
            "--learning_rate",
            "1e-3",
            "--save_strategy",
            "no",
            "--num_eval_prompts",
            "5",
            "--disable_tqdm",
            "true",
        ]
    )
    assert (out / "sft" / "config.json").exists() and (out / "reward" / "config.json").exists()
    assert [stage["stage"] for stage in summary["stages"]] == [0, 1]
    assert {"reward", "perplexity", "msttr_100", "distinct_1", "unique_2", "length"} <= set(summary["eval"]["after"])
    stage_rows = [json.loads(line) for line in (out / "stages" / "stage_000.jsonl").read_text().splitlines()]
    assert all("very" not in row["prompt"] for row in stage_rows)  # the over-long prompt was dropped
    assert all(row["prompt"].endswith("\n\nAssistant:") for row in stage_rows)
    AutoModelForCausalLM.from_pretrained(out)


def test_prepare_hh_drops_long_prompts_from_every_phase(base_model):
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    dataset = DatasetDict({"train": Dataset.from_list(dahoas_rows(12)), "test": Dataset.from_list(dahoas_rows(6))})
    data = hh.prepare_hh(dataset, AutoTokenizer.from_pretrained(base_model), max_prompt_tokens=16, num_eval_prompts=3)
    assert len(data["sft"]) == len(data["pairs"]) == len(data["prompts"]) == 11
    assert data["sft"].column_names == ["prompt", "completion"]
    assert data["pairs"].column_names == ["prompt", "chosen", "rejected"]
    assert len(data["eval_prompts"]) == len(data["eval_chosen"]) == 3
