"""One shadow round trip, shared by ``helios run`` and the Kubernetes operator.

A serving worker started with a shadow fraction keeps that share of its finished greedy
requests; a scorer (a worker of the same model with every layer loaded) replays them
teacher-forced; the serving worker records the score, so the agreement reaches its /metrics
(``helios_shadow_tokens_total`` / ``helios_shadow_matches_total``) and from there the policy's
shadow window like any other counter.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

SAMPLES_PATH = "/v1/helios/shadow-samples"
SCORE_PATH = "/v1/helios/shadow-score"
RESULT_PATH = "/v1/helios/shadow-result"
SCORE_TIMEOUT_SECONDS = 120.0


class ShadowFailed(RuntimeError):
    """A step of the round trip failed; the message names the URL and the answer."""


@dataclass(frozen=True)
class ShadowScore:
    num_tokens: int
    num_matches: int


async def _call(client: httpx.AsyncClient, method: str, url: str, body: dict | None = None) -> dict:
    try:
        response = await client.request(method, url, json=body, timeout=SCORE_TIMEOUT_SECONDS)
    except httpx.HTTPError as error:
        raise ShadowFailed(f"{url}: {error}") from error
    if response.status_code != 200:
        raise ShadowFailed(f"{url} answered {response.status_code}: {response.text[:300]}")
    try:
        return dict(response.json())
    except (ValueError, TypeError) as error:
        raise ShadowFailed(f"{url} answered something that is not a JSON object") from error


async def shadow_round(client: httpx.AsyncClient, serving_url: str, scorer_url: str) -> ShadowScore | None:
    """Samples from the serving worker -> scored by the scorer -> recorded on the serving worker.

    None when there were no samples. The samples are gone from the serving worker once read,
    so a failure after that loses them (they are a sample; the next round has new ones).
    """
    samples = (await _call(client, "GET", serving_url + SAMPLES_PATH)).get("samples")
    if not isinstance(samples, list):
        raise ShadowFailed(f"{serving_url}{SAMPLES_PATH} answered without a samples list")
    if not samples:
        return None
    score = await _call(client, "POST", scorer_url + SCORE_PATH, {"samples": samples})
    result = {"tokens": score.get("tokens"), "matches": score.get("matches")}
    await _call(client, "POST", serving_url + RESULT_PATH, result)
    return ShadowScore(num_tokens=int(result["tokens"] or 0), num_matches=int(result["matches"] or 0))
