"""Run the HELIOS Kubernetes operator (kopf) for HeliosDeployments."""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--namespace",
        action="append",
        metavar="NS",
        help="Watch only this namespace (repeatable). Default: all namespaces (needs a ClusterRole).",
    )
    parser.add_argument("--standalone", action="store_true", help="No kopf peering (one replica, no leader lease).")
    parser.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        metavar="URL",
        help="Liveness endpoint kopf serves (default: http://0.0.0.0:8080/healthz).",
    )
    parser.add_argument("--tick", metavar="SECONDS", help="Reconcile pass interval (HELIOS_OPERATOR_TICK, default 5).")
    parser.add_argument("--worker-image", metavar="IMAGE", help="Default worker image (HELIOS_WORKER_IMAGE).")
    parser.add_argument("--verbose", action="store_true", help="Debug logging.")


def run(args: argparse.Namespace) -> int:
    # The handlers read their settings at import; flags are the same settings as the environment.
    if args.tick:
        os.environ["HELIOS_OPERATOR_TICK"] = args.tick
    if args.worker_image:
        os.environ["HELIOS_WORKER_IMAGE"] = args.worker_image
    from helios_contracts.errors import UserError
    from helios_operator.k8s.config import OperatorConfig

    try:  # before the handlers read it at import: a bad setting is one line, not a traceback
        OperatorConfig.from_env()
    except ValueError as error:
        raise UserError(str(error)) from None
    import kopf

    import helios_operator.k8s.handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=args.verbose)
    kopf.run(
        standalone=args.standalone,
        namespaces=args.namespace or (),
        clusterwide=not args.namespace,
        liveness_endpoint=args.liveness,
    )
    return 0
