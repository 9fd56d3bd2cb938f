"""python -m console --gateway HOST:PORT [--insecure-local | --tls-cert C --tls-key K --gateway-ca CA] ..."""

from __future__ import annotations

import argparse

import uvicorn

from console.app import ConsoleConfig, create_app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway", required=True, help="the gateway's gRPC address, host:port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--insecure-local", action="store_true",
                        help="the demo: plain HTTP on loopback, no sign-in (the gateway in insecure-local mode)")
    parser.add_argument("--gateway-ca", help="PEM of the gateway's CA (TLS to the gateway; production)")
    parser.add_argument("--tls-cert", help="the console's HTTPS certificate (production)")
    parser.add_argument("--tls-key", help="the console's HTTPS key (production)")
    parser.add_argument("--metrics-url", help="the gateway's Prometheus /metrics, for the SLO panel")
    parser.add_argument("--prometheus-url", help="or a Prometheus server that scrapes the gateway")
    parser.add_argument("--max-image-bytes", type=int, default=20 * 2**20, help="the gateway's upload limit")
    parser.add_argument("--slo-window", type=float, default=30.0, help="seconds each SLO point covers")


def config_of(args: argparse.Namespace) -> ConsoleConfig:
    return ConsoleConfig(gateway=args.gateway, host=args.host, port=args.port, insecure_local=args.insecure_local,
                         gateway_ca_file=args.gateway_ca, tls_cert_file=args.tls_cert, tls_key_file=args.tls_key,
                         metrics_url=args.metrics_url, prometheus_url=args.prometheus_url,
                         max_image_bytes=args.max_image_bytes, slo_window_s=args.slo_window)


def serve(config: ConsoleConfig) -> None:
    app = create_app(config)
    print(f"console: {config.url}", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning",
                ssl_certfile=config.tls_cert_file, ssl_keyfile=config.tls_key_file)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The operators' web console (a client of the gateway's API).")
    add_arguments(parser)
    serve(config_of(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
