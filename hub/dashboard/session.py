"""Dashboard sessions: the cookie is an HMAC under a key derived from the admin token, so
every hub replica sharing the token accepts it and rotating the token ends every session.
The store remembers only the sessions ended at logout, until they would have expired. The
CSRF token and the one-shot flash message are HMACs under the same key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

SESSION_TTL_S = 12 * 3600


@dataclass(frozen=True)
class Session:
    session_id: str
    csrf: str


@dataclass(frozen=True)
class Flash:
    message: str
    ok: bool


class Sessions:
    def __init__(self, admin_token: str, clock: Callable[[], float] = time.time) -> None:
        self.admin_token = admin_token
        self._key = hmac.new(admin_token.encode(), b"nexus-dashboard-session/1", hashlib.sha256).digest()
        self.clock = clock

    def _mac(self, purpose: str, value: str) -> str:
        return hmac.new(self._key, f"{purpose}\0{value}".encode(), hashlib.sha256).hexdigest()

    def issue(self) -> str:
        body = f"{int(self.clock())}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self._mac('session', body)}"

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie proves, or ``None`` (forged, malformed or expired)."""
        if not cookie or cookie.count(".") != 2:
            return None
        body, _, mac = cookie.rpartition(".")
        if not hmac.compare_digest(mac, self._mac("session", body)):
            return None
        issued = body.partition(".")[0]
        if not issued.isdigit() or self.clock() - int(issued) > SESSION_TTL_S:
            return None
        return Session(body, self._mac("csrf", body))

    @staticmethod
    def expires_at(session: Session) -> float:
        """When its cookie stops being accepted anyway (how long a logout must be remembered)."""
        return int(session.session_id.partition(".")[0]) + SESSION_TTL_S

    def sign_flash(self, message: str, ok: bool) -> str:
        body = base64.urlsafe_b64encode(json.dumps([message, ok]).encode()).decode()
        return f"{body}.{self._mac('flash', body)}"

    def read_flash(self, cookie: str | None) -> Flash | None:
        body, _, mac = (cookie or "").rpartition(".")
        if not body or not hmac.compare_digest(mac, self._mac("flash", body)):
            return None
        message, ok = json.loads(base64.urlsafe_b64decode(body))
        return Flash(str(message), bool(ok))
