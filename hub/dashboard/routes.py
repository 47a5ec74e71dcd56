"""The operator dashboard: server-rendered pages under ``/dashboard``, behind the admin token.

Login exchanges the admin token for a session cookie (HttpOnly, SameSite=Strict; see
:mod:`hub.dashboard.session`); wrong tokens spend the address's wrong-credential tokens
(``Hub.auth_failures``, shared with the API), and logout ends the session in the store.
Each form carries the session's CSRF token, which every POST must echo, from the hub's own
origin. Pages render with Jinja2 (autoescaping on)
from :mod:`hub.dashboard.views`; chart data travels in ``<script type="application/json">``
blocks, so the CSP can forbid inline scripts.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from hub.auth import AuthError
from hub.dashboard.session import SESSION_TTL_S, Session, Sessions
from hub.dashboard.views import funnels_view, models_view, nbytes, nodes_view, number, privacy_view, rounds_view
from hub.driver import forward_to_driver
from hub.registry import DEFAULT_CANARY_PERCENT
from hub.schemas import StartRun
from hub.state import Hub, spend_failure, store_call
from models.errors import NexusError
from nexus_service.http import offload, read_body
from nexus_service.rate_limit import RateLimited, client_address
from nexus_wire.runconfig import RunConfig

HERE = Path(__file__).resolve().parent
PREFIX = "/dashboard"
COOKIE = "nexus_dashboard"
FLASH_COOKIE = "nexus_dashboard_flash"
FORM_LIMIT = 8 << 10
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    # not no-referrer: browsers then send "Origin: null" on our own form posts
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
NAV = [("nodes", "Nodes"), ("rounds", "Rounds"), ("models", "Models"), ("funnels", "Funnels"), ("privacy", "Privacy")]


class FormError(NexusError):
    """A dashboard form is malformed (shown to the operator as a flash message)."""


async def _form(request: Request) -> dict[str, str]:
    raw = await read_body(request, FORM_LIMIT)
    return {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True).items()}


def _same_origin(request: Request) -> bool:
    """Belt and braces beside SameSite=Strict: a POST's Origin, when sent, must be us."""
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.url.scheme}://{request.url.netloc}"


# -- the routes ---------------------------------------------------------------------------
Page = Callable[[Request, Session], Awaitable[Response]]


