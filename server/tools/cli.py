"""vsearch: run the services, index images, search, manage visibility. Errors print one line and exit non-zero.

    vsearch serve                         Triton (embedded) + gateway until Ctrl-C
    vsearch index PATH...                 bulk-index images through the gateway (resumable, idempotent)
    vsearch search IMAGE [--crop x0,y0,x1,y1] [-k N] [--gallery out.png]
    vsearch similar IMAGE_ID              "more like this"
    vsearch delete|hide|show IMAGE_ID...
    vsearch stats
    vsearch demo [--keep-running]         start everything, index the real photo corpus, run example queries
"""

from __future__ import annotations

import argparse
import asyncio
import io
import signal
import sys
import time
from contextlib import suppress
from pathlib import Path

import grpc
from PIL import Image
from tqdm import tqdm

from clients.client import NewImage, VisualSearchClient
from protos.visual_search.v1 import visual_search_pb2 as pb
from server.core.config import Settings, add_arguments, from_args
from server.tools import gallery
from server.tools.corpus import IMAGE_SUFFIXES, real_photos
from server.tools.launcher import running_services


class CliError(Exception):
    """A failure worth one line on stderr."""


def _crop(text: str | None) -> tuple[float, float, float, float] | None:
    if not text:
        return None
    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError:
        raise CliError(f"--crop wants four numbers x0,y0,x1,y1 in [0,1], got {text!r}") from None
    return x0, y0, x1, y1


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None


def _print_hits(response: object) -> None:
    for n, hit in enumerate(response.results, 1):
        print(f"{n:3d}. {hit.score:.4f}  {hit.image_id}")
    print(f"({len(response.results)} results; model {response.model_version}, index v{response.index_version}, "
          f"request {response.request_id})")


# -- service management ------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    from server.api.app import run_gateway
    from server.models.triton import TritonServer

    if settings.triton_url:
        asyncio.run(run_gateway(settings))
        return
    with TritonServer(settings, log_path=settings.data_dir / "triton.log") as triton:
        settings.triton_url = triton.endpoint.grpc_url
        print(f"Triton ready at {settings.triton_url}; gateway on {settings.grpc_address}", flush=True)
        asyncio.run(run_gateway(settings))


def cmd_triton(args: argparse.Namespace, settings: Settings) -> None:
    from server.models.triton import run

    run(settings)


# -- indexing ----------------------------------------------------------------------------------------------
def _collect(paths: list[Path]) -> list[tuple[str, Path]]:
    """(image ID, file): IDs are paths relative to the argument directory, without the suffix."""
    items = []
    for root in paths:
        if root.is_file():
            items.append((root.stem, root))
        elif root.is_dir():
            items += [(str(p.relative_to(root).with_suffix("")), p) for p in sorted(root.rglob("*"))
                      if p.suffix.lower() in IMAGE_SUFFIXES | {".gif"} and p.is_file()]
        else:
            raise CliError(f"no such file or directory: {root}")
    return items


def index_files(client: VisualSearchClient, items: list[tuple[str, Path]], state_file: Path,
                private: bool = False, batch: int = 32) -> dict[str, int]:
    """Resumable: IDs acknowledged earlier (in the state file) are skipped; re-sending is harmless anyway."""
    done = set(state_file.read_text().split("\n")) if state_file.exists() else set()
    todo = [(i, p) for i, p in items if i not in done]
    totals = {"added": 0, "already_exists": 0, "rejected": 0, "skipped": len(items) - len(todo)}
    state_file.parent.mkdir(parents=True, exist_ok=True)
    with state_file.open("a") as state, tqdm(total=len(todo), unit="img", desc="indexing") as bar:
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            response = client.add_images(NewImage(i, _read(p), private=private) for i, p in chunk)
            for result in response.results:
                if result.status == result.REJECTED:
                    totals["rejected"] += 1
                    tqdm.write(f"rejected {result.image_id}: {result.error_code} {result.error_message}")
                    continue
                totals["added" if result.status == result.ADDED else "already_exists"] += 1
                state.write(result.image_id + "\n")
            state.flush()
            bar.update(len(chunk))
    return totals


def cmd_index(args: argparse.Namespace, settings: Settings) -> None:
    with VisualSearchClient(settings.grpc_address) as client:
        totals = index_files(client, _collect(args.paths), settings.data_dir / "cli-indexed-ids.txt", args.private)
    print(", ".join(f"{k}: {v}" for k, v in totals.items()))
    if totals["rejected"]:
        raise CliError(f"{totals['rejected']} images were rejected (reasons above)")


