"""When a HeliosDeployment's next reconcile pass is due, and what brings it forward.

A pass runs every ``tick_seconds`` (sooner while an evaluation round waits on its pods), and at
once when something it reads changed: a worker pod of the deployment (an evaluation pod failed
or became ready, a serving pod went away) or its own spec. The watch handlers call ``wake``; the
timer checks ``is_due`` every ``CHECK_SECONDS`` and runs a pass only when it returns True, so a
change is acted on within about a second instead of at the next tick, and a quiet deployment
costs no API calls between ticks.
"""

from __future__ import annotations

CHECK_SECONDS = 1.0


class Wakeups:
    """Per HeliosDeployment (namespace, name): when its next pass is due, and whether it was woken."""

    def __init__(self) -> None:
        self._due: dict[tuple[str, str], float] = {}
        self._woken: set[tuple[str, str]] = set()

    def wake(self, namespace: str, name: str) -> None:
        self._woken.add((namespace, name))

    def is_due(self, namespace: str, name: str, now: float) -> bool:
        """True (and the wake-up consumed) when a pass should run now."""
        key = (namespace, name)
        if key in self._woken or now >= self._due.get(key, now):
            self._woken.discard(key)
            return True
        return False

    def schedule(self, namespace: str, name: str, at: float) -> None:
        """The pass that just ran wants the next one at ``at`` (loop time), unless woken first."""
        self._due[(namespace, name)] = at


_WAKEUPS = Wakeups()


def wakeups() -> Wakeups:
    """The operator process's one registry (the watch handlers and the timer share it)."""
    return _WAKEUPS
