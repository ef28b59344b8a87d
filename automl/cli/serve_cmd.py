"""`automl serve`: the HTTP API (FastAPI + uvicorn), OpenAPI docs at /docs."""

from __future__ import annotations

import argparse
import os
import sys

from automl.cli.base import Command, CommandError
from automl.cli.best_cmd import add_tracking_argument


class ServeCommand(Command):
    description = ("Serve the HTTP API: submit searches (POST /searches), follow them, query best policies. "
                   "Write endpoints need a bearer token: set AUTOML_API_TOKEN (preferred: a --token flag is "
                   "visible to other users in the process list). OpenAPI docs at /docs.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1, this machine only)")
        parser.add_argument("--port", type=int, default=8000)
        add_tracking_argument(parser)
        parser.add_argument("--token", default=None, help="bearer token for write endpoints (default: $AUTOML_API_TOKEN)")
        parser.add_argument("--max-running", type=int, default=1, help="searches allowed to run at once")

    def run(self, args: argparse.Namespace) -> int:
        import uvicorn

        from automl.service import create_app
        from automl.tracking import resolve_tracking_uri

        if not 0 < args.port < 65536:
            raise CommandError(f"--port must be 1..65535, got {args.port}")
        token = args.token or os.environ.get("AUTOML_API_TOKEN") or None
        uri = resolve_tracking_uri(args.tracking_uri)
        app = create_app(uri, token, max_running=max(1, args.max_running))
        print(f"tracking store: {uri}; write endpoints "
              f"{'need the bearer token' if token else 'DISABLED (no AUTOML_API_TOKEN)'}; "
              f"docs at http://{args.host}:{args.port}/docs", file=sys.stderr, flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
        return 0
