"""``python -m fleet_reimage.emulator``: the listening line, the port file, clean stops."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import anyio
import pytest
from emulator_helpers import BASE_FLEET

from fleet_reimage.emulator import emulator_main
from fleet_reimage.emulator.server import exposure_warning

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.anyio
async def test_command_line_emulator_serves_until_terminated(tmp_path: Path) -> None:
    fleet_path = tmp_path / "fleet.yaml"
    fleet_path.write_text(BASE_FLEET, encoding="utf-8")
    port_file = tmp_path / "port"
    command = [
        sys.executable,
        "-m",
        "fleet_reimage.emulator",
        "--fleet",
        str(fleet_path),
        "--port",
        "0",
        "--port-file",
        str(port_file),
    ]
    with anyio.fail_after(30):
        async with await anyio.open_process(command, cwd=REPO) as process:
            assert process.stdout is not None and process.stderr is not None
            line = b""
            while not line.endswith(b"\n"):
                line += await process.stdout.receive(1)
            text = line.decode().rstrip("\n")
            prefix = "Batch emulator listening on http://127.0.0.1:"
            assert text.startswith(prefix), text
            port = int(text[len(prefix) :])
            assert port > 0
            assert port_file.read_text().strip() == str(port)
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/_emulator/stats?nodes=false") as response,
            ):
                stats = await response.json()
            assert set(stats["pools"]) == {"cs", "vm", "odd"}
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
            rest = b""
            async for chunk in process.stdout:
                rest += chunk
            assert rest == b""  # exactly one line
            errors = b""
            async for chunk in process.stderr:
                errors += chunk
            assert b"Traceback" not in errors


def test_bad_fleet_file_exits_2_with_the_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet_path = tmp_path / "bad.yaml"
    fleet_path.write_text(
        BASE_FLEET.replace("running_tasks: 2", "running_taks: 2"), encoding="utf-8"
    )
    assert emulator_main(["--fleet", str(fleet_path)]) == 2
    err = capsys.readouterr().err
    assert f"{fleet_path}:8:5: error: pools[0].running_taks: unknown key" in err
    assert "did you mean 'running_tasks'?" in err and "Traceback" not in err
    assert emulator_main(["--fleet", str(tmp_path / "missing.yaml")]) == 2
    assert emulator_main(["--bogus"]) == 2


def test_bad_fleet_file_from_a_subprocess_has_no_traceback(tmp_path: Path) -> None:
    fleet_path = tmp_path / "bad.yaml"
    fleet_path.write_text("account: [1]\npools: 3\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "fleet_reimage.emulator", "--fleet", str(fleet_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "bad.yaml:1:10: error: account: expected a mapping, got a list" in done.stderr
    assert "bad.yaml:2:8: error: pools: expected a list, got a number" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_a_fleet_file_with_cloud_service_pools_exits_2_with_what_to_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet_path = tmp_path / "old.yaml"
    fleet_path.write_text(
        BASE_FLEET.replace("    reimage: refused", "    configuration: cloudServiceConfiguration"),
        encoding="utf-8",
    )
    assert emulator_main(["--fleet", str(fleet_path)]) == 2
    err = capsys.readouterr().err
    assert f"{fleet_path}:11:20: error: pools[1].configuration: cloud-service pools" in err
    assert "remove this key" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("host", "warned"),
    [
        ("127.0.0.1", False),
        ("::1", False),
        ("localhost", False),
        ("0.0.0.0", True),
        ("::", True),
        ("10.1.2.3", True),
        ("batch-rehearsal.example.com", True),
    ],
)
def test_a_host_other_than_loopback_is_warned_about(host: str, warned: bool) -> None:
    assert (exposure_warning(host) is not None) == warned


def test_the_warning_reaches_stderr_before_anything_binds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A missing fleet file stops the command before it listens: nothing is exposed here.
    assert emulator_main(["--fleet", str(tmp_path / "none.yaml"), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0 makes the emulator reachable from the network" in err
