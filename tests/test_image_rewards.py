import io
import os
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from raft_trainer import models as weights_module
from raft_trainer.diffusion.rewards import JPEGCompressibility, JPEGIncompressibility
from raft_trainer.diffusion.tiny import tiny_open_clip
from raft_trainer.rewards import AestheticHead, AestheticScorer, CLIPScore, as_reward_functions, reward_function_name

# The real LAION aesthetic-predictor weights, when they are on this machine: read from outside the repository (never
# copied into it), from RAFT_AESTHETIC_HEAD_FILE or the project's shared assets folder beside the checkout.
REAL_HEAD_FILE = Path(
    os.environ.get(
        "RAFT_AESTHETIC_HEAD_FILE",
        Path(__file__).resolve().parents[2] / "shared/assets/laion-aesthetic/sac+logos+ava1-l14-linearMSE.pth",
    )
)
# The upstream predictor's layers: (key index, inputs, outputs); dropout layers sit at the indices in between.
UPSTREAM_LAYERS = [(0, 768, 1024), (2, 1024, 128), (4, 128, 64), (6, 64, 16), (7, 16, 1)]


def made_state_dict() -> dict:
    """Weights with the upstream file's keys and shapes, made here, so the maths is checked on any machine."""
    generator = torch.Generator().manual_seed(0)
    weights = {}
    for index, inputs, outputs in UPSTREAM_LAYERS:
        weights[f"layers.{index}.weight"] = torch.randn(outputs, inputs, generator=generator) / inputs**0.5
        weights[f"layers.{index}.bias"] = torch.randn(outputs, generator=generator) * 0.1
    return weights


def upstream_mlp(state_dict: dict, embeddings: torch.Tensor) -> np.ndarray:
    """The upstream predictor computed by hand from its state dict: five affine maps, in float64."""
    hidden = embeddings.double().numpy()
    for index in (0, 2, 4, 6, 7):
        weight = state_dict[f"layers.{index}.weight"].double().numpy()
        hidden = hidden @ weight.T + state_dict[f"layers.{index}.bias"].double().numpy()
    return hidden[:, 0]


@pytest.fixture(scope="module", params=["made", "real"])
def head_file(request, tmp_path_factory) -> Path:
    """A file of aesthetic-head weights: made in the test, and the real LAION file when it is here."""
    if request.param == "made":
        path = tmp_path_factory.mktemp("aesthetic") / "made-aesthetic-head.pth"
        torch.save(made_state_dict(), path)
        return path
    if not REAL_HEAD_FILE.is_file():
        pytest.skip(
            f"the real LAION aesthetic weights are not at {REAL_HEAD_FILE}: to check them too, set "
            "RAFT_AESTHETIC_HEAD_FILE to sac+logos+ava1-l14-linearMSE.pth (from "
            "christophschuhmann/improved-aesthetic-predictor); the maths is checked with made weights either way"
        )
    return REAL_HEAD_FILE


@pytest.fixture(scope="module")
def state_dict(head_file):
    return torch.load(head_file, map_location="cpu", weights_only=True)


@pytest.fixture
def head(state_dict):
    head = AestheticHead()
    head.load_state_dict(state_dict)  # strict: the upstream keys and shapes exactly
    return head


@pytest.fixture
def tiny_clip():
    model, preprocess, _ = tiny_open_clip()
    return model, preprocess


@pytest.fixture
def projection():
    torch.manual_seed(1)
    return nn.Linear(32, 768)


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    sizes = [(40, 48), (32, 32), (64, 50), (36, 36), (48, 40), (33, 70)]
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for height, width in sizes]


def test_aesthetic_head_computes_the_upstream_mlp(head, state_dict, head_file):
    embeddings = F.normalize(torch.randn(5, 768, generator=torch.Generator().manual_seed(0)), dim=-1)
    scores = head.eval()(embeddings)
    assert scores.shape == (5,)
    np.testing.assert_allclose(scores.detach().double().numpy(), upstream_mlp(state_dict, embeddings), atol=1e-4)
    assert np.ptp(scores.detach().numpy()) > 1e-4  # the embeddings matter
    if head_file == REAL_HEAD_FILE:
        assert ((scores > 0) & (scores < 10)).all()  # the real predictor scores on LAION's 1-10 scale


