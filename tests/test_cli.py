"""The xmodal command line: every command documents examples, and errors a user can fix come
without a traceback and with a non-zero exit."""

import os
import subprocess
import sys

import pytest

from xmodal.cli.main import COMMANDS, build_parser


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_help_has_examples(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    help_text = sub.format_help()
    assert "example" in help_text.lower()
    assert f"xmodal {command}" in help_text


def run_cli(*args, **env):
    return subprocess.run([sys.executable, "-m", "xmodal.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=120)


def test_redis_down_is_a_clear_error():
    r = run_cli("status", REDIS_URL="redis://127.0.0.1:1/0")
    assert r.returncode == 1
    assert "cannot reach Redis" in r.stderr and "Traceback" not in r.stderr


def test_missing_data_folder_is_a_clear_error(tmp_path):
    r = run_cli("eval", "--dataset", "folder", "--data", str(tmp_path / "nope"), "--n", "5")
    assert r.returncode == 1
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr
