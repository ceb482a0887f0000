"""The human-preference image rewards, PickScore and HPSv2 / HPSv2.1, on tiny random CLIP models built from configs:
their maths against a hand computation, and the model ids they load at run time (never downloaded here)."""

import math

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from raft_trainer import models as weights_module
from raft_trainer.diffusion.rewards import hps as hps_module
from raft_trainer.diffusion.rewards import pickscore as pickscore_module
from raft_trainer.diffusion.rewards.hps import hps_preprocess
from raft_trainer.diffusion.tiny import tiny_clip_model, tiny_open_clip
from raft_trainer.rewards import HPSv2, PickScore, reward_function_name

PROMPTS = ["lower newer", "wider", "lower newer", "lowest", "wider", "low"]  # words of the tiny CLIP vocabulary


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    sizes = [(40, 48), (32, 32), (64, 50), (36, 36), (48, 40), (33, 70)]
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for height, width in sizes]


# PickScore -------------------------------------------------------------------------------------------------------


def test_pickscore_is_exp_logit_scale_times_the_cosine_of_fixed_embeddings():
    model, processor = tiny_clip_model()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(50.0))
    # Fixed embeddings in place of the encoders, one row per distinct prompt (in order) and per image.
    text_rows = {"lower newer": [3.0, 4.0, 0.0], "wider": [0.0, 2.0, 0.0]}
    image_rows = [[4.0, 3.0, 0.0], [0.0, 0.0, 5.0], [0.0, 1.0, 0.0]]
    asked = []

    def fixed_text(input_ids, **_):
        asked.append(len(input_ids))
        return torch.tensor(list(text_rows.values())[: len(input_ids)])

    model.get_text_features = fixed_text
    model.get_image_features = lambda pixel_values: torch.tensor(image_rows[: len(pixel_values)])
    scorer = PickScore(model, processor)
    scores = scorer(images=[Image.new("RGB", (32, 32))] * 3, prompts=["lower newer", "lower newer", "wider"])
    # 50 x cosine: (3,4).(4,3) / 25 = 0.96; (3,4) against (0,0,5) is orthogonal; (0,2).(0,1) / 2 = 1.
    assert scores == pytest.approx([48.0, 0.0, 50.0], abs=1e-4)
    assert asked == [2]  # each distinct prompt encoded once


def test_pickscore_equals_the_computation_by_hand_on_the_clip_features(images):
    model, processor = tiny_clip_model()
    scorer = PickScore(model, processor, batch_size=4)
    with torch.no_grad():
        tokens = processor(text=PROMPTS, padding=True, return_tensors="pt")
        text = model.get_text_features(**tokens).pooler_output.double()
        image = model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output.double()
    cosine = (image * text).sum(-1) / (image.norm(dim=-1) * text.norm(dim=-1))
    expected = model.logit_scale.exp().item() * cosine

    scorer.train()  # as a trainer might: scoring stays in evaluation mode
    scores = scorer(images=images, prompts=PROMPTS, topic=list("abcdef"))
    assert len(scores) == len(images) and all(type(score) is float for score in scores)
    assert scores == pytest.approx(expected.tolist(), abs=1e-4)
    assert np.ptp(scores) > 1e-3
    assert PickScore(model, processor, batch_size=1)(images=images, prompts=PROMPTS) == pytest.approx(scores, abs=1e-4)
    same_image = scorer(images=[images[0]] * 2, prompts=["lower newer", "wider"])
    assert abs(same_image[0] - same_image[1]) > 1e-4  # the prompt matters
    assert reward_function_name(scorer) == "pickscore"
    assert scorer(images=[], prompts=[]) == []
    with pytest.raises(ValueError, match="PickScore needs one prompt per image: got 6 images and 2 prompts"):
        scorer(images=images, prompts=PROMPTS[:2])


def test_pickscore_loads_the_model_and_processor_it_is_given_by_id(monkeypatch, images):
    model, processor = tiny_clip_model()
    loaded = []
    monkeypatch.setattr(pickscore_module.CLIPModel, "from_pretrained", lambda name: loaded.append(name) or model)
    monkeypatch.setattr(
        pickscore_module.AutoProcessor, "from_pretrained", lambda name: loaded.append(name) or processor
    )
    scorer = PickScore()
    assert loaded == ["yuvalkirstain/PickScore_v1", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"]
    assert len(scorer(images=images[:2], prompts=PROMPTS[:2])) == 2
    PickScore("my/pickscore", "my/clip-processor")
    assert loaded[2:] == ["my/pickscore", "my/clip-processor"]
    assert not any(parameter.requires_grad for parameter in scorer.parameters())


# HPSv2 -----------------------------------------------------------------------------------------------------------


@pytest.fixture
def hps_checkpoint(tmp_path):
    """A tiny OpenCLIP model saved as the HPS files are, `{"state_dict": ...}`, under the v2.1 file name."""
    model, _, _ = tiny_open_clip(seed=1)
    path = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, path)
    return model, path


