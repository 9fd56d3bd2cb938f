"""The encoder's contract, in one place: what every producer and consumer of embeddings agrees on.

Triton's `model_repository/encoder/config.pbtxt` states the same facts for the server side; a test checks the
two agree (tests/unit/test_onnx_export.py). The training code and the TensorRT plan builder import from here.
"""

from __future__ import annotations

MODEL_NAME = "encoder"
INPUT_NAME = "pixels"  # uint8 [N, 224, 224, 3], RGB, NHWC; scaling happens inside the graph
OUTPUT_NAME = "embedding"  # float32 [N, 1280], L2-normalised: cosine = inner product
INPUT_SIZE = 224
EMBEDDING_DIM = 1280
MAX_BATCH_SIZE = 64  # Triton's max_batch_size: bigger batches are split by the client
EMBED_CHUNK = 32  # images prepared and embedded together when indexing (one Triton call each)

# Preprocessing inside Triton (model_repository/image_encoder): raw image bytes + a normalized crop box in,
# the encoder's embedding out. The encoder version is a request parameter, so a model switch can embed with
# the candidate version while queries use the served one.
IMAGE_MODEL_NAME = "image_encoder"
IMAGE_INPUT_NAME = "image_bytes"  # BYTES [N, 1]: the encoded image as uploaded
CROP_INPUT_NAME = "crop"  # FP32 [N, 4]: x_min, y_min, x_max, y_max in [0, 1]; (0, 0, 1, 1) is the whole image
REGIONS_OUTPUT_NAME = "regions"  # FP32 [N, R, 1280]: the region views' embeddings (requested when indexing)
SIGNATURE_OUTPUT_NAME = "signature"  # the image model's pixel signature of the first view (embedding/signature.py)
# Why a version cannot give pooled regions when asked (its graph has no `regions` output: its regions are encoded
# views); the in-process and the Triton encoder clients say the same.
NO_POOLED_REGIONS = "has no pooled regions output"
VERSION_PARAMETER = "encoder_version"
WHOLE_IMAGE = (0.0, 0.0, 1.0, 1.0)

# Triton's restricted protocols (server/triton/endpoint.py) need this header with the launcher's key; over gRPC the
# header carries Triton's prefix.
TRITON_KEY_HEADER = "vsearch-triton-admin-key"
TRITON_GRPC_KEY_HEADER = f"triton-grpc-protocol-{TRITON_KEY_HEADER}"
