"""The HELIOS Kubernetes operator: kopf handlers (``handlers``) over pure builders and helpers.

``manifests`` builds child objects, ``conditions`` and ``report`` build status, ``scrape``
turns worker metrics into the policy's ``Telemetry``, ``workers`` talks to worker pods,
``kube`` to the API server, ``rbac`` lists what the operator may do, and ``reconcile``
runs one pass of the lifecycle (Pending -> Evaluating -> Serving <-> Adapting, Degraded).
"""
