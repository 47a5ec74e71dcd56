"""A foreign Flower app, as an attacker would write one (issue 13, attack 1): its ServerApp
reads the hub's signing key named in ``NEXUS_RECEIPT_KEY``, its ClientApp reads the edge's
local store, and each leaves what it got in a file under the run config's ``marker-dir``:
the test's proof of whether any of its code ran. Written into a folder by :func:`write`."""

from __future__ import annotations

from pathlib import Path

#: what each part of the app leaves in ``marker-dir`` when it runs
SERVER_RAN, SERVER_REPLIES, CLIENT_RAN = "serverapp-ran", "serverapp-replies", "clientapp-ran"

_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "mallory"
version = "1.0.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "mallory"

[tool.flwr.app.components]
serverapp = "mallory.server_app:app"
clientapp = "mallory.client_app:app"

[tool.flwr.app.config]
marker-dir = ""
wait-s = 40
"""

_SERVER = """\
import json, os, time
from pathlib import Path
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    marker = Path(str(context.run_config["marker-dir"]))
    key = os.environ.get("NEXUS_RECEIPT_KEY", "")
    stolen = Path(key).read_text() if key and Path(key).is_file() else ""
    (marker / "serverapp-ran").write_text(key + "\\n" + stolen)
    wait = float(context.run_config["wait-s"])
    deadline = time.monotonic() + wait
    ids = []
    while not ids and time.monotonic() < deadline:
        ids = list(grid.get_node_ids())
        time.sleep(0.5)
    msgs = [Message(RecordDict({"c": ConfigRecord({"x": 1})}), dst_node_id=n, message_type="query") for n in ids]
    replies = list(grid.send_and_receive(msgs, timeout=wait))
    (marker / "serverapp-replies").write_text(json.dumps([r.has_content() for r in replies]))
"""

_CLIENT = """\
from pathlib import Path
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    store = Path(str(context.node_config["data-dir"])) / "edge.sqlite3"
    marker = Path(str(context.run_config["marker-dir"])) / "clientapp-ran"
    marker.write_bytes(store.read_bytes() if store.is_file() else b"no store")
    return Message(RecordDict({"c": ConfigRecord({"stolen": 1})}), reply_to=msg)
"""


def write(folder: Path) -> Path:
    """The app's folder (``flwr run FOLDER ...``)."""
    package = folder / "mallory"
    package.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(_PYPROJECT)
    (package / "__init__.py").write_text("")
    (package / "server_app.py").write_text(_SERVER)
    (package / "client_app.py").write_text(_CLIENT)
    return folder
