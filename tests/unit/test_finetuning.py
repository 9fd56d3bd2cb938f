"""Contrastive fine-tuning: the loss, the augmentations, and tiny real training runs (checkpoint + resume)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from devkit.corpus import real_photos
from server.embedding.contract import INPUT_SIZE
from training.augment import augment, load_image
from training.encoder_model import load_encoder
from training.finetune import CHECKPOINT_NAME, FinetuneConfig, nt_xent_loss, train


def _small_photos(n: int) -> list[Path]:
    """The n smallest real photos of the corpus: keeps decoding in the tests fast."""
    return sorted((p.path for p in real_photos()), key=lambda p: p.stat().st_size)[:n]


def _tiny_config(out: Path, steps: int, resume: bool = False, **overrides: object) -> FinetuneConfig:
    """One thread: multithreaded CPU convolution gradients sum in a varying order, and Adam turns those last-bit
    differences into visible weight differences, so an exact resume comparison needs a single thread."""
    settings = dict(out=out, images=_small_photos(5), steps=steps, batch_size=4, seed=3, resume=resume,
                    checkpoint_every=1, max_side=256, progress=False, threads=1)
    settings.update(overrides)
    return FinetuneConfig(**settings)


def test_nt_xent_all_equal_embeddings_is_log_of_candidates() -> None:
    """With every view identical, the positive is one of 2B-1 equally likely candidates."""
    batch = 6
    z = torch.ones(batch, 16)
    assert nt_xent_loss(z, z.clone(), temperature=0.1).item() == pytest.approx(math.log(2 * batch - 1), rel=1e-5)


def test_nt_xent_identical_views_beat_random_embeddings() -> None:
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(8, 32, generator=generator)
    other = torch.randn(8, 32, generator=generator)
    matched = nt_xent_loss(z, z.clone(), temperature=0.05).item()
    unmatched = nt_xent_loss(z, other, temperature=0.05).item()
    assert matched < unmatched
    assert matched < 0.1  # positives at cosine 1, negatives near 0: almost all mass on the positive


def test_relational_loss_is_zero_for_the_pretrained_geometry_and_ignores_views_of_one_image() -> None:
    from training.finetune import relational_loss

    torch.manual_seed(0)
    anchors = torch.nn.functional.normalize(torch.randn(4, 16), dim=1)
    ids = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    pretrained = anchors[ids]
    assert float(relational_loss(pretrained * 3.0, pretrained, ids)) < 1e-10  # scale-free: features are normalized
    # any features: the mean over pairs of views of different images only (views of one image may differ freely)
    features = torch.randn(8, 16)
    f = torch.nn.functional.normalize(features, dim=1)
    pairs = [(i, j) for i in range(8) for j in range(8) if ids[i] != ids[j]]
    expected = sum(float(f[i] @ f[j] - pretrained[i] @ pretrained[j]) ** 2 for i, j in pairs) / len(pairs)
    assert float(relational_loss(features, pretrained, ids)) == pytest.approx(expected, rel=1e-5)
    assert expected > 1e-3


def test_augment_is_deterministic_under_a_seed() -> None:
    image = load_image(_small_photos(1)[0])
    first = [augment(image, np.random.default_rng(7)) for _ in range(2)]
    other = augment(image, np.random.default_rng(8))
    assert first[0].shape == (INPUT_SIZE, INPUT_SIZE, 3)
    assert first[0].dtype == np.uint8
    np.testing.assert_array_equal(first[0], first[1])
    assert not np.array_equal(first[0], other)


def test_augment_handles_tiny_and_non_rgb_images() -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for image in (Image.new("L", (30, 17), 128), Image.new("RGBA", (5, 400), (10, 20, 30, 255))):
        for _ in range(5):
            pixels = augment(image, rng)
            assert pixels.shape == (INPUT_SIZE, INPUT_SIZE, 3) and pixels.dtype == np.uint8


@pytest.mark.parametrize("at_downscaled_size", [False, True])
def test_a_small_views_jpeg_is_encoded_at_its_small_size_only_when_asked(at_downscaled_size: bool) -> None:
    """Every random step off except a downscale to a quarter of the side and JPEG q15: the view must equal the
    JPEG applied before (asked) or after (not asked) scaling back up, and not the other one."""
    from dataclasses import replace

    from PIL import Image

    from evaluation.edits import jpeg_reencode
    from training.augment import COPY_DETECTION_SMALL_JPEG

    config = replace(COPY_DETECTION_SMALL_JPEG, jpeg_at_downscaled_size=at_downscaled_size, crop_scale=(1.0, 1.0),
                     crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, rotate_p=0.0,
                     overlay_p=0.0, downscale_p=1.0, downscale=(0.25, 0.25), jpeg_p=1.0, jpeg_quality=(15, 15))
    yy, xx = np.mgrid[0:INPUT_SIZE, 0:INPUT_SIZE]
    texture = np.stack([(xx * 7 + yy * 3) % 256, (xx * yy) % 256, np.hypot(xx - 112, yy - 112) * 9 % 256], axis=2)
    image = Image.fromarray(texture.astype(np.uint8))  # edges at every scale, so each order leaves its own blocks
    small = image.resize((INPUT_SIZE // 4, INPUT_SIZE // 4), Image.Resampling.BILINEAR)
    up = (INPUT_SIZE, INPUT_SIZE)
    jpeg_then_up = np.asarray(jpeg_reencode(small, 15).resize(up, Image.Resampling.BILINEAR))
    up_then_jpeg = np.asarray(jpeg_reencode(small.resize(up, Image.Resampling.BILINEAR), 15))
    view = augment(image, np.random.default_rng(0), config)
    expected, other = (jpeg_then_up, up_then_jpeg) if at_downscaled_size else (up_then_jpeg, jpeg_then_up)
    np.testing.assert_array_equal(view, expected)
    assert not np.array_equal(view, other)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """3 steps straight, and 2 steps + resume to 3, from the same seed."""
    straight = tmp_path_factory.mktemp("straight")
    resumed = tmp_path_factory.mktemp("resumed")
    train(_tiny_config(straight, steps=3))
    train(_tiny_config(resumed, steps=2))
    assert torch.load(resumed / CHECKPOINT_NAME, weights_only=True)["step"] == 2
    train(_tiny_config(resumed, steps=3, resume=True))
    return {"straight": straight / CHECKPOINT_NAME, "resumed": resumed / CHECKPOINT_NAME}


def test_training_writes_a_loadable_checkpoint(runs: dict[str, Path]) -> None:
    state = torch.load(runs["straight"], map_location="cpu", weights_only=True)
    assert {"encoder", "head", "optimizer", "step", "rng"} <= set(state)
    assert state["step"] == 3
    assert len(state["losses"]) == 3 and all(math.isfinite(loss) for loss in state["losses"])
    assert not list(runs["straight"].parent.glob("*.tmp"))  # written atomically, nothing left behind
    embedding = load_encoder(runs["straight"])(torch.zeros(1, INPUT_SIZE, INPUT_SIZE, 3, dtype=torch.uint8))
    assert embedding.shape == (1, 1280) and torch.isfinite(embedding).all()


def test_only_trainable_layers_change(runs: dict[str, Path]) -> None:
    pretrained = load_encoder()
    tuned = torch.load(runs["straight"], map_location="cpu", weights_only=True)["encoder"]
    blocks = len(pretrained.backbone._blocks)
    trainable_prefixes = (*(f"backbone._blocks.{i}." for i in range(blocks - FinetuneConfig.trainable_blocks, blocks)),
                          "backbone._conv_head.", "backbone._bn1.")
    parameter_names = {name for name, _ in pretrained.named_parameters()}
    changed = []
    for name, before in pretrained.state_dict().items():
        if not torch.equal(before, tuned[name]):
            changed.append(name)
            assert name.startswith(trainable_prefixes), f"frozen {name} changed"
    trainable = {n for n in parameter_names if n.startswith(trainable_prefixes)}
    assert set(changed) == trainable  # every trainable weight moved; no BN running statistic did


def test_resume_matches_an_uninterrupted_run(runs: dict[str, Path]) -> None:
    straight = torch.load(runs["straight"], map_location="cpu", weights_only=True)
    resumed = torch.load(runs["resumed"], map_location="cpu", weights_only=True)
    assert resumed["step"] == straight["step"] == 3
    np.testing.assert_allclose(resumed["losses"], straight["losses"], rtol=1e-5)
    for part in ("encoder", "head"):
        for name, value in straight[part].items():
            assert torch.allclose(value.float(), resumed[part][name].float(), atol=1e-6), f"{part}.{name}"


def test_click_pairs_are_used_as_positives(tmp_path: Path) -> None:
    """Two click pairs, one of them with images outside the training set: 3 photos + 2 pairs fill a batch of 4."""
    photos = _small_photos(5)
    clicks = tmp_path / "clicks.jsonl"
    clicks.write_text("".join(json.dumps({"query_image": str(a), "clicked_image": str(b)}) + "\n"
                              for a, b in itertools.pairwise(photos[2:5])))
    path = train(_tiny_config(tmp_path / "out", steps=1, images=photos[:3], click_pairs=clicks))
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["step"] == 1 and math.isfinite(state["losses"][0])


def test_too_few_images_for_the_batch_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fewer than the batch size"):
        train(_tiny_config(tmp_path, steps=1, images=_small_photos(3)))


def test_a_fine_tuned_share_mixes_every_weight_with_the_pretrained_one(runs: dict[str, Path]) -> None:
    """WiSE-FT (export_onnx --fine-tuned-share): 0 gives the pretrained model, 1 the checkpoint, 0.7 the
    per-weight mix; BatchNorm's integer step counters are copied, not mixed."""
    pretrained = load_encoder().state_dict()
    tuned = torch.load(runs["straight"], map_location="cpu", weights_only=True)["encoder"]
    for share in (0.0, 0.7, 1.0):
        mixed = load_encoder(runs["straight"], fine_tuned_share=share).state_dict()
        for name, value in mixed.items():
            if value.is_floating_point():
                want = share * tuned[name] + (1 - share) * pretrained[name]
                assert torch.allclose(value, want, atol=1e-6), name
            else:
                assert torch.equal(value, tuned[name]), name
    moved = [n for n, v in tuned.items() if not torch.equal(v, pretrained[n])]
    assert moved, "the fixture run changed no weight: the mix would prove nothing"
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        load_encoder(runs["straight"], fine_tuned_share=1.5)
