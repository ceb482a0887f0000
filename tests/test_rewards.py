import pytest
import torch

from raft_trainer.rewards import RewardModel, as_reward_functions, reward_function_name
from raft_trainer.tasks.toy.tiny import tiny_reward_model

from .helpers import NO_DROPOUT, share_of_apple


def test_reward_model_scores_in_padded_batches_as_it_does_one_by_one(tokenizer):
    torch.manual_seed(0)
    model = tiny_reward_model(tokenizer, **NO_DROPOUT)
    scorer = RewardModel(model, tokenizer, batch_size=3)
    prompts = ["say something", "tell me a word", "say", "tell me something please"]
    completions = [" apple", " dog dog egg fish", " kite", " lemon"]
    alone = []
    for prompt, completion in zip(prompts, completions):
        with torch.no_grad():
            inputs = tokenizer(prompt + completion + "<eos>", return_tensors="pt")
            assert inputs["input_ids"][0, -1] == tokenizer.eos_token_id  # as TRL's RewardTrainer trains on
            alone.append(model(**inputs).logits[0, 0].item())
    assert scorer(prompts=prompts, completions=completions) == pytest.approx(alone, abs=1e-5)


def test_reward_model_loads_from_a_local_path(tokenizer, tmp_path):
    tiny_reward_model(tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    [scorer] = as_reward_functions(str(tmp_path))
    assert isinstance(scorer, RewardModel)
    assert len(scorer(prompts=["say"], completions=[" apple"])) == 1


def test_a_classifier_with_several_labels_is_not_a_reward_model(tokenizer):
    model = tiny_reward_model(tokenizer)
    model.config.num_labels = 2
    with pytest.raises(ValueError, match="num_labels=1"):
        RewardModel(model, tokenizer)


def test_reward_functions_from_mixed_inputs(tokenizer):
    model = tiny_reward_model(tokenizer)
    functions = as_reward_functions([share_of_apple, model], [None, tokenizer])
    assert functions[0] is share_of_apple
    assert isinstance(functions[1], RewardModel) and functions[1].tokenizer is tokenizer
    assert reward_function_name(functions[0]) == "share_of_apple"
    with pytest.raises(ValueError, match="one per reward function"):
        as_reward_functions([share_of_apple, model], [tokenizer])
    with pytest.raises(ValueError, match="got int"):
        as_reward_functions(3)
