"""`automl device-agent`: run on the target device; the search and profiler send it models to time."""

from __future__ import annotations

import argparse
import signal
import sys

from automl.cli.base import Command, CommandError


def _stop(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends serve_forever like Ctrl-C: the socket is closed cleanly


class DeviceAgentCommand(Command):
    description = ("Serve latency measurements over HTTP: POST an ONNX model to /measure, get its measured "
                   "latency on this device (GET /info describes the device).")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
        parser.add_argument("--verbose", action="store_true", help="log every request")

    def run(self, args: argparse.Namespace) -> int:
        from latency_models.agent import make_server

        try:
            server = make_server(args.host, args.port, verbose=args.verbose)
        except OSError as exc:
            raise CommandError(f"cannot listen on {args.host}:{args.port}: {exc}") from exc
        host, port = server.server_address[:2]
        signal.signal(signal.SIGTERM, _stop)
        print(f"device agent listening on http://{host}:{port}", flush=True)
        try:
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
            print("device agent stopped", file=sys.stderr, flush=True)
        return 0
