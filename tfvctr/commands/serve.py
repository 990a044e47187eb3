"""`tfvctr serve --model-base BASE [--model-name NAME] [--port 8501]`: a TF Serving REST dev server.

For laptops, tests and the demo; production runs `tensorflow/serving` (docs/serving.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from tfvctr.commands import add_command
from tfvctr.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "serve", run,
        "serve SavedModels over TF Serving's REST API (dev server; production: tensorflow/serving)",
        "Serve `tfvctr export` SavedModels with TF Serving's REST API (/v1/models/NAME[:predict|/metadata]), "
        "answering as TF Serving does, with its version policy and hot version swaps. "
        "--model-base BASE --model-name NAME serves BASE/NAME/<version>/ (the tensorflow/serving image's "
        "MODEL_BASE_PATH/MODEL_NAME); BASE holding version folders itself is served under its folder name. "
        "--model-config-file reads TF Serving's models.config instead. See docs/serving.md.",
    )
    p.add_argument("--model-base", default=None, help="folder of models (BASE/NAME/VERSION/) or of one model's versions")
    p.add_argument("--model-name", default=None, help="model name in the REST paths (default: the only model under BASE)")
    p.add_argument("--model-config-file", default=None, help="TF Serving models.config (text ModelServerConfig); "
                   "with --model-base, base paths under /models are re-rooted at BASE (the docker -v mount)")
    p.add_argument("--port", type=int, default=8501, help="REST port (default 8501, TF Serving's --rest_api_port; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--threads", type=int, default=None, help="request threads (TF Serving's --rest_api_num_threads; default 4 x CPUs)")
    p.add_argument("--timeout-ms", type=int, default=30_000, help="per-request timeout (TF Serving's --rest_api_timeout_in_ms)")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body accepted, MiB (413 above)")
    p.add_argument("--poll-seconds", type=float, default=1.0, help="how often to look for new versions "
                   "(TF Serving's --file_system_poll_wait_seconds)")


def resolve_models(model_base: str | None, model_name: str | None, config_file: str | None):
    """The model specs the flags describe (TF Serving's --model_name/--model_base_path or config file)."""
    from serving.model_config import ModelSpecConfig, read_model_config_file

    if config_file:
        if model_name:
            raise ConfigError("--model-name cannot be combined with --model-config-file (names come from the file)")
        return read_model_config_file(config_file, rebase_models_dir=os.path.abspath(model_base) if model_base else None)
    if not model_base:
        raise ConfigError("give --model-base BASE (or --model-config-file models.config)")
    base = os.path.abspath(model_base)
    if not os.path.isdir(base):
        raise ConfigError(f"--model-base {model_base}: no such folder")

    def has_versions(d):
        return any(e.isdigit() and os.path.isdir(os.path.join(d, e)) for e in os.listdir(d))

    if model_name:
        path = os.path.join(base, model_name)
        if not os.path.isdir(path):
            if has_versions(base) and os.path.basename(base) == model_name:
                path = base
            else:
                raise ConfigError(f"--model-base {model_base} has no model folder {model_name!r}")
        return [ModelSpecConfig(name=model_name, base_path=path)]
    if has_versions(base):
        return [ModelSpecConfig(name=os.path.basename(base), base_path=base)]
    models = sorted(e for e in os.listdir(base) if os.path.isdir(os.path.join(base, e)) and has_versions(os.path.join(base, e)))
    if len(models) != 1:
        found = ", ".join(models) if models else "none"
        raise ConfigError(f"--model-base {model_base}: pass --model-name (models with version folders found: {found})")
    return [ModelSpecConfig(name=models[0], base_path=os.path.join(base, models[0]))]


def run(args: argparse.Namespace) -> int:
    import asyncio

    from serving.http_app import serve
    from serving.servables import ModelManager

    specs = resolve_models(args.model_base, args.model_name, args.model_config_file)
    for s in specs:
        if not os.path.isdir(s.base_path):
            raise ConfigError(f"model {s.name}: base path {s.base_path} does not exist")
    if args.port < 0 or args.port > 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    if args.max_body_mb <= 0 or args.timeout_ms <= 0 or args.poll_seconds <= 0:
        raise ConfigError("--max-body-mb, --timeout-ms and --poll-seconds must be positive")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    threads = args.threads or 4 * (os.cpu_count() or 1)
    manager = ModelManager(specs, poll_seconds=args.poll_seconds)
    manager.poll_once()  # TF Serving opens its ports only after the initial load
    for s in specs:
        versions = manager.available_versions(s.name)
        for label, v in sorted(s.labels.items()):
            if v not in versions:
                # TF Serving refuses such a config too ("...which is not currently available for inference").
                raise ConfigError(f"model {s.name}: version label {label!r} points at version {v}, which is not loaded "
                                  f"(loaded: {versions or 'none'})")
        print(f"model {s.name}: versions {versions or 'none yet'} from {s.base_path}", flush=True)

    def ready(host, port):
        # Tests and scripts read this line for the bound port (--port 0).
        print(f"tfvctr serve: REST API on http://{host}:{port}/v1/models/{specs[0].name}", flush=True)

    asyncio.run(serve(manager, host=args.host, port=args.port, threads=threads,
                      max_body_bytes=int(args.max_body_mb * (1 << 20)), timeout_ms=args.timeout_ms, on_ready=ready))
    print("tfvctr serve: stopped", flush=True)
    return 0
