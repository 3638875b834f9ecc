"""`fleet-reimage completion bash|zsh`: the scripts complete what the parser accepts.

The bash script is exercised by bash itself (its completion function with COMP_WORDS set, as
bash's programmable completion calls it); zsh, when installed, checks its script's syntax.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FLEET_REIMAGE = [sys.executable, "-m", "fleet_reimage"]


def _script(shell: str) -> str:
    done = subprocess.run(
        [*FLEET_REIMAGE, "completion", shell], capture_output=True, text=True, check=True
    )
    return done.stdout


def _bash_complete(script: Path, *words: str) -> list[str]:
    line = " ".join(words)
    program = (
        f"source {script}\n"
        f"COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; COMP_LINE='{line}'; "
        "COMP_POINT=${#COMP_LINE}\n"
        "_shtab_fleet_reimage\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
    return [w for w in done.stdout.split() if w]


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    path = tmp_path_factory.mktemp("completion") / "fleet-reimage.bash"
    path.write_text(_script("bash"))
    return path


def test_bash_completes_commands(bash_script: Path) -> None:
    assert _bash_complete(bash_script, "fleet-reimage", "st") == ["status"]
    assert set(_bash_complete(bash_script, "fleet-reimage", "re")) == {"resume", "report"}


def test_bash_completes_a_commands_options(bash_script: Path) -> None:
    assert _bash_complete(bash_script, "fleet-reimage", "status", "--out") == ["--output"]
    assert "--dry-run" in _bash_complete(bash_script, "fleet-reimage", "run", "--d")


def test_the_zsh_script_names_every_command_and_is_valid_zsh(tmp_path: Path) -> None:
    script = _script("zsh")
    for command in ("validate", "plan", "run", "resume", "status", "report", "completion"):
        assert re.search(rf"^\s+{command}:'", script, re.M), command
    zsh = shutil.which("zsh")
    if zsh is None:
        return  # the syntax check needs zsh; the names above are checked everywhere
    path = tmp_path / "_fleet-reimage"
    path.write_text(script)
    subprocess.run([zsh, "-n", str(path)], check=True)


def test_version_is_the_installed_distributions() -> None:
    from importlib.metadata import version

    done = subprocess.run([*FLEET_REIMAGE, "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["fleet-reimage", version("fleet-reimage")]
