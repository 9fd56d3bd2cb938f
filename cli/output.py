"""What every `vsearch` command shares: one-line errors, reading files, printing results."""

from __future__ import annotations

from pathlib import Path

from protos.visual_search.v1 import visual_search_pb2 as pb


class CliError(Exception):
    """A failure worth one line on stderr."""


def parse_crop(text: str | None) -> tuple[float, float, float, float] | None:
    if not text:
        return None
    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError:
        raise CliError(f"--crop wants four numbers x0,y0,x1,y1 in [0,1], got {text!r}") from None
    return x0, y0, x1, y1


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None


def print_hits(response: object) -> None:
    for n, hit in enumerate(response.results, 1):
        print(f"{n:3d}. {hit.score:.4f}  {hit.image_id}")
    print(f"({len(response.results)} results; model {response.model_version}, index v{response.index_version}, "
          f"request {response.request_id})")


def print_stats(s: pb.GetStatsResponse) -> None:
    print(f"images: {s.image_count} ({s.public_count} public, {s.private_count} private), {s.deleted_count} deleted")
    params = ", ".join(f"{k}={v}" for k, v in sorted(s.index_params.items()))
    print(f"index: {s.index_type} ({params}), version {s.index_version}, dim {s.embedding_dim}")
    print(f"model: {s.model_version}")
    if s.switching_to_model_version:
        print(f"switching to {s.switching_to_model_version}: {s.switch_reembedded_count}/{s.switch_total_count} "
              "images re-embedded")
    if s.switch_error:
        print(f"last switch failed: {s.switch_error}")
