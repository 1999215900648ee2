"""``vlm-gist vision-serve``: arguments and the server's main loop (importable without torch)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any

from . import DEFAULT_PORTS, FAMILIES, TOKEN_ENV
from ._runtime import DTYPES, DeviceUnavailableError, MissingExtraError, Runtime, WeightsError

__all__ = ["add_arguments", "build_server", "family_class", "run"]

_MODULES = {
    "mmgroundingdino": ("mmgroundingdino", "MMGroundingDino"),
    "sam2_realtime": ("sam2_realtime", "Sam2Realtime"),
    "sam3": ("sam3", "Sam3"),
    "florence2": ("florence2", "Florence2"),
    "kosmos2": ("kosmos2", "Kosmos2"),
}


def family_class(family: str) -> Any:
    """The :class:`~.app.ModelFamily` subclass of ``family`` (imports torch-free module code only)."""
    module_name, class_name = _MODULES[family]
    module = importlib.import_module(f"{__package__}.{module_name}")
    return getattr(module, class_name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--family", required=True, choices=FAMILIES, help="the model family this server serves"
    )
    parser.add_argument(
        "--flavor",
        help="flavour to load at start (like the real servers' --preload_flavor); without it the first "
        "client's POST /load loads one",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; 0.0.0.0 for all)"
    )
    parser.add_argument(
        "--port",
        type=int,
        help="port (default: the pipeline's default for the family: "
        + ", ".join(f"{f} {p}" for f, p in DEFAULT_PORTS.items())
        + ")",
    )
    parser.add_argument(
        "--device", default="auto", help="cuda, cuda:N, cpu or mps (default: cuda if available, else cpu)"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="weights dtype (default: bf16 on CUDA, fp32 elsewhere)",
    )
    parser.add_argument(
        "--token",
        help=f"Bearer token clients must send (default: ${TOKEN_ENV}, as the real servers read it; unset = any token)",
    )
    parser.add_argument(
        "--weights",
        help="a local directory (or another Hugging Face model id) to load --flavor from instead of its "
        "official model id",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="build each flavour from a tiny config with random weights (tests and benchmarks only: "
        "answers are meaningless)",
    )
    parser.add_argument(
        "--random-size",
        choices=["tiny", "full"],
        default="tiny",
        help="with --random-weights: tiny test architectures (default) or, for mmgroundingdino, sam2_realtime "
        "and sam3, the real models' sizes (Swin-L MM-Grounding-DINO, SAM 2.1 Hiera-L, SAM 3) for speed benchmarks",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-weights (default 0)")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=4,
        help="batch size of the forward passes: (image, prompt chunk) rows for mmgroundingdino, images "
        "per vision pass for sam3, whose prompts of one image are always one batch (default 4)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def build_server(args: argparse.Namespace) -> Any:
    """The :class:`~.app.VisionServer` of ``args``, its model loaded when ``--flavor`` is given."""
    from ._runtime import require_vision_extra
    from .app import VisionServer

    require_vision_extra()
    runtime = Runtime(
        device=args.device,
        dtype=args.dtype,
        random_weights=args.random_weights,
        random_size=args.random_size,
        weights=args.weights,
        weights_flavor=args.flavor,
        seed=args.seed,
    )
    cls = family_class(args.family)
    kwargs = {"max_batch_size": args.max_batch_size} if args.family in ("mmgroundingdino", "sam3") else {}
    family = cls(runtime, **kwargs)
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    server = VisionServer(family, token=token or None)
    if args.flavor is not None:
        family.load(args.flavor, {"flavor": args.flavor})
    return server


def run(args: argparse.Namespace) -> int:
    """Start the server and serve until Ctrl-C / SIGTERM; 2 on a configuration error (printed)."""
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    log = logging.getLogger("vlm_gist_dagster.vision_server")
    if args.flavor is not None:
        flavors = family_class(args.family).flavors
        if args.flavor not in flavors:
            print(
                f"vlm-gist vision-serve: unknown flavor {args.flavor!r} for {args.family}; "
                f"valid flavors: {list(flavors)}",
                file=sys.stderr,
            )
            return 2
    if args.weights is not None and args.flavor is None:
        print(
            "vlm-gist vision-serve: --weights needs --flavor (the flavour those weights are)", file=sys.stderr
        )
        return 2
    try:
        server = build_server(args)
    except (MissingExtraError, DeviceUnavailableError, WeightsError) as exc:
        print(f"vlm-gist vision-serve: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from .app import create_app

    port = args.port if args.port is not None else DEFAULT_PORTS[args.family]
    family = server.family
    log.info(
        "NimbRo vision server %s on http://%s:%d (%s; loaded: %s%s)",
        args.family,
        args.host,
        port,
        family.runtime.describe(),
        family.flavor or "nothing yet",
        "; token required" if server.token else "; any bearer token accepted",
    )
    if args.random_weights:
        log.warning("--random-weights: tiny architectures with random weights, answers are meaningless")
    try:
        uvicorn.run(create_app(server), host=args.host, port=port, log_level="warning", access_log=False)
    finally:
        server.close()
    return 0
