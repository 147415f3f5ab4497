"""Serve a model over an OpenAI-compatible HTTP API with early exit over its first L layers.

With ``--mode evaluate`` (``HELIOS_MODE=evaluate``, the operator's evaluation pods) the worker
evaluates candidates instead and serves the reports at ``/v1/helios/evaluation``; what to
evaluate comes from HELIOS_EVAL_CANDIDATES, HELIOS_EVAL_PROMPTS and HELIOS_MAX_NEW_TOKENS
(see helios_worker.evaluation_service).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from helios_worker.server.settings import ENV_ALIASES, ENV_PREFIX, ServerSettings

# Flags whose meaning is clearer spelled out than generated from the field name.
_METAVARS = {"model": "REF", "layers": "L", "exit_threshold": "T", "max_batch_size": "B", "max_queue": "Q"}
# Connection shutdown after the drain: in-flight work is done by then, only sockets are left.
SOCKET_CLOSE_SECONDS = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per ServerSettings field; each also read from HELIOS_<FIELD> (flags win)."""
    parser.epilog = "Every flag can also be set as an environment variable HELIOS_<FLAG> (flags win)."
    for name, field in ServerSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        variables = ", ".join((ENV_PREFIX + name.upper(), *ENV_ALIASES.get(name, ())))
        default = "" if field.is_required() or field.default is None else f"; default {field.default}"
        help_text = f"{field.description or name} [{variables}{default}]"
        if field.annotation is bool:
            # Strings for everything else: pydantic validates flag and env values the same way.
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, default=None, metavar=_METAVARS.get(name, name.upper()), help=help_text)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one), as uvicorn binds its own."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace) -> int:
    from helios_contracts.errors import UserError
    from helios_worker.server.settings import SettingsError

    flags = {name: getattr(args, name) for name in ServerSettings.model_fields}
    try:
        settings = ServerSettings.from_sources(flags, os.environ)
    except SettingsError as error:
        raise UserError(str(error)) from None

    import uvicorn

    if settings.torch_threads is not None:
        import torch

        # Per process: on a shared CPU, intra-op threads of a small model mostly wait on each other.
        torch.set_num_threads(settings.torch_threads)

    from helios_worker.server.app import create_app
    from helios_worker.server.process import DrainingServer
    from helios_worker.server.state import Phase

    evaluation = None
    if settings.mode == "evaluate":
        from helios_worker.evaluation_service import EvaluationService

        try:  # before the server starts: a malformed pod spec is the user's error, exit 2
            evaluation = EvaluationService.from_settings(settings, os.environ)
        except ValueError as error:
            raise UserError(f"evaluation mode: {error}") from None

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sockets = None
    if settings.control_port is not None:  # two listeners, one app: the middleware splits by port
        try:
            sockets = [bind_socket(settings.host, settings.port), bind_socket(settings.host, settings.control_port)]
        except OSError as error:
            raise UserError(f"cannot listen on {settings.host}: {error}") from None
        ports = [sock.getsockname()[1] for sock in sockets]
        settings = settings.model_copy(update={"port": ports[0], "control_port": ports[1]})
        logging.getLogger("helios.server").info("serving on port %d, control API on port %d", *ports)
    app = create_app(settings, evaluation=evaluation)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",  # a line per request costs throughput at load
        timeout_graceful_shutdown=SOCKET_CLOSE_SECONDS,
    )
    worker = app.state.worker
    DrainingServer(config, worker, settings.drain_seconds).run(sockets=sockets)
    if worker.phase != Phase.FAILED:
        return 0
    from helios_worker.loading import ModelLoadError
    from helios_worker.model_refs import ModelRefError

    if isinstance(worker.load_error, ModelRefError | ModelLoadError):  # the user's reference or layers
        raise UserError(str(worker.load_error))
    print(f"helios serve: {worker.reason}", file=sys.stderr)
    return 1
