"""The container images' Dockerfiles, checked without Docker (the project's machines
have no Docker daemon; docs/containers.md says so): they install the project the way
the Makefile does, copy everything pip needs, pin the same torch, run the project's
own commands as a non-root user, and keep the data directory on a volume named by a
real setting."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

from broker.settings import SCHEMA as BROKER_SCHEMA
from worker.config import SCHEMA as WORKER_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
IMAGES = {  # Dockerfile -> (program, extras, the setting that holds its data)
    "broker.Dockerfile": ("broker", set(), ("BROKER_DATA_DIR", BROKER_SCHEMA)),
    "worker.Dockerfile": ("worker", {"worker"}, ("WORKER_STATE_DIR", WORKER_SCHEMA)),
}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments left out."""
    text = re.sub(r"\\\n", " ", "\n".join(
        line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")))
    return [(parts[0].upper(), parts[1] if len(parts) > 1 else "")
            for line in text.splitlines() if line.strip()
            for parts in [line.strip().split(None, 1)]]


def pip_steps(commands: str) -> list[list[str]]:
    """The `python -m venv` and `pip install` commands of a shell line, as argv lists."""
    steps = []
    for command in re.split(r"&&|;", commands):
        argv = shlex.split(command)
        if "venv" in argv or "install" in argv and "pip" in argv:
            steps.append([a for a in argv if a not in ("-q", "--no-cache-dir")])
    return steps


def makefile_install() -> list[list[str]]:
    """The Makefile's install recipe (the $(STAMP) target), as argv lists."""
    text = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^\$\(STAMP\):.*\n((?:\t.*\n)+)", text, re.M).group(1)
    return [step for line in recipe.splitlines() for step in pip_steps(line.strip())]


def _extras(target: str) -> tuple[str, set[str]]:
    found = re.fullmatch(r"(\.)(?:\[([\w,]+)\])?", target)
    assert found, target
    return found.group(1), set(filter(None, (found.group(2) or "").split(",")))


def _pin(requirement_name: str) -> str:
    return next(d for d in PYPROJECT["project"]["dependencies"]
                + [d for extra in PYPROJECT["project"].get("optional-dependencies", {}).values()
                   for d in extra]
                if re.match(rf"{requirement_name}\b", d)).replace(" ", "")


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_the_image_installs_like_the_makefile(dockerfile):
    program, extras, _ = IMAGES[dockerfile]
    steps = instructions(ROOT / "docker" / dockerfile)
    runs = [step for kind, args in steps if kind == "RUN" for step in pip_steps(args)]
    make = makefile_install()
    # The Makefile: a venv, pip upgraded, then the project editable with (at least) dev,
    # and torch at the version whose CPU wheel is on this project's machines.
    assert [s[1:] for s in make[:2]] == [["-m", "venv", "$(VENV)"],
                                         ["-m", "pip", "install", "--upgrade", "pip"]]
    install = [a.strip("'") for a in make[2]]
    assert "dev" in _extras(install[install.index("-e") + 1])[1]
    torch_pin = [a for a in install if a.startswith("torch==")]
    assert torch_pin and _pin("torch").startswith("torch>=")
    # The image: the same steps into /opt/venv, the project not editable and without dev.
    assert runs[0] == ["python3", "-m", "venv", "/opt/venv"]
    assert runs[1] == ["/opt/venv/bin/python", "-m", "pip", "install", "--upgrade", "pip"]
    project = runs[-1]
    assert project[:4] == ["/opt/venv/bin/python", "-m", "pip", "install"]
    assert "-e" not in project
    assert _extras(project[-1]) == (".", extras)
    # Any other install is torch alone, at the Makefile's pin (the CUDA build from its index).
    for other in runs[2:-1]:
        assert [a for a in other if "==" in a] == torch_pin
    # What pip needs is copied: pyproject, its readme, every package it includes.
    copied = {src for kind, args in steps if kind == "COPY" and not args.startswith("--from")
              for src in args.split()[:-1]}
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]
                ["include"]}
    assert copied == {"pyproject.toml", PYPROJECT["project"]["readme"], *packages}
    assert f'{program} = "{program}.cli:main"' in (ROOT / "pyproject.toml").read_text()
    assert ("ENTRYPOINT", f'["{program}"]') in steps


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_the_image_is_python_3_11_or_newer_non_root_with_its_data_on_a_volume(dockerfile):
    program, _, (variable, schema) = IMAGES[dockerfile]
    steps = instructions(ROOT / "docker" / dockerfile)
    args = dict(a.split("=", 1) for kind, a in steps if kind == "ARG" and "=" in a)
    base = args.get("PYTHON_IMAGE") or args["BASE"]
    version = re.fullmatch(r"python:(\d+)\.(\d+)-slim", base)
    assert version and (int(version[1]), int(version[2])) >= (3, 11), base
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    users = [a for kind, a in steps if kind == "USER"]
    assert users == [program]  # one user, the image's own, never root
    after_user = steps[steps.index(("USER", program)):]
    assert not [a for kind, a in after_user if kind in ("RUN", "COPY")]
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for kind, a in steps if kind == "ENV")))
    known = {o.env for o in schema.options if o.env}
    assert {k for k in env if k != "PATH"} <= known, set(env) - known
    assert ("VOLUME", env[variable]) in steps
    assert any(kind == "RUN" and a.startswith("useradd") and f" {program} " in a
               for kind, a in steps)


def test_the_build_context_holds_only_what_the_images_copy():
    lines = [x for x in (ROOT / ".dockerignore").read_text().splitlines()
             if x and not x.startswith("#")]
    assert lines[0] == "*"
    allowed = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    assert allowed == {"pyproject.toml", PYPROJECT["project"]["readme"], "broker", "worker"}
