"""The first ten minutes (issue 12): `make demo` says what it does at every step, `make test` installs
what the tests it claims to run need, and CI runs exactly the README's test command."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_dry_run(*targets: str, venv: str = "/nonexistent/xmodal-venv") -> list[str]:
    # under `make test` the parent's MAKEFLAGS would add "Entering directory" lines and -w
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    out = subprocess.run(["make", "--no-print-directory", "-n", *targets, f"VENV={venv}"], cwd=ROOT,
                         capture_output=True, text=True, check=True, env=env)
    return out.stdout.splitlines()


def test_venv_creation_announces_each_step_and_installs_exactly_the_lock():
    lines = make_dry_run("venv")
    commands = [i for i, line in enumerate(lines) if not line.startswith("echo ")]
    for i in commands[:-1]:  # every command but the final `touch` comes right after an announcement
        if lines[i].startswith("touch "):
            continue
        assert lines[i - 1].startswith("echo "), f"no announcement before {lines[i]!r}"
    sync = [line for line in lines if " sync " in line]
    assert len(sync) == 1 and "--locked" in sync[0], sync   # uv.lock, refused when out of date
    assert not re.search(r"\s(-q|--quiet)\b", sync[0]), f"the install is silenced: {sync[0]}"


def test_make_test_installs_what_the_e2e_and_browser_tests_need_first():
    lines = make_dry_run("test")
    deps = next(i for i, line in enumerate(lines) if "scripts/install_test_deps.sh" in line)
    pytest_line = next(i for i, line in enumerate(lines) if "-m pytest" in line)
    assert deps < pytest_line
    script = (ROOT / "scripts/install_test_deps.sh").read_text()
    assert "install_label_studio.sh" in script and "chromium" in script
    subprocess.run(["bash", "-n", str(ROOT / "scripts/install_test_deps.sh")], check=True)


def test_ci_runs_the_readme_test_command():
    ci = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert ci[-1] == "make test"
    assert "make test" in (ROOT / "README.md").read_text()


def test_every_phony_target_has_a_recipe():
    text = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", text, re.M).group(1).split()
    for target in phony:
        assert re.search(rf"^{re.escape(target)}:", text, re.M), f".PHONY {target} has no rule"
