"""Load benchmark: a full-depth worker vs a HELIOS worker under concurrent streaming clients.

Starts `helios serve` twice on the same model and prompts (or uses running workers given by
URL): "full" loads every layer and runs no exit tests; "helios" loads only --helios-layers
layers with early exit at --exit-threshold (greedy exit at L). At each concurrency level, N
async clients stream completions back to back over the same prompt set for --seconds; every
request asks for exactly --max-tokens tokens (ignore_eos) so both configs do the same work.
Prints, per level: requests, tokens/s, p50/p99 of time to first token (TTFT), time per
output token after the first (TPOT) and request latency, the mean exit layer; then
HELIOS/full ratios (tokens/s: higher is better; times: lower is better).

    python bench/load.py --model helios-ee-tiny --helios-layers 6 --torch-threads 1
    python bench/load.py --model smollm2-135m --helios-layers 20 --concurrency 1 4 16 --seconds 8
    python bench/load.py --full-url http://a:8000 --helios-url http://b:8000 --model-name m
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import httpx

DEFAULT_PROMPTS = Path(__file__).resolve().parent.parent / "worker/helios_worker/assets/prompts/in_domain.txt"
READY_TIMEOUT_SECONDS = 600.0  # the first SmolLM2 start converts its weights
DRAIN_SECONDS = 60.0  # a level's in-flight requests after its time is up


@dataclass
class RequestResult:
    ttft: float  # request sent -> first token
    latency: float  # request sent -> last event
    num_tokens: int
    mean_exit_layer: float | None

    @property
    def tpot(self) -> float | None:
        return (self.latency - self.ttft) / (self.num_tokens - 1) if self.num_tokens > 1 else None


@dataclass
class LevelResult:
    config: str
    concurrency: int
    seconds: float
    requests: list[RequestResult] = field(default_factory=list)
    num_errors: int = 0

    @property
    def tokens_per_second(self) -> float:
        return sum(r.num_tokens for r in self.requests) / self.seconds

    def percentile(self, metric: str, q: float) -> float:
        values = sorted(v for r in self.requests if (v := getattr(r, metric)) is not None)
        if not values:
            return float("nan")
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]

    @property
    def mean_exit_layer(self) -> float:
        weighted = [(r.mean_exit_layer, r.num_tokens) for r in self.requests if r.mean_exit_layer is not None]
        tokens = sum(n for _, n in weighted)
        return sum(m * n for m, n in weighted) / tokens if tokens else float("nan")


# --- machine ------------------------------------------------------------------------------
def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}; {cores} cores usable; torch {torch_version}; Python {platform.python_version()}"


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


# --- servers ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen | None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the worker exited with status {process.returncode} before it was ready")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {READY_TIMEOUT_SECONDS:.0f} s")


@contextlib.contextmanager
def started_worker(serve_args: list[str], log_path: Path):
    """`helios serve` on a free loopback port; SIGTERM (drain) on the way out, killed if it hangs."""
    port = free_port()
    command = [sys.executable, "-m", "helios_operator.cli", "serve", *serve_args]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, process)
            yield url
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


# --- clients ------------------------------------------------------------------------------
async def one_request(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int) -> RequestResult:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    start = time.perf_counter()
    ttft: float | None = None
    final: dict = {}
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line.removeprefix("data: "))
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if ttft is None and chunk["choices"]:
                ttft = time.perf_counter() - start
            if chunk.get("usage"):
                final = chunk
    latency = time.perf_counter() - start
    tokens = final["usage"]["completion_tokens"]
    return RequestResult(ttft if ttft is not None else latency, latency, tokens, final["helios"]["mean_exit_layer"])


async def run_level(
    url: str, config: str, model: str, prompts: list[str], concurrency: int, seconds: float, max_tokens: int
) -> LevelResult:
    """``concurrency`` clients send requests back to back for ``seconds``, then finish what they started."""
    result = LevelResult(config, concurrency, seconds=0.0)
    next_prompt = iter(range(10**9))
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=DRAIN_SECONDS + seconds, limits=limits) as client:
        start = time.perf_counter()
        stop_at = start + seconds

        async def client_loop() -> None:
            while time.perf_counter() < stop_at:
                prompt = prompts[next(next_prompt) % len(prompts)]
                try:
                    result.requests.append(await one_request(client, model, prompt, max_tokens))
                except (httpx.HTTPError, RuntimeError, KeyError):
                    result.num_errors += 1

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - start
    return result


# --- report -------------------------------------------------------------------------------
COLUMNS = ("config", "conc", "reqs", "err", "tok/s", "ttft p50", "ttft p99", "tpot p50", "tpot p99", "lat p50")
COLUMNS += ("lat p99", "exit L")


def ms(value: float) -> str:
    return f"{value * 1000:.1f}ms"


def row(level: LevelResult) -> list[str]:
    p = level.percentile
    return [
        level.config,
        str(level.concurrency),
        str(len(level.requests)),
        str(level.num_errors),
        f"{level.tokens_per_second:.1f}",
        ms(p("ttft", 50)),
        ms(p("ttft", 99)),
        ms(p("tpot", 50)),
        ms(p("tpot", 99)),
        ms(p("latency", 50)),
        ms(p("latency", 99)),
        f"{level.mean_exit_layer:.2f}",
    ]


def ratio_row(full: LevelResult, helios: LevelResult) -> list[str]:
    def ratio(metric: str, q: float) -> str:
        return f"{helios.percentile(metric, q) / full.percentile(metric, q):.2f}x"

    tps = helios.tokens_per_second / full.tokens_per_second if full.tokens_per_second else float("nan")
    return [
        str(full.concurrency),
        f"{tps:.2f}x",
        ratio("ttft", 50),
        ratio("ttft", 99),
        ratio("tpot", 50),
        ratio("tpot", 99),
        ratio("latency", 50),
        ratio("latency", 99),
    ]


def markdown_table(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="helios-ee-tiny", help="model reference for self-started workers")
    parser.add_argument("--helios-layers", type=int, default=6, help="layers the HELIOS worker loads")
    parser.add_argument("--exit-threshold", type=float, default=0.8)
    parser.add_argument("--min-exit-layer", type=int, default=1)
    parser.add_argument("--full-url", help="use this running full-depth worker instead of starting one")
    parser.add_argument("--helios-url", help="use this running HELIOS worker instead of starting one")
    parser.add_argument("--model-name", help="served model name of running workers (default: --model)")
    parser.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS, help="one prompt per line")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--seconds", type=float, default=8.0, help="time each level keeps sending")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per request (exact: ignore_eos)")
    parser.add_argument("--torch-threads", type=int, help="passed to self-started workers")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/helios-load-bench"), help="worker logs")
    return parser.parse_args(argv)


async def sweep(urls: dict[str, str], model: str, prompts: list[str], args: argparse.Namespace) -> dict:
    """Every level on every config, interleaved (full, helios, full, ...): on a shared machine both
    configs of a level then meet about the same background load."""
    for url in urls.values():  # warm-up, not measured
        async with httpx.AsyncClient(base_url=url, timeout=DRAIN_SECONDS) as client:
            await one_request(client, model, prompts[0], args.max_tokens)
    results: dict[str, list[LevelResult]] = {config: [] for config in urls}
    for concurrency in args.concurrency:
        for config, url in urls.items():
            level = await run_level(url, config, model, prompts, concurrency, args.seconds, args.max_tokens)
            print(" | ".join(row(level)), flush=True)
            results[config].append(level)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prompts = [line for line in args.prompts.read_text().splitlines() if line.strip()]
    batch = str(max(args.concurrency))
    # Every client gets a batch slot; a short context keeps the KV cache of 64 slots small.
    common = ["--model", args.model, "--max-batch-size", batch, "--max-queue", batch, "--max-seq-len", "512"]
    if args.torch_threads:
        common += ["--torch-threads", str(args.torch_threads)]
    full_args = [*common, "--no-early-exit"]
    helios_args = [*common, "--layers", str(args.helios_layers), "--exit-threshold", str(args.exit_threshold)]
    helios_args += ["--min-exit-layer", str(args.min_exit_layer)]

    print(f"machine: {machine_description()}")
    print(f"load average before: {load_average()}")
    print(f"command: python bench/load.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"full:   helios serve {' '.join(full_args)}")
    print(f"helios: helios serve {' '.join(helios_args)}")
    print(" | ".join(COLUMNS))
    args.log_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        urls = {}
        for config, url, serve_args in (("full", args.full_url, full_args), ("helios", args.helios_url, helios_args)):
            urls[config] = url or stack.enter_context(started_worker(serve_args, args.log_dir / f"{config}.log"))
        results = asyncio.run(sweep(urls, args.model_name or args.model, prompts, args))
    full, helios = results["full"], results["helios"]
    print(f"load average after: {load_average()}\n")

    print(markdown_table(COLUMNS, [row(level) for level in full + helios]))
    print()
    ratio_header = ["conc", "tok/s", "ttft p50", "ttft p99", "tpot p50", "tpot p99", "lat p50", "lat p99"]
    print("HELIOS / full (tok/s: higher is better; times: lower is better)\n")
    print(markdown_table(ratio_header, [ratio_row(f, h) for f, h in zip(full, helios, strict=True)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
