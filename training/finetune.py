"""SimCLR-style contrastive fine-tuning of the encoder on unlabelled photos (optionally plus click pairs).

    python -m training.finetune --steps 300 --batch-size 16 --out var/finetune-run [--resume] [--seed 0]

Each step draws B images, makes two random views of each (training/augment.py) and trains with the
NT-Xent loss through a projection head, which is dropped afterwards: the checkpoint's `encoder` entry loads
with `training.encoder_model.load_encoder()` and exports with `python -m training.export_onnx --checkpoint`.

Sized for 2 CPU cores: only the last few MBConv blocks, the backbone's 1x1 head conv + BN and the projection
head train; the frozen layers need no gradients, so backprop only runs through the trailing blocks. All
BatchNorm layers stay in eval mode: batches of 2x16 augmented views would give noisy statistics, and the
served model normalises with the running statistics anyway.

`--steps` is the total step count: `--resume` continues from CKPT_DIR/last.pt up to it, and gives the same
weights as an uninterrupted run (seeded numpy + torch, generator states saved in the checkpoint).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from server.embedding.contract import EMBEDDING_DIM
from training.augment import COPY_DETECTION, COPY_DETECTION_SMALL_JPEG, AugmentConfig, augment, load_image
from training.encoder_model import EncoderModel, load_encoder

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
CHECKPOINT_NAME = "last.pt"


AUGMENTATIONS = {"simclr": AugmentConfig(), "copy": COPY_DETECTION, "copy-small-jpeg": COPY_DETECTION_SMALL_JPEG}


@dataclass
class FinetuneConfig:
    out: Path
    images: list[Path] | None = None  # None: the demo corpus (devkit.corpus.real_photos)
    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 1e-4
    temperature: float = 0.1
    trainable_blocks: int = 2  # trailing MBConv blocks that train (the 1x1 head conv + BN always train)
    seed: int = 0
    resume: bool = False
    checkpoint_every: int = 50
    click_pairs: Path | None = None  # JSONL {"query_image": path, "clicked_image": path}: extra positives
    threads: int = 2
    max_side: int = 384  # images are decoded once and kept in memory at this size
    progress: bool = True
    # Copy robustness (issue 16): "quality" trains on the `train` split of the labelled package sets
    # (evaluation/quality_sets.py: the evaluation never sees those images) plus the demo corpus photos.
    dataset: str = "photos"  # "photos" (images / demo corpus) | "quality" | "quality+corpus"
    augment: str = "simclr"  # "simclr" | "copy" | "copy-small-jpeg" (AUGMENTATIONS)
    hard_negatives: float = 0.0  # share of each batch drawn as pairs of distinct images of one category
    anchor_weight: float = 0.0  # weight of 1 - cos(view, pretrained embedding of the whole original)
    relational_weight: float = 0.0  # weight of relational_loss: keep the pretrained similarities between images


class ProjectionHead(nn.Module):
    """1280 -> 512 -> 128 MLP: the loss acts on its output, so the encoder keeps more general features."""

    def __init__(self, in_dim: int = EMBEDDING_DIM, hidden: int = 512, out_dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent / InfoNCE over 2B views: each view's positive is its pair, the other 2B-2 views are negatives."""
    batch = z1.shape[0]
    z = nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(2 * batch, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    targets = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(z.device)
    return nn.functional.cross_entropy(logits, targets)


def relational_loss(features: torch.Tensor, anchors: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
    """Mean squared change, against the pretrained model, of the cosine between views of DIFFERENT images.

    NT-Xent pushes every other image away, same-category ones included, which cost category retrieval; this term
    keeps the pretrained geometry between pictures (relational distillation) while the views of one picture are
    pulled together. `anchors`: the pretrained embedding of each view's whole original."""
    f = nn.functional.normalize(features, dim=1)
    different = image_ids[:, None] != image_ids[None, :]
    return (((f @ f.T) - (anchors @ anchors.T))[different] ** 2).mean()


def trainable_parameters(encoder: EncoderModel, trainable_blocks: int) -> list[nn.Parameter]:
    """Freeze the encoder except its last `trainable_blocks` MBConv blocks and the 1x1 head conv + BN."""
    backbone = encoder.backbone
    blocks = backbone._blocks
    if not 0 <= trainable_blocks <= len(blocks):
        raise ValueError(f"trainable_blocks must be in [0, {len(blocks)}], got {trainable_blocks}")
    encoder.requires_grad_(False)
    trainable = [*blocks[len(blocks) - trainable_blocks:], backbone._conv_head, backbone._bn1]
    for module in trainable:
        module.requires_grad_(True)
    return [p for p in encoder.parameters() if p.requires_grad]


def image_paths(directory: Path | None) -> list[Path]:
    """Images under a directory (sorted, so runs are reproducible), or the demo corpus."""
    if directory is None:
        from devkit.corpus import real_photos

        return [photo.path for photo in real_photos()]
    paths = sorted(p for p in Path(directory).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise FileNotFoundError(f"no images under {directory}")
    return paths


def quality_training_set(max_side: int, progress: bool, with_corpus: bool = False
                         ) -> tuple[list, list[str], list[str]]:
    """Decoded images, their categories and IDs: the `train` split of the labelled sets plus the demo corpus photos
    (each its own picture), and with `with_corpus` the many-kinds corpus of training/corpus.py (each its own
    picture too). Hard negatives are drawn within a category."""
    from PIL import Image

    from devkit.corpus import picture_key, real_photos
    from evaluation.quality_sets import labelled_images, of_split

    labelled = of_split(labelled_images(), {"train"})
    images, categories, ids = [], [], []
    for item in tqdm(labelled, desc="decode train split", disable=not progress):
        image = item.load()
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
        images.append(image)
        categories.append(item.category)
        ids.append(item.image_id)
    for photo in tqdm(real_photos(), desc="decode photos", disable=not progress):
        images.append(load_image(photo.path, max_side))
        categories.append(f"photo:{picture_key(photo.image_id)}")
        ids.append(photo.image_id)
    if with_corpus:
        from training.corpus import corpus

        for item in tqdm(corpus(), desc="decode many-kinds corpus", disable=not progress):
            images.append(load_image(item.path, max_side))
            categories.append(f"corpus:{item.path}")
            ids.append(f"corpus{item.path}")
    return images, categories, ids


def write_manifest(path: Path, images: list, categories: list[str], ids: list[str]) -> None:
    """What a model was trained on, exactly: each image's ID, category and the SHA-256 of its decoded pixels (the
    images come from Debian packages at set-up time; a changed package shows as a changed hash)."""
    rows = [{"id": i, "category": c, "pixels_sha256": hashlib.sha256(image.tobytes()).hexdigest()}
            for image, c, i in zip(images, categories, ids, strict=True)]
    path.write_text(json.dumps({"images": len(rows), "training_images": rows}, indent=1) + "\n")


def sample_batch(rng: np.random.Generator, size: int, batch_size: int, groups: list[np.ndarray],
                 hard_share: float) -> np.ndarray:
    """Distinct indices; `hard_share` of them as pairs from one category (negatives that look alike)."""
    pairs = min(int(batch_size * hard_share) // 2, len(groups))
    if pairs == 0:
        return rng.choice(size, size=batch_size, replace=False)
    chosen = [int(i) for g in rng.choice(len(groups), size=pairs, replace=False)
              for i in rng.choice(groups[g], size=2, replace=False)]
    taken = set(chosen)
    rest = [int(i) for i in rng.permutation(size) if int(i) not in taken][:batch_size - len(chosen)]
    return np.array(chosen + rest)


@torch.no_grad()
def whole_image_embeddings(encoder: EncoderModel, images: list, progress: bool) -> torch.Tensor:
    """The pretrained encoder's embedding of each whole image, as the gateway would index it."""
    from server.embedding.imaging import to_model_input

    out = []
    for start in tqdm(range(0, len(images), 64), desc="anchors", disable=not progress):
        pixels = np.stack([to_model_input(im.convert("RGB")) for im in images[start:start + 64]])
        out.append(encoder(torch.from_numpy(pixels)))
    return torch.cat(out)


def read_click_pairs(path: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            pairs.append((Path(row["query_image"]), Path(row["clicked_image"])))
    return pairs


def _save_atomically(state: dict, path: Path) -> None:
    """tmp file + os.replace: a crash mid-write never leaves a truncated last.pt behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".pt.tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; an exporter may run as another user
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _config_record(config: FinetuneConfig) -> dict:
    """The config as plain types, so the checkpoint still loads with torch.load(weights_only=True)."""
    record = asdict(config)
    record["out"] = str(config.out)
    record["images"] = None if config.images is None else [str(p) for p in config.images]
    record["click_pairs"] = None if config.click_pairs is None else str(config.click_pairs)
    return record


def train(config: FinetuneConfig) -> Path:
    """Run (or resume) fine-tuning; returns the path of the final checkpoint."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / CHECKPOINT_NAME

    # Positive pairs as indices into one list of decoded images: (i, i) for a photo, (q, c) for a click.
    categories: list[str] = []
    if config.dataset in ("quality", "quality+corpus"):
        images, categories, ids = quality_training_set(config.max_side, config.progress,
                                                       config.dataset == "quality+corpus")
        write_manifest(out / "manifest.json", images, categories, ids)
        pool = [(i, i) for i in range(len(images))]
    else:
        paths = list(config.images) if config.images is not None else image_paths(None)
        clicks = read_click_pairs(config.click_pairs) if config.click_pairs is not None else []
        unique = list(dict.fromkeys([*paths, *(p for pair in clicks for p in pair)]))
        index = {p: i for i, p in enumerate(unique)}
        pool = [(index[p], index[p]) for p in dict.fromkeys(paths)] + [(index[q], index[c]) for q, c in clicks]
        images = [load_image(p, config.max_side) for p in tqdm(unique, desc="decode", disable=not config.progress)]
    if len(pool) < config.batch_size:
        raise ValueError(f"{len(pool)} positive pairs, fewer than the batch size {config.batch_size}")
    members: dict[str, list[int]] = {}
    for i, category in enumerate(categories):
        members.setdefault(category, []).append(i)
    groups = [np.array(m) for _, m in sorted(members.items()) if len(m) >= 2]

    encoder = load_encoder().to(device)
    encoder.eval()  # BN running statistics and drop-connect stay frozen (see module docstring)
    anchors = whole_image_embeddings(encoder, images, config.progress) \
        if config.anchor_weight or config.relational_weight else None
    head = ProjectionHead().to(device)
    params = trainable_parameters(encoder, config.trainable_blocks) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    augment_config = AUGMENTATIONS[config.augment]

    step, losses = 0, []
    if config.resume:
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        if state["config"]["trainable_blocks"] != config.trainable_blocks:
            raise ValueError(f"{checkpoint_path} trained {state['config']['trainable_blocks']} blocks, "
                             f"not {config.trainable_blocks}")
        encoder.load_state_dict(state["encoder"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        step, losses = state["step"], list(state["losses"])
        rng.bit_generator.state = state["rng"]["numpy"]
        torch.set_rng_state(state["rng"]["torch"])

    def save() -> None:
        _save_atomically({
            "encoder": encoder.state_dict(), "head": head.state_dict(), "optimizer": optimizer.state_dict(),
            "step": step, "rng": {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()},
            "losses": losses, "config": _config_record(config),
        }, checkpoint_path)

    bar = tqdm(total=config.steps, initial=step, desc="finetune", disable=not config.progress)
    while step < config.steps:
        batch = sample_batch(rng, len(pool), config.batch_size, groups, config.hard_negatives)
        first = [augment(images[pool[i][0]], rng, augment_config) for i in batch]
        second = [augment(images[pool[i][1]], rng, augment_config) for i in batch]
        pixels = torch.from_numpy(np.stack(first + second)).to(device)
        features = encoder.features(pixels)
        projections = head(features)
        loss = nt_xent_loss(projections[:config.batch_size], projections[config.batch_size:], config.temperature)
        if anchors is not None:  # views stay where the served index puts their whole original
            originals = torch.as_tensor([pool[i][0] for i in batch] * 2)
            targets = anchors[originals].to(device)
            cosine = (nn.functional.normalize(features, dim=1) * targets).sum(dim=1)
            loss = loss + config.anchor_weight * (1 - cosine).mean()
            if config.relational_weight:
                loss = loss + config.relational_weight * relational_loss(features, targets, originals.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        losses.append(float(loss.item()))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", avg10=f"{np.mean(losses[-10:]):.3f}")
        if step % config.checkpoint_every == 0 or step == config.steps:
            save()
    bar.close()
    if not checkpoint_path.exists():  # steps already reached on resume, or steps == 0
        save()
    return checkpoint_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=None, help="image directory (default: the demo corpus)")
    parser.add_argument("--steps", type=int, default=FinetuneConfig.steps, help="total optimisation steps")
    parser.add_argument("--batch-size", type=int, default=FinetuneConfig.batch_size, help="images per step")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory (writes last.pt)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--seed", type=int, default=FinetuneConfig.seed)
    parser.add_argument("--lr", type=float, default=FinetuneConfig.lr)
    parser.add_argument("--temperature", type=float, default=FinetuneConfig.temperature)
    parser.add_argument("--trainable-blocks", type=int, default=FinetuneConfig.trainable_blocks)
    parser.add_argument("--checkpoint-every", type=int, default=FinetuneConfig.checkpoint_every)
    parser.add_argument("--click-pairs", type=Path, default=None, help="JSONL of query/clicked image paths")
    parser.add_argument("--dataset", choices=("photos", "quality", "quality+corpus"), default=FinetuneConfig.dataset)
    parser.add_argument("--augment", choices=list(AUGMENTATIONS), default=FinetuneConfig.augment)
    parser.add_argument("--hard-negatives", type=float, default=FinetuneConfig.hard_negatives)
    parser.add_argument("--anchor-weight", type=float, default=FinetuneConfig.anchor_weight)
    parser.add_argument("--relational-weight", type=float, default=FinetuneConfig.relational_weight)
    args = parser.parse_args(argv)
    config = FinetuneConfig(
        out=args.out, images=None if args.images is None else image_paths(args.images), steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, temperature=args.temperature,
        trainable_blocks=args.trainable_blocks, seed=args.seed, resume=args.resume,
        checkpoint_every=args.checkpoint_every, click_pairs=args.click_pairs, dataset=args.dataset,
        augment=args.augment, hard_negatives=args.hard_negatives, anchor_weight=args.anchor_weight,
        relational_weight=args.relational_weight,
    )
    started = time.monotonic()
    path = train(config)
    losses = torch.load(path, map_location="cpu", weights_only=True)["losses"]
    head, tail = losses[:10], losses[-10:]
    print(f"wrote {path}: {len(losses)} steps in {time.monotonic() - started:.0f} s; "
          f"loss {np.mean(head):.3f} (first {len(head)} steps) -> {np.mean(tail):.3f} (last {len(tail)})")


if __name__ == "__main__":
    main()
