"""Hub settings (validated once at start; everything else gets plain values)."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import BaseModel, Field, field_validator, model_validator

from nexus_service.rate_limit import WRONG_CREDENTIALS_BURST, WRONG_CREDENTIALS_PER_S
from nexus_wire.datadir import HubDataDir

DEFAULT_PORT = 8700


class HubSettings(BaseModel):
    data_dir: Path
    #: ``sqlite:///PATH`` or ``redis://HOST:PORT/DB``; default: ``hub.sqlite3`` in the data dir
    store: str | None = None
    #: where bundle archives go (hub/blobs/): ``file:///PATH`` or ``s3://BUCKET/PREFIX?endpoint_url=URL``;
    #: default: ``blobs`` in the data dir
    blobs: str | None = Field(None, min_length=1, max_length=2000)
    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    #: a node is shown offline after this much silence
    offline_after_s: float = Field(30.0, gt=0)
    #: heartbeat / poll interval the hub asks edges to use
    poll_interval_s: float = Field(5.0, gt=0)
    max_upload_bytes: int = Field(64 << 20, gt=0)
    enroll_token_ttl_s: float = Field(24 * 3600.0, gt=0)

    # -- server bounds (nexus_service/serving.py; docs/deploy.md) -------------------------
    #: open connections at once; beyond: 503 with Retry-After
    max_connections: int = Field(256, ge=1, le=1_000_000)
    #: seconds a client has to send a request's headers before the connection is closed
    header_timeout_s: float = Field(10.0, gt=0, le=3600)
    #: seconds a client has to send a whole body (408 beyond): room for a bundle of max_upload_bytes
    body_deadline_s: float = Field(60.0, gt=0, le=3600)

    # -- rate limits per client address (nexus_service/rate_limit.py; docs/hub.md) ---------
    #: wrong credentials (a bearer token on the API, the admin token at the dashboard login):
    #: this many at once, then ``auth_failure_per_s`` a second; beyond it 429 with Retry-After
    auth_failure_burst: int = Field(WRONG_CREDENTIALS_BURST, ge=1, le=1_000_000)
    auth_failure_per_s: float = Field(WRONG_CREDENTIALS_PER_S, gt=0, le=1_000_000)
    #: enrollments with an unknown, used or expired token, the same way
    enroll_failure_burst: int = Field(20, ge=1, le=1_000_000)
    enroll_failure_per_s: float = Field(1.0, gt=0, le=1_000_000)

    # -- funnels (hub/api/funnels.py) -----------------------------------------------------
    #: seconds between Thompson weight updates of running ``thompson`` experiments
    thompson_interval_s: float = Field(60.0, gt=0)
    #: results withhold counts (and their complements) below this many visitors
    results_min_group_size: int = Field(10, ge=0)
    #: Laplace noise scale added to released counts (0: none); see docs/funnels.md
    results_noise_scale: float = Field(0.0, ge=0)

    # -- federated rounds (hub/rounds.py); neither port nor address: rounds are off --------
    #: run a Flower SuperLink as the hub's child; SuperNodes connect on ``host``:this port,
    #: to its Fleet gateway (hub/fleet_gateway.py): the SuperLink itself listens on loopback
    superlink_port: int | None = Field(None, ge=1, le=65535)
    #: TLS of that port (the gateway's, and the loopback SuperLink's behind it): the CA, and a
    #: certificate it signed whose names include every address SuperNodes use and 127.0.0.1
    superlink_ssl_ca_certfile: Path | None = None
    superlink_ssl_certfile: Path | None = None
    superlink_ssl_keyfile: Path | None = None
    #: only SuperNodes whose public key was registered (``flwr supernode register``) may join; needs TLS
    superlink_supernode_auth: bool = False
    #: ``HOST:PORT`` of an external SuperLink (then none is started)
    superlink: str | None = None
    #: CA certificate of the external SuperLink's TLS (None: insecure, loopback only)
    superlink_root_cert: Path | None = None
    #: the address edges are told to reach the SuperLink at (default: host:superlink_port)
    superlink_public: str | None = None
    #: run folders (base bundle, summary, arrays); an external SuperLink's ServerApp must
    #: see them at the same path (default: ``rounds`` in the data dir)
    rounds_dir: Path | None = None
    #: held-out files a federated candidate is evaluated on, per model (optional)
    eval_data: dict[str, Path] = {}
    rounds_watch_interval_s: float = Field(2.0, gt=0)

    # -- replicas (hub/lease.py, hub/driver.py; docs/deploy.md) ---------------------------
    #: where the other replicas reach this one (they forward round commands to the replica that
    #: drives rounds); default ``http://HOST:PORT``, this host's address for a wildcard --host
    advertise_url: str | None = Field(None, pattern=r"^https?://[^\s/]+$")
    #: seconds the rounds driver's lease lasts unless renewed (every third of it): how long the
    #: replicas wait for a driver that stopped answering before another takes over
    lease_ttl_s: float = Field(15.0, ge=1, le=600)

    @field_validator(
        "data_dir",
        "rounds_dir",
        "superlink_root_cert",
        "superlink_ssl_ca_certfile",
        "superlink_ssl_certfile",
        "superlink_ssl_keyfile",
    )
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # the SuperLink and its ServerApps run in another working directory: a relative
        # ``--data-dir hub-data`` would name another folder there
        return None if value is None else value.absolute()

    @field_validator("eval_data")
    @classmethod
    def _absolute_eval_data(cls, value: dict[str, Path]) -> dict[str, Path]:
        return {model: path.absolute() for model, path in value.items()}

    @model_validator(mode="after")
    def _tls_complete(self) -> HubSettings:
        tls = (self.superlink_ssl_ca_certfile, self.superlink_ssl_certfile, self.superlink_ssl_keyfile)
        if any(tls) and not all(tls):
            raise ValueError("SuperLink TLS needs the CA, the certificate and the key file")
        if self.superlink_supernode_auth and not all(tls):
            raise ValueError("SuperNode authentication needs the SuperLink's TLS (Flower refuses it in plain HTTP)")
        return self

    def superlink_tls(self) -> tuple[Path, Path, Path] | None:
        """(CA, certificate, key) of the hub's own SuperLink port, or None for plain HTTP."""
        ca, cert, key = self.superlink_ssl_ca_certfile, self.superlink_ssl_certfile, self.superlink_ssl_keyfile
        return (ca, cert, key) if ca and cert and key else None

    def rounds_path(self) -> Path:
        return self.rounds_dir or HubDataDir(self.data_dir).rounds

    def federation(self) -> bool:
        return self.superlink_port is not None or self.superlink is not None

    def superlink_address(self) -> str | None:
        """What edges' SuperNodes connect to."""
        if self.superlink_public or self.superlink:
            return self.superlink_public or self.superlink
        return f"{self.host}:{self.superlink_port}" if self.superlink_port is not None else None

    def replica_url(self) -> str:
        """Where the other replicas reach this one (``advertise_url``)."""
        if self.advertise_url:
            return self.advertise_url
        host = self.host
        if host in ("", "0.0.0.0", "::", "[::]"):
            try:
                host = socket.gethostbyname(socket.gethostname())
            except OSError:
                host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    def store_url(self) -> str:
        return self.store or f"sqlite:///{HubDataDir(self.data_dir).store}"

    def blobs_url(self) -> str:
        return self.blobs or HubDataDir(self.data_dir).blobs.as_uri()