# -- queries -----------------------------------------------------------------------------------------------
def _gallery(path: Path, query_bytes: bytes, crop: tuple | None, title: str, response: object,
             files: dict[str, Path]) -> None:
    def load(image_id: str) -> Image.Image | None:
        return Image.open(files[image_id]) if image_id in files else None

    gallery.render(Image.open(io.BytesIO(query_bytes)), crop, title,
                   [(h.image_id, h.score) for h in response.results], load, path)
    print(f"gallery: {path}")


def _known_files() -> dict[str, Path]:
    return {p.image_id: p.path for p in real_photos()}


def cmd_search(args: argparse.Namespace, settings: Settings) -> None:
    data, crop = _read(args.image), _crop(args.crop)
    with VisualSearchClient(settings.grpc_address) as client:
        response = client.search(data, crop=crop, k=args.k)
    _print_hits(response)
    if args.gallery:
        _gallery(args.gallery, data, crop, f"query: {args.image.name}", response, _known_files())


def cmd_similar(args: argparse.Namespace, settings: Settings) -> None:
    with VisualSearchClient(settings.grpc_address) as client:
        _print_hits(client.similar(args.image_id, k=args.k))


def cmd_delete(args: argparse.Namespace, settings: Settings) -> None:
    with VisualSearchClient(settings.grpc_address) as client:
        r = client.delete(args.image_ids)
    print(f"deleted {r.deleted_count}" + (f"; not found: {', '.join(r.not_found_ids)}" if r.not_found_ids else ""))


def cmd_visibility(args: argparse.Namespace, settings: Settings) -> None:
    with VisualSearchClient(settings.grpc_address) as client:
        r = client.set_visibility(args.image_ids, private=args.command == "hide")
    print(f"updated {r.updated_count}" + (f"; not found: {', '.join(r.not_found_ids)}" if r.not_found_ids else ""))


def cmd_stats(args: argparse.Namespace, settings: Settings) -> None:
    with VisualSearchClient(settings.grpc_address) as client:
        s = client.stats()
    print(f"images: {s.image_count} ({s.public_count} public, {s.private_count} private), {s.deleted_count} deleted")
    params = ", ".join(f"{k}={v}" for k, v in sorted(s.index_params.items()))
    print(f"index: {s.index_type} ({params}), version {s.index_version}, dim {s.embedding_dim}")
    print(f"model: {s.model_version}")
    if s.switching_to_model_version:
        print(f"switching to {s.switching_to_model_version}: {s.switch_reembedded_count}/{s.switch_total_count} "
              "images re-embedded")
    if s.switch_error:
        print(f"last switch failed: {s.switch_error}")


# -- model versions ----------------------------------------------------------------------------------------
def cmd_publish(args: argparse.Namespace, settings: Settings) -> None:
    from server.models.versions import publish, reload

    version = publish(args.checkpoint, settings.model_repository, settings.model_name)
    print(f"published {settings.model_name} version {version} in {settings.model_repository}")
    triton = settings.triton_url or f"127.0.0.1:{settings.triton_grpc_port}"
    try:
        print(f"Triton at {triton} now serves versions {', '.join(reload(triton, settings.model_name))}")
    except Exception as exc:  # Triton not running: it loads every version when it starts
        print(f"Triton at {triton} not reloaded ({exc}); it loads the version when it starts")


def cmd_switch_model(args: argparse.Namespace, settings: Settings) -> None:
    with VisualSearchClient(settings.grpc_address) as client:
        response = client.switch_model(args.version)
        print(f"{pb.SwitchModelResponse.State.Name(response.state)} (serving {response.active_model_version})")
        target = f"{settings.model_name}/{args.version}"
        if not args.wait or response.state == pb.SwitchModelResponse.ALREADY_ACTIVE:
            return
        with tqdm(unit="img", desc=f"re-embedding for {target}") as bar:
            while True:
                s = client.stats()
                if s.model_version == target:
                    break
                if s.switch_error and not s.switching_to_model_version:
                    raise CliError(f"the switch failed: {s.switch_error}")
                bar.total, bar.n = s.switch_total_count, s.switch_reembedded_count
                bar.refresh()
                time.sleep(0.5)
    print(f"cut over: serving {target}")


