"""Hub settings (validated once at start; everything else gets plain values)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

DEFAULT_PORT = 8700


class HubSettings(BaseModel):
    data_dir: Path
    #: ``sqlite:///PATH`` or ``redis://HOST:PORT/DB``; default: ``hub.sqlite3`` in the data dir
    store: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    #: a node is shown offline after this much silence
    offline_after_s: float = Field(30.0, gt=0)
    #: heartbeat / poll interval the hub asks edges to use
    poll_interval_s: float = Field(5.0, gt=0)
    max_upload_bytes: int = Field(64 << 20, gt=0)
    enroll_token_ttl_s: float = Field(24 * 3600.0, gt=0)

    def store_url(self) -> str:
        return self.store or f"sqlite:///{self.data_dir / 'hub.sqlite3'}"