def test_hpsv2_loads_the_checkpoint_and_scores_the_dot_product_of_normalised_features(hps_checkpoint, images):
    saved, path = hps_checkpoint
    fresh, _, tokenizer = tiny_open_clip(seed=0)  # other weights until the checkpoint is loaded
    preprocess = hps_preprocess(32)
    scorer = HPSv2(path, model=fresh, preprocess=preprocess, tokenizer=tokenizer, batch_size=4)
    assert all(torch.equal(fresh.state_dict()[key], value) for key, value in saved.state_dict().items())
    with torch.no_grad():
        image = F.normalize(saved.encode_image(torch.stack([preprocess(picture) for picture in images])).double())
        text = F.normalize(saved.encode_text(tokenizer(PROMPTS)).double())
    expected = torch.diagonal(image @ text.T)  # hpsv2's score: no logit scale

    scores = scorer(images=images, prompts=PROMPTS)
    assert scores == pytest.approx(expected.tolist(), abs=1e-5)
    assert all(-1 <= score <= 1 for score in scores) and np.ptp(scores) > 1e-4
    assert reward_function_name(scorer) == "hpsv2"
    with pytest.raises(ValueError, match="HPSv2 needs one prompt per image"):
        scorer(images=images)


def test_hpsv2_reads_the_versions_file_from_a_folder_and_rejects_what_does_not_fit(hps_checkpoint, tmp_path):
    saved, path = hps_checkpoint
    folder = tmp_path / "hps"
    folder.mkdir()
    path.rename(folder / "HPS_v2_compressed.pt")  # the v2.0 file name
    fresh, preprocess, tokenizer = tiny_open_clip(seed=0)
    HPSv2(folder, version="v2.0", model=fresh, preprocess=preprocess, tokenizer=tokenizer)
    assert torch.equal(fresh.visual.conv1.weight, saved.visual.conv1.weight)

    with pytest.raises(ValueError, match="version='v3': HPS checkpoints are v2.0, v2.1"):
        HPSv2(folder, version="v3", model=fresh, preprocess=preprocess, tokenizer=tokenizer)
    other, _, _ = tiny_open_clip(embed_dim=16)
    with pytest.raises(ValueError, match="(?s)does not fit this OpenCLIP model.*with model='ViT-H-14'"):
        HPSv2(folder, version="v2.0", model=other, preprocess=preprocess, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="tokenizer"):
        HPSv2(model=fresh, preprocess=preprocess)


def test_hpsv2_builds_vit_h_14_without_weights_and_loads_the_hub_checkpoint(hps_checkpoint, monkeypatch, images):
    saved, path = hps_checkpoint
    built, downloads = [], []
    fresh, _, _ = tiny_open_clip(seed=0)

    def fake_create_model(name, pretrained=None, **kwargs):
        built.append((name, pretrained))
        return fresh

    def fake_download(repo_id, filename):
        downloads.append((repo_id, filename))
        return str(path)

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    monkeypatch.setattr(weights_module, "hf_hub_download", fake_download)
    scorer = HPSv2()
    assert built == [("ViT-H-14", None)]  # the architecture only: every weight comes from the HPS checkpoint
    assert downloads == [("xswu/HPSv2", "HPS_v2.1_compressed.pt")]
    assert torch.equal(fresh.visual.conv1.weight, saved.visual.conv1.weight)
    assert len(scorer(images=images[:2], prompts=PROMPTS[:2])) == 2
    HPSv2(version="v2.0")
    assert downloads[1] == ("xswu/HPSv2", "HPS_v2_compressed.pt")
    assert hps_module.HPS_FILES == {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}


def test_hps_transform_pads_the_short_side_instead_of_cropping():
    wide = Image.new("RGB", (64, 32), (255, 255, 255))  # white, twice as wide as high
    pixels = hps_preprocess(32)(wide)
    assert pixels.shape == (3, 32, 32)
    black = (0 - torch.tensor(open_clip.OPENAI_DATASET_MEAN)) / torch.tensor(open_clip.OPENAI_DATASET_STD)
    white = (1 - torch.tensor(open_clip.OPENAI_DATASET_MEAN)) / torch.tensor(open_clip.OPENAI_DATASET_STD)
    torch.testing.assert_close(pixels[:, :8].mean(dim=(1, 2)), black, atol=1e-3, rtol=0)  # padded rows
    torch.testing.assert_close(pixels[:, 12:20].mean(dim=(1, 2)), white, atol=1e-2, rtol=0)  # the whole image, resized
