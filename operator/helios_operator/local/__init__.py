"""HELIOS on one machine, no cluster: ``helios run``.

``config`` reads the spec (``default.yaml`` when none is given), ``state`` persists what a
restart needs, ``evaluate`` runs candidate evaluations in worker subprocesses, ``supervisor``
owns one worker process, ``proxy`` is the one stable OpenAI endpoint, ``serving`` hands
traffic from worker to worker, ``telemetry`` turns a worker's /metrics into the policy's
input, ``loop`` ties them to the pure policy, and ``dashboard`` shows it live.
"""
