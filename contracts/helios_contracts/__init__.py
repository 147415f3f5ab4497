"""What crosses the worker/operator boundary, and nothing else.

The worker (model server) and the operator are separate images; both import this package and
neither imports the other. It holds the evaluation report, the candidate model reference,
the model shape the memory model needs, the metric names the operator reads from a worker,
the user-error type and the one command dispatcher. It needs only pydantic.
"""
