"""The open-loop load generator: arrivals, bounds, percentiles, failures counted, the shift."""

from __future__ import annotations

import asyncio
import json

import pytest

from helios_operator.local.loadgen import LoadSettings, arrival_times, percentile, run_load
from helios_operator.local.supervisor import free_port
from tests.test_local_serving import serve_app


def test_arrivals_are_bounded_in_time_and_count_and_seeded():
    times = arrival_times(rate=50.0, duration=2.0, max_requests=10_000, seed=3)
    assert 60 < len(times) < 140 and all(0 <= t < 2.0 for t in times) and times == sorted(times)
    assert arrival_times(50.0, 2.0, 10_000, 3) == times
    assert len(arrival_times(rate=1000.0, duration=10.0, max_requests=7, seed=0)) == 7


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([], 0.5) is None


def _flaky_app(seen: list[str]):
    """Answers 500 to every third request; records each prompt."""

    async def app(scope, receive, send):
        message = await receive()
        prompt = json.loads(message["body"])["prompt"]
        seen.append(prompt)
        status = 500 if len(seen) % 3 == 0 else 200
        body = json.dumps({"model": "m", "usage": {"completion_tokens": 4}}).encode()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


@pytest.mark.timeout(30)
def test_failures_are_counted_and_the_workload_shifts():
    seen: list[str] = []

    async def body():
        port = free_port()
        server, task = await serve_app(_flaky_app(seen), port)
        try:
            settings = LoadSettings(
                url=f"http://127.0.0.1:{port}",
                rate=40.0,
                prompts=["in-a", "in-b"],
                shift_prompts=["out"],
                shift_at=0.5,
                duration=1.0,
                seed=5,
            )
            return await run_load(settings)
        finally:
            server.should_exit = True
            await task

    report, results = asyncio.run(body())
    assert report.sent == len(seen) == len(results) > 10
    assert report.failed == report.sent // 3 and report.errors == {"HTTP 500": report.failed}
    assert report.num_tokens == 4 * report.ok
    assert report.before_shift.sent + report.after_shift.sent == report.sent
    assert all((r.sent_at >= 0.5) == r.is_shifted for r in results)
    assert set(seen) == {"in-a", "in-b", "out"}


@pytest.mark.timeout(30)
def test_an_unreachable_endpoint_fails_every_request_without_hanging():
    settings = LoadSettings(url=f"http://127.0.0.1:{free_port()}", rate=20.0, prompts=["x"], duration=0.5, timeout=2.0)
    report, _ = asyncio.run(run_load(settings))
    assert report.sent > 0 and report.ok == 0 and report.failed == report.sent
    assert all(error.startswith("ConnectError") for error in report.errors)


def test_load_cli_checks_its_arguments(tmp_path, capsys):
    from helios_operator.cli import main

    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    base = ["load", "--url", "http://127.0.0.1:1", "--prompts", str(prompts)]
    assert main([*base, "--rate", "1", "--shift-to", str(prompts)]) == 2
    assert "go together" in capsys.readouterr().err
    assert main([*base, "--rate", "0"]) == 2
    assert "rate" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("\n")
    assert main(["load", "--url", "http://x", "--rate", "1", "--prompts", str(tmp_path / "empty.txt")]) == 2