def test_aesthetic_head_loads_from_a_file_a_folder_or_the_hub(state_dict, head_file, monkeypatch):
    downloads = []

    def fake_download(repo_id, filename):
        downloads.append((repo_id, filename))
        return str(head_file)

    monkeypatch.setattr(weights_module, "hf_hub_download", fake_download)
    heads = [
        AestheticHead.from_pretrained(head_file),
        AestheticHead.from_pretrained(head_file.parent, filename=head_file.name),
    ]
    assert not downloads
    heads.append(AestheticHead.from_pretrained())
    assert downloads == [("trl-lib/ddpo-aesthetic-predictor", "aesthetic-model.pth")]
    for head in heads:
        assert head.state_dict().keys() == state_dict.keys()
        assert all(torch.equal(head.state_dict()[key], value) for key, value in state_dict.items())


def test_aesthetic_scorer_equals_the_pipeline_computed_by_hand(head, state_dict, tiny_clip, projection, images):
    model, preprocess = tiny_clip
    scorer = AestheticScorer(head=head, clip_model=model, preprocess=preprocess, projection=projection)
    with torch.no_grad():
        features = projection(model.encode_image(torch.stack([preprocess(image) for image in images])))
    expected = upstream_mlp(state_dict, features / features.norm(dim=-1, keepdim=True))

    scorer.train()  # as a trainer might: dropout must stay off while scoring
    scores = scorer(images=images, prompts=["a photo"] * len(images), topic=list("abcdef"))
    assert len(scores) == len(images) and all(type(score) is float for score in scores)
    assert scores == pytest.approx(expected.tolist(), abs=1e-4)
    assert np.ptp(scores) > 1e-3  # the images matter
    assert scorer(images=[], prompts=[]) == []
    assert reward_function_name(scorer) == "aesthetic"
    assert as_reward_functions(scorer) == [scorer]


def test_aesthetic_scores_do_not_depend_on_the_batch_size(head, tiny_clip, projection, images):
    model, preprocess = tiny_clip
    one = AestheticScorer(head, model, preprocess, projection, batch_size=1)(images=images)
    four = AestheticScorer(head, model, preprocess, projection, batch_size=4)(images=images)
    assert one == pytest.approx(four, abs=1e-5)


def test_aesthetic_scorer_records_no_gradients_and_moves_with_to(head, tiny_clip, projection, images):
    model, preprocess = tiny_clip
    scorer = AestheticScorer(head=head, clip_model=model, preprocess=preprocess, projection=projection)
    assert not any(parameter.requires_grad for parameter in scorer.parameters())
    outputs = []
    scorer.head.register_forward_hook(lambda module, args, output: outputs.append(output))
    scorer.requires_grad_(True)
    with torch.enable_grad():
        scores = scorer(images=images)
    assert not outputs[0].requires_grad and outputs[0].grad_fn is None

    assert scorer.to("cpu") is scorer
    assert scorer.to(torch.float64)(images=images) == pytest.approx(scores, abs=1e-4)
    assert all(parameter.dtype == torch.float64 for parameter in scorer.parameters())


def test_aesthetic_scorer_builds_openai_vit_l_14_with_quick_gelu_by_default(monkeypatch, images, head_file):
    calls = []
    model, preprocess, _ = tiny_open_clip(embed_dim=768)  # the head's input size, so no projection is needed

    def fake_create(name, pretrained=None, force_quick_gelu=False, **kwargs):
        calls.append((name, pretrained, force_quick_gelu))
        return model, None, preprocess

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake_create)
    scorer = AestheticScorer(head=head_file)
    assert calls == [("ViT-L-14", "openai", True)]  # OpenAI's weights were trained with QuickGELU
    scores = scorer(images=images)
    assert len(scores) == len(images) and all(np.isfinite(scores))
    with pytest.raises(ValueError, match="preprocess"):
        AestheticScorer(head=head_file, clip_model=scorer.clip_model)


