"""Local transformers backends, on tiny randomly initialized models saved to a temporary directory."""

import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from backends.hf_local import HFZeroShotBackend, ImagePreprocessing, center_crop, hf_image_classifier  # noqa: E402
from backends.torch_classifier import TorchClassifierBackend  # noqa: E402

LABELS = ["apple", "bee", "cloud", "drum", "egg"]
CLASS_NAMES = ["cat", "dog", "car"]


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vit")
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8, num_labels=5, id2label=dict(enumerate(LABELS)),
                       label2id={name: i for i, name in enumerate(LABELS)})
    ViTForImageClassification(config).eval().save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6],
                      image_std=[0.2, 0.25, 0.3]).save_pretrained(path)
    return path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte as a printable character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def write_clip_tokenizer(path) -> int:
    """A minimal CLIP BPE vocabulary (bytes, bytes + '</w>', a few merges, the two specials); returns its size."""
    alphabet = list(bytes_to_unicode().values())
    vocab = {}
    for token in alphabet + [a + "</w>" for a in alphabet]:
        vocab[token] = len(vocab)
    merges = ["a t</w>", "c at</w>", "o g</w>", "d og</w>"]
    for merge in merges:
        vocab["".join(merge.split())] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return len(vocab)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip")
    vocab_size = write_clip_tokenizer(path)
    CLIPTokenizer.from_pretrained(str(path)).save_pretrained(path)
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=vocab_size - 2,
                         eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    CLIPModel(config).eval().save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def random_images(n, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_vit_backend_matches_the_transformers_pipeline(vit_dir):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    backend = hf_image_classifier(vit_dir, max_batch=4)
    assert isinstance(backend, TorchClassifierBackend)
    assert backend.labels == LABELS and backend.image_size == (32, 32) and backend.num_labels == 5
    images = random_images(6)
    scores = backend.query(images)
    assert scores.shape == (6, 5) and scores.dtype == np.float64
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-6)

    processor = AutoImageProcessor.from_pretrained(str(vit_dir))
    model = AutoModelForImageClassification.from_pretrained(str(vit_dir)).eval()
    with torch.no_grad():
        pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
        expected = model(pixel_values=pixels).logits.softmax(dim=1).numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_vit_backend_is_white_box(vit_dir):
    backend = hf_image_classifier(vit_dir)
    for size in (32, 40):  # the model's size, and one that is resized first
        x = torch.rand(2, 3, size, size, requires_grad=True)
        logits = backend.logits(x)
        assert logits.shape == (2, 5)
        logits[:, 1].sum().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert backend.query(random_images(3, size=48)).shape == (3, 5)


def test_clip_zero_shot_backend_matches_the_transformers_model(clip_dir):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    backend = HFZeroShotBackend(clip_dir, CLASS_NAMES, max_batch=4)
    assert isinstance(backend, TorchClassifierBackend)
    assert backend.labels == CLASS_NAMES and backend.image_size == (32, 32)
    assert backend.prompts == ["a photo of a cat", "a photo of a dog", "a photo of a car"]
    images = random_images(5, seed=1)
    scores = backend.query(images)
    assert scores.shape == (5, 3)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-6)

    tokenizer = AutoTokenizer.from_pretrained(str(clip_dir))
    processor = AutoImageProcessor.from_pretrained(str(clip_dir))
    model = CLIPModel.from_pretrained(str(clip_dir)).eval()
    text = tokenizer(backend.prompts, padding=True, return_tensors="pt")
    assert (text["input_ids"] == tokenizer.convert_tokens_to_ids("<|endoftext|>")).any(dim=1).all()
    with torch.no_grad():
        pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
        expected = model(**text, pixel_values=pixels).logits_per_image.softmax(dim=1).numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)

    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    backend.logits(x)[:, 0].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_clip_template_and_class_names_change_the_scores(clip_dir):
    images = random_images(4, seed=2)
    base = HFZeroShotBackend(clip_dir, CLASS_NAMES).query(images)
    reordered = HFZeroShotBackend(clip_dir, CLASS_NAMES[::-1]).query(images)
    np.testing.assert_allclose(reordered, base[:, ::-1], atol=1e-6)
    other = HFZeroShotBackend(clip_dir, CLASS_NAMES, template="{}").query(images)
    assert not np.allclose(other, base)
    with pytest.raises(ValueError, match="distinct"):
        HFZeroShotBackend(clip_dir, ["cat", "cat"])
    with pytest.raises(ValueError, match="template"):
        HFZeroShotBackend(clip_dir, CLASS_NAMES, template="a photo")


def test_missing_files_are_reported(tmp_path, vit_dir):
    with pytest.raises(FileNotFoundError, match="config.json"):
        hf_image_classifier(tmp_path)
    (tmp_path / "config.json").write_text((vit_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        hf_image_classifier(tmp_path)


def test_preprocessing_configurations():
    clip = ImagePreprocessing.from_dict({"size": {"shortest_edge": 24}, "crop_size": {"height": 20, "width": 20},
                                         "do_center_crop": True, "image_mean": [0.5, 0.5, 0.5],
                                         "image_std": [0.25, 0.25, 0.25], "resample": 3})
    assert clip.image_size == (20, 20) and clip.mode == "bicubic"
    assert clip(torch.rand(1, 3, 30, 60)).shape == (1, 3, 20, 20)
    convnext = ImagePreprocessing.from_dict({"size": {"shortest_edge": 224}, "crop_pct": 0.875})
    assert convnext.resize == ("shortest_edge", 256) and convnext.image_size == (224, 224)
    raw = ImagePreprocessing.from_dict({"size": 8, "do_normalize": False, "do_rescale": False})
    ones = torch.ones(1, 3, 8, 8)
    torch.testing.assert_close(raw(ones), 255 * ones)  # the model saw 0..255 pixels
    grey = ImagePreprocessing.from_dict({"size": {"height": 8, "width": 8}})
    torch.testing.assert_close(grey(0.5 * ones), torch.zeros(1, 3, 8, 8))
    image = torch.arange(16.0).view(1, 1, 4, 4)
    torch.testing.assert_close(center_crop(image, (2, 2)), torch.tensor([[[[5.0, 6.0], [9.0, 10.0]]]]))


def test_a_zero_shot_run_from_the_cli_scores_the_data_sets_class_names(clip_dir, tmp_path):
    """Issue 21: `--backend clip:DIR` asks a local CLIP about --data's classes ("a photo of a 3"), end to end, with
    the identity mapping; the prompt file then classifies new images through the same backend."""
    from blackbox_vp.cli import main

    out = tmp_path / "run"
    assert main(["optimize", "--backend", f"clip:{clip_dir}", "--mapping", "identity", "--optimizer", "cma",
                 "--template", "a picture of the digit {}", "--data", "digits", "--budget", "400", "--train", "100",
                 "--val", "40", "--test", "40", "--batch-size", "4", "--grid", "2", "--quiet", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "finished" and result["queries_used"] <= 400 and result["test_accuracy"] is not None
    assert result["config"]["template"] == "a picture of the digit {}"
    from backends import make_backend

    model = make_backend(f"clip:{clip_dir}", class_names=[str(d) for d in range(10)], template="a picture of the "
                         "digit {}")
    assert model.labels == [str(d) for d in range(10)] and model.prompts[3] == "a picture of the digit 3"
    with pytest.raises(ValueError, match=r"--backend clip:.* scores your class names, and none were given"):
        make_backend(f"clip:{clip_dir}")