# -- demo --------------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace, settings: Settings) -> None:
    photos = real_photos()
    if not photos:
        raise CliError("no corpus images found: run `make setup` (it installs the Debian wallpaper packages)")
    files = {p.image_id: p.path for p in photos}
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    with running_services(settings, settings.data_dir / "logs") as services, \
            VisualSearchClient(settings.grpc_address) as client:
        s = services.settings
        print(f"indexing {len(photos)} real images from Debian packages and scikit-image ...")
        t0 = time.perf_counter()
        totals = index_files(client, [(p.image_id, p.path) for p in photos], s.data_dir / "demo-indexed-ids.txt")
        print(f"indexed in {time.perf_counter() - t0:.1f}s: {totals}")

        # 1. A whole image: a smaller, re-compressed copy of a corpus photo (what an upload looks like).
        original = files.get("skimage/chelsea") or photos[0].path
        buffer = io.BytesIO()
        image = Image.open(original).convert("RGB")
        image.resize((image.width // 2, image.height // 2)).save(buffer, "JPEG", quality=60)
        queries = [("1-whole-image", buffer.getvalue(), None, f"whole image: {original.name} (half size, JPEG q60)")]
        # 2. A crop of one object: the astronaut's face out of the astronaut photo.
        astronaut = files.get("skimage/astronaut") or photos[1].path
        crop = (0.30, 0.0, 0.75, 0.45)
        queries.append(("2-crop", astronaut.read_bytes(), crop, f"crop {crop} of {astronaut.name}"))
        for name, data, box, title in queries:
            print(f"\n== {title}")
            response = client.search(data, crop=box, k=args.k)
            _print_hits(response)
            _gallery(out / f"{name}.png", data, box, title, response, files)
        # 3. More like this, by ID.
        similar_id = "skimage/coffee" if "skimage/coffee" in files else photos[2].image_id
        print(f"\n== more like this: {similar_id}")
        response = client.similar(similar_id, k=args.k)
        _print_hits(response)
        _gallery(out / "3-more-like-this.png", files[similar_id].read_bytes(), None,
                 f"more like this: {similar_id}", response, files)
        print()
        cmd_stats(args, s)
        if args.keep_running:
            print(f"\nservices keep running: gateway {s.grpc_address}, Triton {s.triton_url}. Ctrl-C stops them.")
            with suppress(KeyboardInterrupt):
                signal.pause()
    print("demo done; services stopped.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsearch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateway", default=None, help="gateway host:port (default: --grpc-host:--grpc-port)")
    add_arguments(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run Triton + the gateway until Ctrl-C")
    sub.add_parser("triton", help="run only the embedded Triton")
    p = sub.add_parser("index", help="index image files / folders through the gateway")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--private", action="store_true")
    p = sub.add_parser("search", help="search with an image file")
    p.add_argument("image", type=Path)
    p.add_argument("--crop", default=None, help="x0,y0,x1,y1 in [0,1]")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--gallery", type=Path, default=None, help="write a gallery PNG here")
    p = sub.add_parser("similar", help="more like an indexed image")
    p.add_argument("image_id")
    p.add_argument("-k", type=int, default=10)
    for name, help_text in (("delete", "delete images"), ("hide", "make images private"), ("show", "make public")):
        sub.add_parser(name, help=help_text).add_argument("image_ids", nargs="+")
    sub.add_parser("stats", help="counts, index type, model version")
    p = sub.add_parser("publish", help="export a fine-tuned checkpoint as the next encoder version, reload Triton")
    p.add_argument("checkpoint", type=Path)
    p = sub.add_parser("switch-model", help="re-embed everything with another encoder version, then cut over")
    p.add_argument("version")
    p.add_argument("--wait", action="store_true", help="show progress until the cut-over")
    p = sub.add_parser("demo", help="index the real corpus and run example queries")
    p.add_argument("--output", type=Path, default=Path("demo-out"))
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--keep-running", action="store_true")
    return parser


COMMANDS = {"serve": cmd_serve, "triton": cmd_triton, "index": cmd_index, "search": cmd_search,
            "similar": cmd_similar, "delete": cmd_delete, "hide": cmd_visibility, "show": cmd_visibility,
            "stats": cmd_stats, "publish": cmd_publish, "switch-model": cmd_switch_model, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = from_args(args)
    if args.gateway:
        host, _, port = args.gateway.rpartition(":")
        settings = settings.with_overrides(grpc_host=host or None, grpc_port=int(port))
    try:
        COMMANDS[args.command](args, settings)
    except CliError as exc:
        sys.exit(f"vsearch: {exc}")
    except grpc.RpcError as exc:
        sys.exit(f"vsearch: {exc.code().name}: {exc.details()}")
    except (RuntimeError, TimeoutError, OSError) as exc:
        sys.exit(f"vsearch: {exc}".splitlines()[0])
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
