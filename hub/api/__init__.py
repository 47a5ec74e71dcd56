"""The hub's HTTP API, one module per resource; each exposes ``routes() -> list[Route]``
built from module-level handlers that get the :class:`hub.state.Hub` through
:func:`hub.state.endpoint` (or :func:`hub.state.public`). Paths and shapes in docs/."""
