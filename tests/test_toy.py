import random

import pytest
from transformers import AutoModelForCausalLM

from raft_trainer.rewards import RewardModel
from raft_trainer.tasks.toy import pipeline
from raft_trainer.tasks.toy.world import QUALITIES, TOPICS, make_prompt, make_world, response, topic_of, true_score


def test_true_score_prefers_helpful_on_topic_answers():
    prompt = make_prompt("bread", "How do I get started with {topic} ?", "Hi .")
    assert topic_of(prompt) == "bread"
    good = "Sure . With bread , start with the flour and the yeast . Keep the dough simple and check the oven often ."
    worse = {
        "vague": "It depends . Everyone is different .",
        "off topic": "Sure . With coffee , start with the beans and the grinder .",
        "rude": "That is a stupid question . Figure it out yourself .",
        "repetitive": "flour flour flour flour is good is good is good .",
        "short": "Okay .",
    }
    for name, text in worse.items():
        assert true_score(prompt, good) > true_score(prompt, text) + 1.0, name


def test_every_quality_has_templates_within_the_vocabulary_of_its_topic():
    rng = random.Random(0)
    for topic in TOPICS:
        for quality in QUALITIES:
            assert response(topic, quality, rng).strip()
    helpful = [response("garden", "helpful", rng) for _ in range(50)]
    assert all(set(TOPICS["garden"]) & set(text.split()) for text in helpful)


def test_world_splits_and_label_noise():
    world = make_world(seed=3, num_pairs=2000, num_eval=40, label_noise=0.1)
    assert len(world.pairs) == len(world.sft) == 2000
    assert not set(world.eval_prompts["prompt"]) & set(world.train_prompts["prompt"])
    assert set(world.pairs["prompt"]) <= set(world.train_prompts["prompt"])
    assert list(world.eval_chosen["prompt"]) == list(world.eval_prompts["prompt"])
    flipped = sum(true_score(r["prompt"], r["chosen"]) < true_score(r["prompt"], r["rejected"]) for r in world.pairs)
    assert 0.07 < flipped / len(world.pairs) < 0.13
    assert make_world(seed=3, num_pairs=2000, num_eval=40).pairs.to_dict() == world.pairs.to_dict()


def test_models_are_trained_once_then_loaded_from_the_cache(tmp_path, monkeypatch):
    world = make_world(seed=0, num_pairs=64, num_eval=8)
    models = pipeline.prepare_models(world, str(tmp_path), seed=0, show_progress=False)
    policy = AutoModelForCausalLM.from_pretrained(models.policy_path)
    scorer = RewardModel.from_pretrained(models.reward_model_path)
    assert policy.config.n_embd == pipeline.MODEL_SIZE["n_embd"]
    assert len(scorer(prompts=world.eval_chosen["prompt"][:2], completions=world.eval_chosen["completion"][:2])) == 2

    def must_not_train(trainer):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(pipeline, "train_phase", must_not_train)
    assert pipeline.prepare_models(world, str(tmp_path), seed=0, show_progress=False) == models
    with pytest.raises(AssertionError, match="cache"):  # another world is another cache entry
        pipeline.prepare_models(make_world(seed=0, num_pairs=32, num_eval=8), str(tmp_path), seed=0)