class Dashboard:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._sessions = Sessions(hub.auth.admin_token, hub.clock)
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
        self.env.filters.update(number=number, bytes=nbytes)

    @property
    def sessions(self) -> Sessions:
        """Keyed by the admin token: a rotated token ends every session."""
        if self._sessions.admin_token != self.hub.auth.admin_token:
            self._sessions = Sessions(self.hub.auth.admin_token, self.hub.clock)
        return self._sessions

    async def _session(self, request: Request) -> Session | None:
        session = self.sessions.read(request.cookies.get(COOKIE))
        if session is None or await store_call(self.hub.store, self.hub.store.session_ended, session.session_id):
            return None
        return session

    def render(
        self, request: Request, template: str, session: Session | None, status: int = 200, **context: Any
    ) -> Response:
        flash = self.sessions.read_flash(request.cookies.get(FLASH_COOKIE))
        html = self.env.get_template(template).render(
            prefix=PREFIX, nav=NAV, csrf=session.csrf if session else "", flash=flash, **context
        )
        response = HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
        if flash:
            response.delete_cookie(FLASH_COOKIE, path=PREFIX, httponly=True, samesite="strict")
        return response

    def page(self, handler: Page) -> Callable[[Request], Awaitable[Response]]:
        """A session is required: GETs redirect to the login form, POSTs answer 401.
        POSTs must carry the session's CSRF token and come from our own origin."""

        async def run(request: Request) -> Response:
            session = await self._session(request)
            if session is None:
                if request.method != "GET":
                    return JSONResponse(
                        {"error": "log in to the dashboard first"}, status_code=401, headers=SECURITY_HEADERS
                    )
                return RedirectResponse(f"{PREFIX}/login", status_code=303, headers=SECURITY_HEADERS)
            if request.method == "POST":
                form = await _form(request)
                if not _same_origin(request) or not hmac.compare_digest(form.get("csrf", ""), session.csrf):
                    return JSONResponse(
                        {"error": "missing or wrong CSRF token; reload the page"},
                        status_code=403,
                        headers=SECURITY_HEADERS,
                    )
                request.state.form = form
            return await handler(request, session)

        return run

    def back(self, request: Request, where: str, message: str, ok: bool = True) -> Response:
        """Post/redirect/get; the outcome travels in a signed one-shot cookie, so a crafted
        link cannot put words on the operator's screen."""
        response = RedirectResponse(f"{PREFIX}/{where}", status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(
            FLASH_COOKIE,
            self.sessions.sign_flash(message, ok),
            max_age=60,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    # -- login ----------------------------------------------------------------------------
    async def login_form(self, request: Request) -> Response:
        return self.render(request, "login.html", None, title="Log in")

    async def login(self, request: Request) -> Response:
        if not _same_origin(request):
            return JSONResponse({"error": "cross-origin login refused"}, status_code=403, headers=SECURITY_HEADERS)
        address = client_address(request)
        try:
            self.hub.auth_failures.check(address)
        except RateLimited as exc:
            refused = self.render(request, "login.html", None, status=429, title="Log in", login_error=exc.message)
            refused.headers["Retry-After"] = str(exc.retry_after_s)
            return refused
        token = (await _form(request)).get("token", "").strip()
        try:
            principal = await store_call(self.hub.store, self.hub.auth.identify, f"Bearer {token}")
        except AuthError:
            principal = None
        if principal is None or principal.role != "admin":
            await spend_failure(self.hub, self.hub.auth_failures, address)
            return self.render(
                request,
                "login.html",
                None,
                status=401,
                title="Log in",
                login_error="That is not this hub's admin token.",
            )
        response = RedirectResponse(f"{PREFIX}/nodes", status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(
            COOKIE,
            self.sessions.issue(),
            max_age=SESSION_TTL_S,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request, session: Session) -> Response:
        expires_at = self.sessions.expires_at(session)
        await store_call(self.hub.store, self.hub.store.end_session, session.session_id, expires_at, self.hub.clock())
        response = RedirectResponse(f"{PREFIX}/login", status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")
        return response

    # -- pages ----------------------------------------------------------------------------
    async def index(self, request: Request, session: Session) -> Response:
        return RedirectResponse(f"{PREFIX}/nodes", status_code=303, headers=SECURITY_HEADERS)

    async def nodes(self, request: Request, session: Session) -> Response:
        now = self.hub.clock()
        rows = await store_call(self.hub.store, nodes_view, self.hub, now)
        online = sum(r["online"] for r in rows)
        return self.render(
            request,
            "nodes.html",
            session,
            title="Nodes",
            page="nodes",
            rows=rows,
            online=online,
            offline_after_s=self.hub.settings.offline_after_s,
        )

    async def models(self, request: Request, session: Session) -> Response:
        models = await store_call(self.hub.store, models_view, self.hub)
        return self.render(
            request,
            "models.html",
            session,
            title="Models",
            page="models",
            models=models,
            canary_percent=DEFAULT_CANARY_PERCENT,
        )

    async def promote(self, request: Request, session: Session) -> Response:
        form, model = request.state.form, request.path_params["model"]
        stage = form.get("stage", "")
        try:
            if stage not in ("stable", "canary"):
                raise FormError(f"unknown stage {stage!r}")
            percent = int(form["percent"]) if form.get("percent") else None
            # the promotion gate refuses a worse candidate unless the operator confirmed "promote anyway"
            force = form.get("force") == "1"
            action = await store_call(
                self.hub.store, self.hub.registry.promote, model, form.get("version", ""), stage, percent, force
            )
        except (NexusError, ValueError) as exc:
            return self.back(request, "models", f"{model}: {exc}", ok=False)
        where = "every node" if action.kind == "stable" else f"{action.percent}% of nodes"
        return self.back(request, "models", f"{model} v{action.version} promoted to {stage} ({where}).")

    async def rollback(self, request: Request, session: Session) -> Response:
        model = request.path_params["model"]
        try:
            action = await store_call(self.hub.store, self.hub.registry.rollback, model)
        except NexusError as exc:
            return self.back(request, "models", f"{model}: {exc}", ok=False)
        return self.back(
            request,
            "models",
            f"{model}: rolled back the {action.kind} of v{action.version} (action {action.action_id}).",
        )

    async def privacy(self, request: Request, session: Session) -> Response:
        rows = await store_call(self.hub.store, privacy_view, self.hub, self.hub.clock())
        return self.render(request, "privacy.html", session, title="Privacy", page="privacy", rows=rows)

    async def rounds_page(self, request: Request, session: Session) -> Response:
        runs = await store_call(self.hub.store, rounds_view, self.hub)
        return self.render(
            request,
            "rounds.html",
            session,
            title="Federated rounds",
            page="rounds",
            runs=runs,
            live=any(r["active"] for r in runs),
            federation=self.hub.settings.federation(),
            families=self.hub.rounds.families.names(),
        )

    async def _forwarded(self, request: Request) -> Response | None:
        """The answer of the replica that drives rounds, when this one does not (hub/driver.py)."""
        try:  # the form the page wrapper read, sent on as it came
            return await forward_to_driver(request, self.hub, urlencode(request.state.form).encode())
        except NexusError as exc:
            return self.back(request, "rounds", str(exc), ok=False)

    async def start_round(self, request: Request, session: Session) -> Response:
        if (forwarded := await self._forwarded(request)) is not None:
            return forwarded
        form = {k: v for k, v in request.state.form.items() if k in StartRun.model_fields and v.strip()}
        try:
            config = RunConfig(**StartRun.model_validate(form).model_dump())
            # submitting is a `flwr run` process: seconds, off the event loop
            run = await offload(self.hub.rounds.start, config)
        except ValidationError as exc:
            first = exc.errors()[0]
            return self.back(request, "rounds", f"{'.'.join(map(str, first['loc']))}: {first['msg']}", ok=False)
        except NexusError as exc:
            return self.back(request, "rounds", str(exc), ok=False)
        return self.back(
            request,
            "rounds",
            f"Started {run.model} run {run.run_id}: {config.rounds} round(s) from v{run.base_version}.",
        )

    async def stop_round(self, request: Request, session: Session) -> Response:
        if (forwarded := await self._forwarded(request)) is not None:
            return forwarded
        try:
            run = await offload(self.hub.rounds.stop, request.path_params["run_id"])
        except NexusError as exc:
            return self.back(request, "rounds", str(exc), ok=False)
        return self.back(request, "rounds", f"Stopped run {run.run_id} after {run.rounds_done} round(s).")

    async def funnels(self, request: Request, session: Session) -> Response:
        experiments = await offload(funnels_view, self.hub, self.hub.clock())  # posterior draws: CPU work
        return self.render(
            request, "funnels.html", session, title="Funnels and experiments", page="funnels", experiments=experiments
        )

    def routes(self) -> list[BaseRoute]:
        p = self.page
        return [
            Route(f"{PREFIX}/login", self.login_form, methods=["GET"]),
            Route(f"{PREFIX}/login", self.login, methods=["POST"]),
            Route(f"{PREFIX}/logout", p(self.logout), methods=["POST"]),
            Route(PREFIX, p(self.index), methods=["GET"]),
            Route(f"{PREFIX}/", p(self.index), methods=["GET"]),
            Route(f"{PREFIX}/nodes", p(self.nodes), methods=["GET"]),
            Route(f"{PREFIX}/rounds", p(self.rounds_page), methods=["GET"]),
            Route(f"{PREFIX}/rounds", p(self.start_round), methods=["POST"]),
            Route(f"{PREFIX}/rounds/{{run_id}}/stop", p(self.stop_round), methods=["POST"]),
            Route(f"{PREFIX}/models", p(self.models), methods=["GET"]),
            Route(f"{PREFIX}/models/{{model}}/promote", p(self.promote), methods=["POST"]),
            Route(f"{PREFIX}/models/{{model}}/rollback", p(self.rollback), methods=["POST"]),
            Route(f"{PREFIX}/funnels", p(self.funnels), methods=["GET"]),
            Route(f"{PREFIX}/privacy", p(self.privacy), methods=["GET"]),
            Mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="dashboard-static"),
        ]


def routes(hub: Hub) -> list[BaseRoute]:
    return Dashboard(hub).routes()
