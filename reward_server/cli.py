"""Start the Edit-R1 reward server: an MLLM judge that scores image edits over JSON/HTTP.

The command lives here; ``python reward_server/reward_server.py`` and ``python -m reward_server``
both run :func:`main`.

    python reward_server/reward_server.py --backend vllm --model Qwen/Qwen2.5-VL-32B-Instruct \
        --tensor-parallel-size 2 --data-parallel-size 4
    python reward_server/reward_server.py --backend transformers --model /path/to/judge
    python reward_server/reward_server.py --backend openai --model Qwen/Qwen2.5-VL-32B-Instruct \
        --base-url http://127.0.0.1:8000/v1

then check it with ``python reward_server/test_reward_server.py`` and point the trainer at it with
``REWARD_SERVER=host:12341``. Binds 127.0.0.1 unless ``--host`` says otherwise; set an API key
(``--api-key`` or the ``REWARD_SERVER_API_KEY`` environment variable) before exposing it further.
Deployment recipes: ``docs/reward-server.md``; wire format: ``docs/reward-protocol.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from reward_server.backends import BACKEND_NAMES, build_backend
from reward_server.backends.base import BackendOptions
from reward_server.prompt_template import (
    AUTO,
    DEFAULT_TEMPLATE,
    TEMPLATES,
    TemplateError,
    judge_prompt_info,
    pairwise_template_id_for_file,
    resolve_pairwise_template,
    template_id_for_file,
)
from reward_server.protocol import Limits, max_images_per_item

LOGGER = logging.getLogger("reward_server")
# Far above any healthy batch (a 32B judge scores 32 items in seconds; loading is not a batch), so
# only a replica that stopped answering reaches it.
DEFAULT_BATCH_DEADLINE_S = 600.0
API_KEY_ENV = "REWARD_SERVER_API_KEY"
UPSTREAM_API_KEY_ENV = "OPENAI_API_KEY"


def _add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of one backend or another (device/dtype, the upstream, the vLLM engine)."""
    parser.add_argument("--device", default="auto", help="transformers: cuda, cpu or auto")
    parser.add_argument(
        "--dtype",
        default="auto",
        help="transformers and vllm: bfloat16, float16, float32 or auto (bfloat16 on GPU, float32 on CPU)",
    )
    parser.add_argument(
        "--base-url", default="", help="openai: the upstream server, e.g. http://127.0.0.1:8000/v1"
    )
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vllm")
    parser.add_argument("--max-model-len", type=int, default=None, help="vllm")
    parser.add_argument(
        "--vllm-logprobs-mode",
        default="processed_logprobs",
        choices=("processed_logprobs", "raw_logprobs", "processed_logits", "raw_logits"),
        help="vllm: the engine's logprobs_mode (docs/reward-server.md)",
    )
    parser.add_argument(
        "--vllm-enforce-eager",
        action="store_true",
        help="vllm: no torch.compile / CUDA graphs (a start-up ~40 s shorter on CPU, slower steps)",
    )
    parser.add_argument(
        "--tokenizer",
        default="",
        help="openai: local folder of the judge's tokenizer, for upstream servers without /tokenize",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=BACKEND_NAMES, default="vllm")
    parser.add_argument("--model", required=True, help="judge checkpoint: local folder or hub id")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=12341, help="0 picks a free port (printed at start)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs per judge replica")
    parser.add_argument("--data-parallel-size", type=int, default=1, help="judge replicas (processes)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="items per engine call")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill up")
    parser.add_argument(
        "--batch-deadline-s",
        type=float,
        default=DEFAULT_BATCH_DEADLINE_S,
        help="a replica process that holds one batch longer without answering is killed and restarted; "
        "that batch's items get a retryable error (0 = no deadline). Replica processes run with "
        "--data-parallel-size >= 2, or with --replica-processes",
    )
    parser.add_argument(
        "--replica-processes",
        action="store_true",
        help="run even a single judge replica in a worker process (so that --batch-deadline-s can "
        "restart it when it hangs); the default for --data-parallel-size >= 2",
    )
    parser.add_argument(
        "--api-key", default=None, help=f"require 'Authorization: Bearer KEY' (or env {API_KEY_ENV})"
    )
    parser.add_argument("--template", default=DEFAULT_TEMPLATE, choices=sorted(TEMPLATES))
    parser.add_argument(
        "--template-file",
        default=None,
        help="the judge's prompt from a file with the placeholders {prompt} and {requirement} (replaces "
        "--template; docs/reward-server.md says how to reproduce the original's rewards)",
    )
    parser.add_argument(
        "--pairwise-template-file",
        default=None,
        help="the judge's pairwise question (protocol 2) from a file with the placeholders {prompt} and "
        "{requirement}; replaces the built-in template's. With --template-file and without this flag "
        "the server has no pairwise question and refuses pairwise items",
    )
    # Set by parse_args from the two template flags; "auto" = the built-in template's pairwise question.
    parser.set_defaults(pairwise_template=AUTO)
    parser.add_argument("--threads", type=int, default=32, help="HTTP worker threads (concurrent requests)")
    _add_backend_arguments(parser)
    limits = Limits()
    parser.add_argument("--max-items", type=int, default=limits.max_items, help="items per request")
    parser.add_argument("--max-body-mb", type=float, default=limits.max_body_bytes / 2**20)
    parser.add_argument("--max-image-mb", type=float, default=limits.max_image_bytes / 2**20)
    parser.add_argument("--max-image-pixels", type=int, default=limits.max_image_pixels)
    parser.add_argument("--max-text-chars", type=int, default=limits.max_text_chars)
    return parser


