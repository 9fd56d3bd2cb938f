"""A learned region head: an image's region embeddings from its one whole-image pass (issue 26, part 2).

    python -m training.region_head --from-version 2 --output var/region-head [--rounds 4] [--seed 0]

Average-pooling each REGION_BOXES box from the last feature map of the whole image's pass costs nothing but lost
most of what encoding the box as its own picture gives (centre crop box P@1 0.65 against 0.99;
benchmarks/results/region_variants.md): every cell of a 7x7 map has seen the whole picture, and the box is seen at
a quarter of the scale a query crop of it is. This head learns the rest by distillation: for each box, from the
map it predicts the embedding the encoder gives the box's own crop (the teacher, which is exactly what a crop
query embeds as), trained with a contrastive loss over a batch's boxes (the other boxes of the same image are the
hardest negatives), so a region row keeps what tells it apart rather than a regression's average.

Head: per box a learned softmax pooling over the map's cells (initialised at the box's area weights) -> a residual
MLP of the pooled features and the whole map's mean -> L2-normalised. The encoder itself is frozen: the whole-image
embedding, and so every query, is unchanged. `training.export_onnx --region-head` writes it into a version's graph
as its `regions` output (server.embedding.contract.REGIONS_OUTPUT_NAME).

Data: the `train` split of the labelled package sets plus the demo corpus photos (never the held-out gallery or
the held-out domains), each in `--rounds` random views (random resized crop, flip), prepared as indexing prepares
an image (server.embedding.imaging.prepare_views).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from evaluation.edits import encode
from server.core.regions import REGION_BOXES, region_pooling_weights
from server.embedding.contract import INPUT_NAME
from server.embedding.imaging import Limits, prepare_views, region_views

HEAD_FILE = "region_head.pt"


class RegionHead(nn.Module):
    """(last feature map [N, C, H*W], the finer map before the last stride [N, Cf, 4*H*W]) -> [N, R, C] unit region
    embeddings."""

    def __init__(self, channels: int, cells: int, fine_channels: int, hidden: int = 1024) -> None:
        super().__init__()
        self.pool_logits = nn.Parameter(torch.log(torch.from_numpy(region_pooling_weights(cells)) + 1e-3))  # [HW, R]
        self.fine_pool_logits = nn.Parameter(torch.log(torch.from_numpy(region_pooling_weights(2 * cells)) + 1e-3))
        self.local = nn.Linear(channels, hidden)
        self.fine = nn.Linear(fine_channels, hidden, bias=False)
        self.context = nn.Linear(channels, hidden, bias=False)
        self.box_bias = nn.Parameter(torch.zeros(len(REGION_BOXES), hidden))
        self.out = nn.Linear(hidden, channels)
        nn.init.zeros_(self.out.weight)  # starts as plain area pooling (up to the softmax's floor)
        nn.init.zeros_(self.out.bias)

    def pooling_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.softmax(self.pool_logits, dim=0), torch.softmax(self.fine_pool_logits, dim=0)

    def forward(self, maps: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        weights, fine_weights = self.pooling_weights()
        pooled = (maps @ weights).transpose(1, 2)  # [N, R, C]
        fine_pooled = (fine @ fine_weights).transpose(1, 2)  # [N, R, Cf]
        context = self.context(maps.mean(dim=2)).unsqueeze(1)  # [N, 1, hidden]
        hidden = torch.relu(self.local(pooled) + self.fine(fine_pooled) + context + self.box_bias)
        return nn.functional.normalize(pooled + self.out(hidden), dim=2)


def load_head(checkpoint: Path) -> RegionHead:
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    head = RegionHead(saved["channels"], saved["cells"], saved["fine_channels"], saved["hidden"])
    head.load_state_dict(saved["state"])
    return head.eval()


def random_view(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random resized crop (55-100% of the area, aspect within 3:4..4:3 of the original's), flipped half the
    time: new box contents for the same picture each round."""
    w, h = image.size
    area = rng.uniform(0.55, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = min(w, round(w * np.sqrt(area * aspect))), min(h, round(h * np.sqrt(area / aspect)))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    view = image.crop((x, y, x + cw, y + ch))
    return view.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else view


def head_inputs(model: onnx.ModelProto) -> tuple[str, str]:
    """(the last feature map, the finer map the head also reads): the tensor the embedding averages, and the last
    residual sum at twice its side (the input of the last stride-2 block: 14x14 against 7x7 at 224 px), found
    by running the graph once (names differ between exports)."""
    import onnxruntime as ort

    from server.embedding.onnx_encoder import feature_map_name, with_output

    feature_map = feature_map_name(model)
    sums = [n.output[0] for n in model.graph.node if n.op_type == "Add"]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in [feature_map, *sums]:
        probe = with_output(probe, name)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    found = session.run([feature_map, *sums], {INPUT_NAME: np.zeros((1, 224, 224, 3), np.uint8)})
    side = found[0].shape[2]
    fine = [name for name, value in zip(sums, found[1:], strict=True)
            if value.ndim == 4 and value.shape[2:] == (2 * side, 2 * side)]
    if not fine:
        raise ValueError(f"no residual sum at {2 * side}x{2 * side} before the {side}x{side} feature map")
    return feature_map, fine[-1]


def distillation_set(version: str, rounds: int, seed: int, with_corpus: bool = True, batch: int = 32
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float16 feature maps [N, C, HW] and finer maps [N, Cf, 4HW] of each view's whole-image pass (`head_inputs`),
    and the teachers float32 [N, R, C]: each box of the view cropped and encoded as indexing encodes a region
    today."""
    import onnxruntime as ort

    from server.core.config import MODEL_REPOSITORY
    from server.embedding.contract import OUTPUT_NAME
    from server.embedding.onnx_encoder import model_path, with_output
    from training.finetune import quality_training_set

    # unlabelled images are all distillation needs: the train split, the demo photos and the many-kinds corpus
    images = quality_training_set(max_side=512, progress=True, with_corpus=with_corpus)[0]
    model = onnx.load(str(model_path(version, MODEL_REPOSITORY)))
    names = head_inputs(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(with_output(with_output(model, names[0]), names[1]).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    maps, fine, teachers = [], [], []
    # made a batch at a time (all of them at once held ~6 GB of pictures), in the same order, so the same views
    views = ((image if r == 0 else random_view(image, rng)) for r in range(rounds) for image in images)
    limits = Limits(max_pixels=10**8)
    for _ in tqdm(range(0, rounds * len(images), batch), desc="distillation set", unit="batch"):
        prepared = np.stack([prepare_views(encode(v), region_views(None), limits)
                             for v in itertools.islice(views, batch)])
        n, r = prepared.shape[:2]
        coarse, finer = session.run(list(names), {INPUT_NAME: prepared[:, 0]})
        maps.append(coarse.reshape(n, coarse.shape[1], -1).astype(np.float16))
        fine.append(finer.reshape(n, finer.shape[1], -1).astype(np.float16))
        crops = session.run([OUTPUT_NAME], {INPUT_NAME: prepared[:, 1:].reshape(n * (r - 1), *prepared.shape[2:])})
        teachers.append(crops[0].reshape(n, r - 1, -1))
    return np.concatenate(maps), np.concatenate(fine), np.concatenate(teachers)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float, cosine_weight: float
                      ) -> torch.Tensor:
    """InfoNCE of each predicted region row against every teacher row of the batch (and back), plus the mean
    cosine distance to its own teacher: a region row's cosine competes with other images' whole-image cosines in
    the stores' ranking (server.core.regions.best_match), so its scale must match a crop query's, not only its
    ranking."""
    s, t = student.reshape(-1, student.shape[-1]), teacher.reshape(-1, teacher.shape[-1])
    logits = s @ t.T / temperature
    target = torch.arange(len(s))
    nce = (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)) / 2
    return nce + cosine_weight * (1 - (s * t).sum(-1)).mean()


def crop_query_p1(regions: torch.Tensor, teacher: torch.Tensor) -> float:
    """Share of crop queries (teacher rows) whose nearest region row is their own box: the retrieval a region row
    serves, on views the head never saw."""
    r, t = regions.reshape(-1, regions.shape[-1]), teacher.reshape(-1, teacher.shape[-1])
    return float(((t @ r.T).argmax(dim=1) == torch.arange(len(t))).float().mean())


def train_head(maps: np.ndarray, fine: np.ndarray, teachers: np.ndarray, epochs: int, batch_size: int, lr: float,
               temperature: float, cosine_weight: float, hidden: int, seed: int, held_out: float = 0.1
               ) -> tuple[RegionHead, dict]:
    """Fit the head; report its cosine to the teacher and `crop_query_p1` on a held-out tenth of the views, and
    the same for plain area pooling."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(maps))
    cut = int(len(maps) * held_out)
    val, fit = order[:cut], order[cut:]
    cells = math.isqrt(maps.shape[2])
    head = RegionHead(maps.shape[1], cells, fine.shape[1], hidden)

    def batch(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(maps[rows].astype(np.float32)), torch.from_numpy(fine[rows].astype(np.float32))

    optimiser = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(fit) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, lr, total_steps=steps, pct_start=0.1)
    bar = tqdm(total=steps, desc="region head", unit="step")
    for _ in range(epochs):
        for start in range(0, len(fit) - batch_size + 1, batch_size):
            picked = fit[start:start + batch_size]
            loss = distillation_loss(head(*batch(picked)), torch.from_numpy(teachers[picked]), temperature,
                                     cosine_weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        fit = fit[rng.permutation(len(fit))]
    bar.close()
    head.eval()
    with torch.no_grad():
        val_maps, val_fine = batch(val)
        target = torch.from_numpy(teachers[val])
        learned = head(val_maps, val_fine)
        area = torch.from_numpy(region_pooling_weights(cells))
        pooled = nn.functional.normalize((val_maps @ area).transpose(1, 2), dim=2)
    return head, {"held_out_views": int(cut),
                  "cosine_to_teacher": round((learned * target).sum(-1).mean().item(), 4),
                  "cosine_to_teacher_area_pooling": round((pooled * target).sum(-1).mean().item(), 4),
                  "crop_query_p1": round(crop_query_p1(learned, target), 4),
                  "crop_query_p1_area_pooling": round(crop_query_p1(pooled, target), 4)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-version", default="2", help="the encoder version whose feature map the head reads")
    parser.add_argument("--output", type=Path, default=Path("var/region-head"))
    parser.add_argument("--rounds", type=int, default=4, help="views of each training image (the first: itself)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--cosine-weight", type=float, default=20.0)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-corpus", action="store_true", help="without training/corpus.py's many-kinds images")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    started = time.monotonic()
    args.output.mkdir(parents=True, exist_ok=True)
    corpus_tag = "" if args.no_corpus else "-corpus"
    cache = args.output / f"distillation-v{args.from_version}-r{args.rounds}-s{args.seed}{corpus_tag}.npz"
    if cache.exists():  # the encoder passes are most of the time; a re-run with other training settings skips them
        data = np.load(cache)
        maps, fine, teachers = data["maps"], data["fine"], data["teachers"]
    else:
        maps, fine, teachers = distillation_set(args.from_version, args.rounds, args.seed, not args.no_corpus)
        np.savez(cache, maps=maps, fine=fine, teachers=teachers)
    head, report = train_head(maps, fine, teachers, args.epochs, args.batch_size, args.lr, args.temperature,
                              args.cosine_weight, args.hidden, args.seed)
    torch.save({"state": head.state_dict(), "channels": maps.shape[1], "cells": math.isqrt(maps.shape[2]),
                "fine_channels": fine.shape[1], "hidden": args.hidden}, args.output / HEAD_FILE)
    report.update(views=len(maps), seconds=round(time.monotonic() - started, 1), **{
        k: v for k, v in vars(args).items() if k != "output"})
    (args.output / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    main()
