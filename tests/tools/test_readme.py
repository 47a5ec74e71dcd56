"""README "Using it", as a newcomer types it: every ```bash block of the section, read from
README.md itself, run in order in one shell at the root of a fresh clone (here: a temp dir
whose entries link to this checkout's, beside ``shared/data``), against real processes.

Nothing in the commands is rewritten. The shell runs with ``-e -o pipefail`` and curl reads
a ``.curlrc`` with ``fail-with-body``, so a failing command or a 4xx/5xx answer fails the
test where a reader would have seen an error. The servers the README starts in the
background are stopped by its own ``kill $(jobs -p)``; whatever is left (after a failure)
is killed with the shell's process group.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.env import ROOT, SHARED_DATA, need

README = ROOT / "README.md"
#: the ports the README names: edge, second edge, hub, the hub's SuperLink
PORTS = (8000, 8010, 8700, 9092)


def using_it_commands(readme: str) -> list[str]:
    """The ```bash blocks between ``## Using it`` and the next ``## `` heading, in order."""
    section = readme.split("\n## Using it\n", 1)[1].split("\n## ", 1)[0]
    return [block.strip("\n") for block in re.findall(r"^```bash\n(.*?)^```$", section, flags=re.S | re.M)]


def test_the_section_names_the_real_ports_files_and_versions() -> None:
    script = "\n".join(using_it_commands(README.read_text(encoding="utf-8")))
    assert ":8080" not in README.read_text(encoding="utf-8")
    assert "http://127.0.0.1:8700" in script and "-d @docs/examples/session.json" in script
    assert "> token.txt" in script and "--enroll-token-file token.txt" in script
    assert script.index("nexus hub models push trained/funnel/1") < script.index("nexus hub models assign funnel 2")
    assert script.index("--wait") < script.index("nexus hub models promote funnel 3")
    assert script.startswith(". .venv/bin/activate") and "nexus demo --standalone" in script
    assert all(
        block.splitlines()[-1].startswith("kill $(jobs -p)")
        for block in using_it_commands(README.read_text())
        if "&\n" in block
    )


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _fresh_clone(tmp: Path) -> Path:
    """``tmp/main`` with a link per top-level entry of the checkout (and its .venv), ``tmp/shared/data``."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    clone = tmp / "main"
    clone.mkdir()
    for name in sorted({p.split("/", 1)[0] for p in listed} | {".venv"}):
        if (ROOT / name).exists():
            (clone / name).symlink_to(ROOT / name)
    (tmp / "shared").mkdir()
    (tmp / "shared" / "data").symlink_to(SHARED_DATA)
    return clone


def _stop_group(proc: subprocess.Popen[str]) -> None:
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def _shipped_bundles() -> set[Path]:
    return {p.relative_to(ROOT) for p in (ROOT / "models" / "bundles").rglob("*")}


@pytest.mark.slow
def test_using_it_works_as_typed(tmp_path: Path) -> None:
    need(shutil.which("curl") is not None, "curl is not installed (apt-get install curl)")
    need(SHARED_DATA.is_dir(), f"the data sets are not in {SHARED_DATA}")
    with _machine_lock():
        _run_the_section(tmp_path)


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    """The README names fixed ports: two runs of this test on one machine take turns."""
    with open(Path(tempfile.gettempdir()) / "nexus-readme-test.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run_the_section(tmp_path: Path) -> None:
    busy = [port for port in PORTS if not _free(port)]
    assert not busy, f"the README's ports {busy} are taken on this machine; free them to run its commands"
    script = "\n".join(using_it_commands(README.read_text(encoding="utf-8")))
    clone = _fresh_clone(tmp_path)
    (tmp_path / "curl").mkdir()
    (tmp_path / "curl" / ".curlrc").write_text("fail-with-body\nshow-error\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEXUS_", "VIRTUAL_ENV"))}
    env.update(HOME=str(tmp_path / "home"), XDG_DATA_HOME=str(tmp_path / "xdg"), CURL_HOME=str(tmp_path / "curl"))
    before = _shipped_bundles()

    proc = subprocess.Popen(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: every server it starts can be found and stopped
    )
    try:
        out, _ = proc.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        out, _ = proc.communicate()
        pytest.fail(f"the README's commands did not finish in 8 minutes:\n{out[-6000:]}")
    finally:
        _stop_group(proc)

    assert proc.returncode == 0, f"a README command failed (exit {proc.returncode}):\n{out[-6000:]}"
    assert '{"ready":true}' in out and '"probabilities"' in out and '"model":"emotion"' in out.replace(" ", "")
    assert "201 " * 40 in out  # every labelled session stored
    assert re.search(r"run r-\w+ \(funnel, fedavgm, flower \d+\): finished -> version 3", out), out[-4000:]
    assert re.search(r"model funnel: stable version 3", out)
    assert "experiment checkout (running, thompson)" in out
    assert (clone / "trained" / "funnel" / "1").is_dir() and (clone / "openapi.json").stat().st_size > 1000
    # the commands wrote into the clone only: the checkout's shipped bundles are as they were
    assert _shipped_bundles() == before
    assert all(_free(port) for port in PORTS), "a server the README started is still running"
