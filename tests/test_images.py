"""The container images (worker/Dockerfile, operator/Dockerfile), checked without a Docker engine.

Each ``pip install`` line is parsed: every package an image installs must be declared in
pyproject.toml (torch at a version the worker extra allows), the worker image must not get the
operator's dependencies, nor the operator image torch or any worker-only package. The entry
points the images run are then imported in a subprocess where the other image's packages are
made unimportable, which is what a missing dependency would look like inside the image.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]["name"]


def _name(requirement: str) -> str:
    return Requirement(requirement).name.lower().replace("_", "-")


def declared(extras: set[str]) -> dict[str, Requirement]:
    """Distribution name -> requirement, for the base dependencies plus ``extras`` (self-references expanded)."""
    optional = PYPROJECT["project"]["optional-dependencies"]
    found = {_name(r): Requirement(r) for r in PYPROJECT["project"]["dependencies"]}
    pending, done = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in done:
            continue
        done.add(extra)
        for raw in optional[extra]:
            requirement = Requirement(raw)
            if _name(raw) == PROJECT:
                pending += requirement.extras
            else:
                found[_name(raw)] = requirement
    return found


@dataclass
class Image:
    """What a Dockerfile installs and runs, as far as a text reading can tell."""

    base: str = ""
    args: dict[str, str] = field(default_factory=dict)
    packages: list[tuple[str, list[str]]] = field(default_factory=list)  # (requirement, pip options)
    extras: set[str] = field(default_factory=set)  # of the project itself (pip install ".[x]")
    user: str = ""
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)


_PIP_OPTIONS_WITH_VALUE = {"--index-url", "-i", "--extra-index-url", "--constraint", "-c", "--target", "-t"}


def parse_dockerfile(path: Path) -> Image:
    image = Image()
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    for line in text.splitlines():
        instruction, _, rest = line.strip().partition(" ")
        rest = re.sub(r"\$\{(\w+)\}", lambda m: image.args.get(m[1], m[0]), rest)
        match instruction.upper():
            case "ARG" if "=" in rest:
                name, _, value = rest.partition("=")
                image.args[name.strip()] = value.strip()
            case "FROM":
                image.base = rest.split()[0]
            case "USER":
                image.user = rest.strip()
            case "ENTRYPOINT":
                image.entrypoint = json.loads(rest)
            case "CMD":
                image.cmd = json.loads(rest)
            case "COPY":
                image.copied += shlex.split(rest)[:-1]
            case "RUN":
                for command in re.split(r"&&|;", rest):
                    _parse_pip(shlex.split(command), image)
    return image


def _parse_pip(words: list[str], image: Image) -> None:
    if words[:2] != ["pip", "install"] and words[:4] != ["python3", "-m", "pip", "install"]:
        return
    words = words[words.index("install") + 1 :]
    options, targets = [], []
    while words:
        word = words.pop(0)
        if word in _PIP_OPTIONS_WITH_VALUE:
            options += [word, words.pop(0)]
        elif word.startswith("-"):
            options.append(word)
        else:
            targets.append(word)
    for target in targets:
        if local := re.fullmatch(r"\.(?:\[([\w,-]+)\])?", target):
            image.extras |= set((local[1] or "").split(",")) - {""}
        else:
            image.packages.append((target, options))


WORKER = parse_dockerfile(ROOT / "worker" / "Dockerfile")
OPERATOR = parse_dockerfile(ROOT / "operator" / "Dockerfile")


def installed(image: Image) -> dict[str, Requirement]:
    """What pip would put in the image from pyproject, plus the packages named on their own."""
    found = declared(image.extras)
    for requirement, _ in image.packages:
        found.setdefault(_name(requirement), Requirement(requirement))
    return found


@pytest.mark.parametrize("image", [WORKER, OPERATOR], ids=["worker", "operator"])
def test_every_installed_package_is_declared(image: Image) -> None:
    assert image.extras, "the image does not install the project itself"
    allowed = declared(image.extras)
    for requirement, _ in image.packages:
        pinned = Requirement(requirement)
        assert _name(requirement) in allowed, f"{requirement} is not declared in pyproject.toml for {image.extras}"
        (version,) = [spec.version for spec in pinned.specifier if spec.operator == "=="]
        assert allowed[_name(requirement)].specifier.contains(version), f"{requirement} is outside pyproject's range"


def test_worker_image_is_cuda_with_pinned_torch_and_no_operator_deps() -> None:
    assert WORKER.extras == {"worker"}
    assert WORKER.base.startswith("nvidia/cuda:") and "runtime" in WORKER.base
    ((torch, options),) = [(r, o) for r, o in WORKER.packages if _name(r) == "torch"]
    assert torch == "torch==2.13.0"
    index = options[options.index("--index-url") + 1]
    assert re.search(r"/whl/cu\d+$", index), f"torch must come from a CUDA index, got {index}"
    cuda = re.search(r"cuda:(\d+)\.(\d+)", WORKER.base)
    assert index.endswith(f"cu{cuda[1]}{cuda[2]}"), "the torch CUDA build must match the base image's CUDA"
    operator_only = declared({"operator"}).keys() - declared({"worker"}).keys()
    assert operator_only and not operator_only & installed(WORKER).keys()


def test_operator_image_has_no_torch_and_no_worker_deps() -> None:
    assert OPERATOR.extras == {"operator"}
    assert "cuda" not in OPERATOR.base
    worker_only = declared({"worker"}).keys() - declared({"operator"}).keys()
    assert "torch" in worker_only and not worker_only & installed(OPERATOR).keys()


@pytest.mark.parametrize("image", [WORKER, OPERATOR], ids=["worker", "operator"])
def test_images_run_helios_as_a_numeric_non_root_user(image: Image) -> None:
    uid = image.user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {image.user!r}: Kubernetes' runAsNonRoot needs a numeric uid"
    assert image.entrypoint[0] in PYPROJECT["project"]["scripts"]
    assert {"pyproject.toml", "README.md", "contracts", "worker"} <= set(image.copied)  # what `pip install .` reads
    assert WORKER.entrypoint == ["helios-worker"]
    assert OPERATOR.entrypoint == ["helios"] and "operator" in OPERATOR.copied
    assert WORKER.cmd == ["serve"]
    assert OPERATOR.cmd[0] == "operator"


def test_dockerignore_keeps_what_the_images_copy() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", "tests"} <= ignored
    for copied in set(WORKER.copied) | set(OPERATOR.copied):
        assert copied not in ignored, f".dockerignore drops {copied}, which a Dockerfile copies"


# The command each image runs, importable when the other image's packages are absent.
_BLOCKING_RUNNER = """
import importlib.abc, sys
blocked = set(sys.argv[1].split(","))
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not in this image)")
sys.meta_path.insert(0, Absent())
cli, *modules = sys.argv[2].split(",")
args = __import__(cli, fromlist=["build_parser"]).build_parser().parse_args(sys.argv[3:])
for module in modules:
    __import__(module)