def test_clip_score_is_100_times_the_cosine(tiny_clip, images):
    model, preprocess = tiny_clip
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    prompts = ["a red apple", "a dog on a beach", "a red apple", "an old house", "a kite", "a dog on a beach"]
    scorer = CLIPScore(model, preprocess=preprocess, tokenizer=tokenizer, batch_size=4)
    with torch.no_grad():
        image = model.encode_image(torch.stack([preprocess(picture) for picture in images]))
        text = model.encode_text(tokenizer(prompts))
    expected = 100 * F.cosine_similarity(image, text, dim=-1)

    scorer.train()
    scores = scorer(images=images, prompts=prompts, topic=list("abcdef"))
    assert len(scores) == len(images) and all(type(score) is float for score in scores)
    assert scores == pytest.approx(expected.tolist(), abs=1e-3)
    assert reward_function_name(scorer) == "clip_score"


def test_clip_score_depends_on_the_prompt_and_not_on_the_batch_size(tiny_clip, images):
    model, preprocess = tiny_clip
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    same_image = [images[0]] * 2
    scores = CLIPScore(model, preprocess=preprocess, tokenizer=tokenizer)(
        images=same_image, prompts=["a red apple", "a dog on a beach"]
    )
    assert abs(scores[0] - scores[1]) > 1e-3

    prompts = [f"picture number {index % 3}" for index in range(len(images))]
    one = CLIPScore(model, preprocess=preprocess, tokenizer=tokenizer, batch_size=1)(images=images, prompts=prompts)
    four = CLIPScore(model, preprocess=preprocess, tokenizer=tokenizer, batch_size=4)(images=images, prompts=prompts)
    assert one == pytest.approx(four, abs=1e-4)


def test_clip_score_wants_one_prompt_per_image(tiny_clip, images):
    model, preprocess = tiny_clip
    scorer = CLIPScore(model, preprocess=preprocess, tokenizer=open_clip.get_tokenizer("ViT-B-32"))
    with pytest.raises(ValueError, match=r"6 images and 2 prompts"):
        scorer(images=images, prompts=["a", "b"])
    with pytest.raises(ValueError, match=r"images and no prompts"):
        scorer(images=images)
    with pytest.raises(ValueError, match="tokenizer"):
        CLIPScore(model, preprocess=preprocess)


def test_clip_score_builds_a_named_open_clip_model(monkeypatch, images):
    calls = []
    model, preprocess, _ = tiny_open_clip()

    def fake_create(name, pretrained=None, force_quick_gelu=False, **kwargs):
        calls.append((name, pretrained, force_quick_gelu))
        return model, None, preprocess

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake_create)
    scorer = CLIPScore()
    assert calls == [("ViT-H-14", "laion2b_s32b_b79k", False)]
    assert len(scorer(images=images[:2], prompts=["a cat", "a dog"])) == 2


def jpeg_kb_by_hand(image: Image.Image, quality: int = 95) -> float:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return len(buffer.getvalue()) / 1000


def test_jpeg_compressibility_is_minus_the_jpeg_size_in_kb_as_in_ddpo(images):
    compressibility, incompressibility = JPEGCompressibility(), JPEGIncompressibility()
    expected = [jpeg_kb_by_hand(image) for image in images]
    assert incompressibility(images=images, prompts=["a"] * len(images), topic=list("abcdef")) == expected
    assert compressibility(images=images) == [-size for size in expected]
    flat, noise = Image.new("RGB", (64, 64), (120, 30, 200)), images[2]
    assert compressibility(images=[flat])[0] > compressibility(images=[noise])[0]  # flat images compress better
    assert JPEGIncompressibility(quality=50)(images=[noise]) == [jpeg_kb_by_hand(noise, 50)]
    assert [reward_function_name(function) for function in (compressibility, incompressibility)] == [
        "jpeg_compressibility",
        "jpeg_incompressibility",
    ]
    assert as_reward_functions([compressibility]) == [compressibility]


def test_jpeg_reward_takes_arrays_and_tensors_like_pil_images(images):
    image = images[1]
    array = np.asarray(image)
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255  # CHW in [0, 1], as pipelines output
    reward = JPEGCompressibility()
    assert reward(images=[array]) == reward(images=[tensor]) == reward(images=[image])
    assert reward(images=[]) == []


@pytest.mark.parametrize("quality", [0, 101, 95.0, True])
def test_jpeg_reward_rejects_a_bad_quality(quality):
    with pytest.raises(ValueError, match="quality must be an int from 1 to 100"):
        JPEGCompressibility(quality=quality)


def test_jpeg_reward_wants_images():
    with pytest.raises(ValueError, match="call it with images="):
        JPEGIncompressibility()(completions=["a"])
