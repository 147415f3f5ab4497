"""Calibrated exits for ``helios run``: ``helios calibrate`` in a subprocess per candidate with ``calibrate``.

The local counterpart of the operator's calibration Job (``k8s/calibration.py``): the sidecar goes
to ``<state dir>/exits/<candidate>``, which the candidate's evaluation (``helios evaluate --exits``)
and serving workers (``helios serve --exits``) then read. A fingerprint of what the calibration
depends on (model, revision, texts, tokens, exit layers) is kept beside the sidecar, so a restarted
run or a reassessment does not calibrate again until one of them changes. A candidate with
``exits`` uses that sidecar as given (a ``file://`` or ``pvc://`` reference as the path it names).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from helios_contracts.model_uris import from_uri
from helios_operator.local.evaluate import STDERR_TAIL_CHARS, run_command
from helios_operator.spec import Candidate, HeliosDeploymentSpec

SIDECAR_MANIFEST = "exits.json"  # what `helios calibrate` writes last (helios_worker.exit_sidecar)
HASH_SUFFIX = ".calibration-hash"


class CalibrationFailed(RuntimeError):
    """``helios calibrate`` did not produce a sidecar; the message quotes its error output."""


@dataclass(frozen=True)
class CalibrationJob:
    name: str  # candidate name
    model_ref: str
    texts: Path
    tokens: int
    exit_layers: str
    out: Path

    @classmethod
    def of(cls, candidate: Candidate, exits_dir: Path) -> CalibrationJob:
        settings = candidate.calibrate
        if settings is None or settings.texts.path is None:
            raise ValueError(f"candidate {candidate.name}: helios run calibrates from calibrate.texts.path only")
        return cls(
            candidate.name,
            candidate.reference,
            Path(settings.texts.path),
            settings.tokens,
            settings.exit_layers,
            exits_dir / candidate.name,
        )

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "helios_operator.cli",
            "calibrate",
            "--model",
            self.model_ref,
            "--texts",
            str(self.texts),
            "--tokens",
            str(self.tokens),
            "--exit-layers",
            self.exit_layers,
            "--out",
            str(self.out),
            "--json",
        ]

    @property
    def fingerprint(self) -> str:
        settings = [self.model_ref, str(self.texts.resolve()), self.tokens, self.exit_layers]
        return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]

    @property
    def hash_file(self) -> Path:
        return self.out.with_name(self.out.name + HASH_SUFFIX)

    @property
    def is_done(self) -> bool:
        """A sidecar from the same settings is there already."""
        try:
            return (self.out / SIDECAR_MANIFEST).is_file() and self.hash_file.read_text().strip() == self.fingerprint
        except OSError:
            return False


async def calibrate(job: CalibrationJob, timeout: float) -> Path:
    """The sidecar directory of ``job``, calibrated now unless it already is; CalibrationFailed otherwise."""
    if job.is_done:
        return job.out
    job.out.parent.mkdir(parents=True, exist_ok=True)
    job.hash_file.unlink(missing_ok=True)  # a sidecar being rewritten is no longer the recorded one
    try:
        status, _stdout, stderr = await run_command(job.command(), timeout)
    except TimeoutError:
        raise CalibrationFailed(f"calibrating {job.name} took longer than {timeout:g} s") from None
    if status != 0 or not (job.out / SIDECAR_MANIFEST).is_file():
        tail = stderr.decode(errors="replace")[-STDERR_TAIL_CHARS:].strip()
        raise CalibrationFailed(f"calibrating {job.name} exited with status {status}: {tail}")
    job.hash_file.write_text(job.fingerprint + "\n")
    return job.out


def given_exits(candidate: Candidate) -> str | None:
    """A candidate's own ``exits`` as a local path (``file://`` and ``pvc://`` as the path they name)."""
    return None if candidate.exits is None else from_uri(candidate.exits)


def exits_dirs(spec: HeliosDeploymentSpec, exits_dir: Path) -> dict[str, str]:
    """Candidate name -> the sidecar its workers read: the calibrated one or its own ``exits``."""
    found = {}
    for candidate in spec.candidates:
        if candidate.calibrate is not None:
            found[candidate.name] = str(exits_dir / candidate.name)
        elif (path := given_exits(candidate)) is not None:
            found[candidate.name] = path
    return found