def limits_from_args(args: argparse.Namespace) -> Limits:
    return Limits(
        max_items=args.max_items,
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_image_bytes=int(args.max_image_mb * 2**20),
        max_image_pixels=args.max_image_pixels,
        max_text_chars=args.max_text_chars,
    )


def options_from_args(args: argparse.Namespace) -> BackendOptions:
    """The backend options; the vLLM engine's image limit follows the request limits (the most
    images an item may carry)."""
    return BackendOptions(
        model=args.model,
        template=args.template,
        pairwise_template=args.pairwise_template,
        tensor_parallel_size=args.tensor_parallel_size,
        data_parallel_size=args.data_parallel_size,
        max_batch_size=args.max_batch_size,
        device=args.device,
        dtype=args.dtype,
        base_url=args.base_url,
        upstream_api_key=os.environ.get(UPSTREAM_API_KEY_ENV, ""),
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len,
        logprobs_mode=args.vllm_logprobs_mode,
        tokenizer=args.tokenizer,
        enforce_eager=args.vllm_enforce_eager,
        max_images_per_item=max_images_per_item(limits_from_args(args)),
    )


def build_replicas(args: argparse.Namespace, limits: Limits) -> list:
    """One in-process backend, or ``--data-parallel-size`` worker processes on disjoint GPU slices
    (also one with ``--replica-processes``), each with the batch deadline."""
    options = options_from_args(args)
    if args.batch_deadline_s < 0:
        raise SystemExit(f"--batch-deadline-s {args.batch_deadline_s:g}: must be >= 0 (0 = no deadline)")
    if args.data_parallel_size == 1 and not args.replica_processes:
        return [build_backend(args.backend, options)]
    if args.backend == "openai":
        raise SystemExit(
            "--data-parallel-size / --replica-processes are for vllm/transformers; scale the upstream "
            "server instead (the openai backend's own request time-out bounds a hung upstream)"
        )
    from reward_server.worker import ReplicaProcess, gpu_slices

    slices = gpu_slices(
        args.tensor_parallel_size, args.data_parallel_size, os.environ.get("CUDA_VISIBLE_DEVICES")
    )
    return [
        ReplicaProcess(
            args.backend,
            options,
            gpus,
            limits.max_image_pixels,
            index=index,
            batch_deadline_s=args.batch_deadline_s,
        )
        for index, gpus in enumerate(slices)
    ]


def _interrupt(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The arguments; ``--template-file`` is checked and becomes ``args.template`` (``file:`` id),
    ``--pairwise-template-file`` ``args.pairwise_template`` (a ``file:`` id; else the built-in
    template's pairwise question, or None after ``--template-file``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.template_file:
            if args.template != DEFAULT_TEMPLATE:
                parser.error("--template and --template-file: give one of them")
            args.template = template_id_for_file(args.template_file)
        if args.pairwise_template_file:
            args.pairwise_template = pairwise_template_id_for_file(args.pairwise_template_file)
        else:
            args.pairwise_template = resolve_pairwise_template(AUTO, args.template)
    except TemplateError as error:
        parser.error(str(error))
    return args


def server_info(args: argparse.Namespace, replicas: Sequence = ()) -> dict[str, object]:
    """What ``/health`` reports: backend, model, both judge questions (names and SHA-256) and, given
    the replicas, the first one's ``engine`` (engine, version, dtype, settings)."""
    info: dict[str, object] = {
        "backend": args.backend,
        "model": args.model,
        **judge_prompt_info(args.template, resolve_pairwise_template(args.pairwise_template, args.template)),
    }
    if replicas:
        info["engine"] = replicas[0].engine_info
    return info


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stdout
    )
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    limits = limits_from_args(args)
    LOGGER.info("loading %s judge %s", args.backend, args.model)
    # The engines first, Flask after: vLLM's CPU platform scans every loaded module at engine start
    # and dies on Flask's request proxy (reward_server/backends/vllm_backend.py:make_vllm_engine).
    replicas = build_replicas(args, limits)
    from waitress import create_server

    from reward_server.app import create_app
    from reward_server.batcher import DynamicBatcher

    batcher = DynamicBatcher(replicas, max_batch_size=args.max_batch_size, max_wait_s=args.max_wait_ms / 1000)
    info = server_info(args, replicas)
    app = create_app(batcher, info, limits, api_key=api_key)
    server = create_server(
        app, host=args.host, port=args.port, threads=args.threads, max_request_body_size=limits.max_body_bytes
    )
    LOGGER.info(
        "listening on http://%s:%s (backend=%s, auth=%s)",
        args.host,
        server.effective_port,
        args.backend,
        "on" if api_key else "off",
    )
    # SIGTERM (a scheduler, ``kill``) shuts down like Ctrl-C: replica processes are stopped too.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.run()
    except KeyboardInterrupt:
        LOGGER.info("shutting down")
    finally:
        batcher.close()
        for replica in replicas:
            replica.close()


if __name__ == "__main__":
    main()
