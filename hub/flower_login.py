"""``nexus hub flower-login``: a ``FLWR_HOME`` from which Flower's own CLI reads the hub's runs.

The hub's Fleet gateway (hub/fleet_gateway.py) forwards the read-only Control calls of
``flwr ls``, ``flwr log`` and ``flwr supernode ls`` to whoever sends the hub's admin token as
``Authorization: Bearer``. Flower's CLI sends that header from its credential store when the
connection's host is recorded there with authentication type "oidc" and a token pair
(flwr/cli/auth_plugin/oidc_cli_plugin.py); this command writes the connection and that entry
with Flower's own classes, so their file formats stay Flower's. The refresh token is a
placeholder: the gateway never answers 401, so the CLI never tries to refresh.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

from hub.client import resolve_token
from hub.superlink import CONNECTION
from models.output import emit

DEFAULT_GATEWAY = "127.0.0.1:9092"
#: stored as the OIDC refresh token Flower requires beside the access token; never sent
_NO_REFRESH = b"none"


@contextlib.contextmanager
def _flwr_home(home: Path) -> Iterator[None]:
    """Flower's config helpers find their folder in ``$FLWR_HOME`` at call time."""
    before = os.environ.get("FLWR_HOME")
    os.environ["FLWR_HOME"] = str(home)
    try:
        yield
    finally:
        if before is None:
            del os.environ["FLWR_HOME"]
        else:
            os.environ["FLWR_HOME"] = before


def write_login(home: Path, address: str, token: str, root_cert: Path | None = None) -> dict[str, str]:
    """``[superlink.hub]`` at ``address`` in ``home/config.toml`` (other connections kept) and
    ``token`` in Flower's credential store for that host; what was written, for the operator."""
    # Flower costs a second of imports only this command pays
    from flwr.cli.constant import ACCESS_TOKEN_STORE_KEY, AUTHN_TYPE_STORE_KEY, REFRESH_TOKEN_STORE_KEY
    from flwr.cli.flower_config import write_superlink_connection
    from flwr.cli.typing import SuperLinkConnection
    from flwr.common.constant import AuthnType
    from flwr.supercore.credential_store import FileCredentialStore
    from flwr.supercore.credential_store.file_credential_store import CREDENTIAL_FILE_PATH

    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    certificate = None if root_cert is None else str(root_cert.resolve())
    connection = SuperLinkConnection(CONNECTION, address, root_certificates=certificate, insecure=certificate is None)
    # Flower announces a config file it creates on stdout; --json output stays one line
    with _flwr_home(home), contextlib.redirect_stdout(io.StringIO()):
        write_superlink_connection(connection)
    store = FileCredentialStore(home / CREDENTIAL_FILE_PATH.name)
    store.set(AUTHN_TYPE_STORE_KEY % address, AuthnType.OIDC.encode())
    store.set(ACCESS_TOKEN_STORE_KEY % address, token.encode())
    store.set(REFRESH_TOKEN_STORE_KEY % address, _NO_REFRESH)
    return {"flwr_home": str(home), "connection": CONNECTION, "address": address, "credentials": str(store.file_path)}


def _login(args: argparse.Namespace) -> int:
    token = resolve_token(args.token, args.data_dir)
    root_cert = None if args.root_cert is None else Path(args.root_cert)
    written = write_login(Path(args.flwr_home), args.superlink, token, root_cert)
    emit(
        written,
        args.json,
        f"wrote connection {CONNECTION!r} ({args.superlink}) and the admin token to {written['flwr_home']}",
        f"try: FLWR_HOME={written['flwr_home']} flwr ls {CONNECTION}",
    )
    return 0


def register(hsub: argparse._SubParsersAction) -> None:
    login = hsub.add_parser(
        "flower-login",
        help="let Flower's CLI (flwr ls / log / supernode ls) read the hub's runs through its Fleet gateway",
    )
    login.add_argument("--flwr-home", required=True, metavar="DIR", help="the FLWR_HOME to write (created if missing)")
    login.add_argument(
        "--superlink",
        default=DEFAULT_GATEWAY,
        metavar="HOST:PORT",
        help=f"the hub's Fleet gateway: its host and --superlink-port (default {DEFAULT_GATEWAY})",
    )
    login.add_argument(
        "--root-cert",
        metavar="PATH",
        help="CA certificate of the gateway's TLS, its --superlink-ssl-ca-certfile (default: none, plain HTTP)",
    )
    login.add_argument("--token", help="admin token (default: $NEXUS_HUB_TOKEN, then DATA_DIR/admin.token)")
    login.add_argument(
        "--data-dir", help="the hub's data dir: read the admin token from it (default: none; see --token)"
    )
    login.add_argument("--json", action="store_true", help="print what was written as one line of JSON")
    login.set_defaults(func=_login)
