"""The server's Prometheus metrics: ``WorkerMetrics`` on the app's registry, fed by the runner.

Serving: a runner hook makes the metrics once the model has loaded (they need its layer count)
and points the runner's callbacks at them, so tokens, exits, breaches, requests and in-place
layer changes reach ``/metrics``. Evaluation mode: the reports are published as the
``helios_evaluation_*`` curves when the evaluation is done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from helios_worker.metrics import WorkerMetrics

if TYPE_CHECKING:
    from helios_contracts.reports import EvaluationReport
    from helios_worker.evaluation_service import EvaluationService
    from helios_worker.server.runner import EngineRunner
    from helios_worker.server.settings import ServerSettings
    from helios_worker.server.state import RunnerHook


def serving_metrics_hook(
    registry: CollectorRegistry, on_metrics: Callable[[WorkerMetrics], None] | None = None, vllm: bool = True
) -> RunnerHook:
    """A runner hook (``WorkerState.runner_hooks``) that wires the runner's callbacks to fresh metrics.

    ``on_metrics`` gets the metrics too (the shadow-result route records into them).
    """

    def attach(runner: EngineRunner) -> None:
        metrics = WorkerMetrics.for_model(registry, runner.loaded, vllm=vllm)
        metrics.set_exit_threshold(runner.engine.config.exit_threshold)
        metrics.set_memory(runner.engine.memory_plan)
        runner.on_step = metrics.on_step
        runner.on_request_done = metrics.on_request_done

        def layers_changed(loaded: int, total: int) -> None:
            metrics.set_layers(loaded, total)
            metrics.set_memory(runner.engine.memory_plan)

        runner.on_layers_changed = layers_changed
        if on_metrics is not None:
            on_metrics(metrics)

    return attach


def publish_evaluation_when_done(
    service: EvaluationService, settings: ServerSettings, registry: CollectorRegistry
) -> None:
    """Expose the service's reports on ``registry`` once it has them."""

    def publish(reports: list[EvaluationReport]) -> None:
        first = reports[0]  # the worker's own gauges need a layer count: the first candidate's
        metrics = WorkerMetrics(
            registry,
            settings.model_name,
            num_layers_total=first.num_layers_total,
            revision=first.revision,
            architecture=first.architecture,
            telemetry=service.telemetry,
        )
        metrics.set_exit_threshold(settings.exit_threshold)
        for report in reports:
            metrics.publish_evaluation(report)

    service.on_done = publish
