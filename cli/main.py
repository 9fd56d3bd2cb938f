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
import os
import sys
import time
from pathlib import Path

import grpc
from tqdm import tqdm

from cli.demo import known_files, run_demo, write_gallery
from cli.indexing import collect, index_files
from cli.output import CliError, parse_crop, print_hits, print_stats, read_file
from clients.client import VisualSearchClient
from protos.visual_search.v1 import visual_search_pb2 as pb
from server.core.config import Settings, add_arguments, from_args


def connect(settings: Settings) -> VisualSearchClient:
    """A client of the configured gateway: TLS and a bearer token from VSEARCH_TLS_CA / VSEARCH_TOKEN if set."""
    ca, token = os.environ.get("VSEARCH_TLS_CA"), os.environ.get("VSEARCH_TOKEN")
    return VisualSearchClient(settings.grpc_address, token=token, root_certificates=Path(ca).read_bytes() if ca
                              else None)


# -- service management ------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    from server.api.app import run_gateway
    from server.triton.endpoint import save_admin_key
    from server.triton.supervisor import TritonServer

    if settings.triton_url:
        asyncio.run(run_gateway(settings))
        return
    with TritonServer(settings, log_path=settings.data_dir / "triton.log") as triton:
        settings = triton.settings.with_overrides(triton_url=triton.endpoint.grpc_url)
        save_admin_key(settings.data_dir, settings.triton_admin_key or "")
        print(f"Triton ready at {settings.triton_url}; gateway on {settings.grpc_address}", flush=True)
        asyncio.run(run_gateway(settings))


def cmd_embed(args: argparse.Namespace, settings: Settings) -> None:
    """The Ray Data batch embedding job (jobs/embed), as its own process: serving code does not import it."""
    import subprocess

    done = subprocess.run([sys.executable, "-m", "jobs.embed", *args.job_args])
    if done.returncode:
        raise CliError(f"the embedding job failed (exit {done.returncode}); its output above says why")


def cmd_console(args: argparse.Namespace, settings: Settings) -> None:
    from console.__main__ import main as console_main

    console_main(args.console_args)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> None:
    from cli.migrate import migrate_catalog

    if not settings.milvus_uri:
        raise CliError("--milvus-uri is required (e.g. http://127.0.0.1:19530)")
    done = migrate_catalog(settings, settings.milvus_uri)
    print(f"copied {done['records']} records of {done['model_version']} into Milvus; counts match: {done['counts']}")


def cmd_triton(args: argparse.Namespace, settings: Settings) -> None:
    from server.triton.supervisor import run

    run(settings)


# -- indexing ----------------------------------------------------------------------------------------------
def cmd_index(args: argparse.Namespace, settings: Settings) -> None:
    with connect(settings) as client:
        totals = index_files(client, collect(args.paths), settings.data_dir / "cli-indexed-ids.txt", args.private)
    print(", ".join(f"{k}: {v}" for k, v in totals.items()))
    if totals["rejected"]:
        raise CliError(f"{totals['rejected']} images were rejected (reasons above)")


# -- queries -----------------------------------------------------------------------------------------------
def cmd_search(args: argparse.Namespace, settings: Settings) -> None:
    data, crop = read_file(args.image), parse_crop(args.crop)
    with connect(settings) as client:
        response = client.search(data, crop=crop, k=args.k)
    print_hits(response)
    if args.gallery:
        write_gallery(args.gallery, data, crop, f"query: {args.image.name}", response, known_files())


def cmd_similar(args: argparse.Namespace, settings: Settings) -> None:
    with connect(settings) as client:
        print_hits(client.similar(args.image_id, k=args.k))


def cmd_delete(args: argparse.Namespace, settings: Settings) -> None:
    with connect(settings) as client:
        r = client.delete(args.image_ids)
    print(f"deleted {r.deleted_count}" + (f"; not found: {', '.join(r.not_found_ids)}" if r.not_found_ids else ""))


def cmd_visibility(args: argparse.Namespace, settings: Settings) -> None:
    with connect(settings) as client:
        r = client.set_visibility(args.image_ids, private=args.command == "hide")
    print(f"updated {r.updated_count}" + (f"; not found: {', '.join(r.not_found_ids)}" if r.not_found_ids else ""))


def cmd_stats(args: argparse.Namespace, settings: Settings) -> None:
    with connect(settings) as client:
        print_stats(client.stats())


# -- model versions ----------------------------------------------------------------------------------------
def cmd_publish(args: argparse.Namespace, settings: Settings) -> None:
    from server.model_versions.registry import publish, reload
    from server.triton.endpoint import load_admin_key

    version = publish(args.checkpoint, settings.model_repository, settings.model_name)
    print(f"published {settings.model_name} version {version} in {settings.model_repository}")
    triton = settings.triton_url or f"127.0.0.1:{settings.triton_grpc_port}"
    try:
        key = settings.triton_admin_key or load_admin_key(settings.data_dir)
        print(f"Triton at {triton} now serves versions {', '.join(reload(triton, settings.model_name, key))}")
    except Exception as exc:  # Triton not running: it loads every version when it starts
        print(f"Triton at {triton} not reloaded ({exc}); it loads the version when it starts")


def cmd_switch_model(args: argparse.Namespace, settings: Settings) -> None:
    with connect(settings) as client:
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
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsearch", description=__doc__, allow_abbrev=False,
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
    p = sub.add_parser("embed", help="batch-embed a manifest with Ray Data (python -m jobs.embed --help)",
                       prefix_chars="\0")
    p.add_argument("job_args", nargs=argparse.REMAINDER)
    sub.add_parser("migrate-to-milvus", help="copy the served FAISS catalog into Milvus, check counts, switch")
    p = sub.add_parser("console", help="the operators' web console for a running gateway (python -m console -h)",
                       prefix_chars="\0")
    p.add_argument("console_args", nargs=argparse.REMAINDER)
    p = sub.add_parser("demo", help="index the real corpus and run example queries")
    p.add_argument("--output", type=Path, default=Path("demo-out"))
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--keep-running", action="store_true", help="leave the services and the web console running")
    p.add_argument("--console-port", type=int, default=8080)
    p.add_argument("--milvus", action="store_true", help="the scale-out mode: a real Milvus server, two gateways")
    return parser


COMMANDS = {"serve": cmd_serve, "triton": cmd_triton, "index": cmd_index, "search": cmd_search,
            "similar": cmd_similar, "delete": cmd_delete, "hide": cmd_visibility, "show": cmd_visibility,
            "stats": cmd_stats, "publish": cmd_publish, "switch-model": cmd_switch_model,
            "embed": cmd_embed, "migrate-to-milvus": cmd_migrate, "demo": run_demo, "console": cmd_console}


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