print("ok")
"""


def _modules_of(distributions: set[str]) -> set[str]:
    return {
        module
        for module, owners in packages_distributions().items()
        if {owner.lower().replace("_", "-") for owner in owners} & distributions
    }


@pytest.mark.parametrize(
    ("image", "modules", "argv"),
    [
        (WORKER, ["helios_worker.cli", "helios_worker.commands.serve", "helios_worker.server.app"], ["serve"]),
        (
            OPERATOR,
            ["helios_operator.cli", "helios_operator.commands.operator", "helios_operator.k8s.handlers"],
            ["operator", "--standalone"],
        ),
    ],
    ids=["worker", "operator"],
)
def test_image_command_imports_without_the_other_images_packages(image: Image, modules, argv) -> None:
    absent = _modules_of(declared({"worker", "operator"}).keys() - installed(image).keys())
    absent |= {f"helios_{source}" for source in ("contracts", "worker", "operator") if source not in image.copied}
    assert absent, "nothing to leave out"
    result = subprocess.run(
        [sys.executable, "-c", _BLOCKING_RUNNER, ",".join(sorted(absent)), ",".join(modules), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_every_worker_module_imports_without_the_operator_package() -> None:
    """The worker image copies no operator code: no module of helios_worker may need it."""
    assert "operator" not in WORKER.copied
    walk = (
        "import pkgutil, helios_worker; "
        "names = [m.name for m in pkgutil.walk_packages(helios_worker.__path__, 'helios_worker.')]; "
        "[__import__(name) for name in names]; print(len(names))"
    )
    runner = _BLOCKING_RUNNER.split("cli, *modules")[0] + walk
    result = subprocess.run(
        [sys.executable, "-c", runner, "helios_operator,kopf,kubernetes"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0 and int(result.stdout.strip()) > 30, result.stderr[-2000:]
