"""The uvicorn options every node serves under (``nexus edge serve``, and the benchmark's echo)."""

from __future__ import annotations

import copy

from nexus_service.serving import ServerLimits, uvicorn_options


def run_uvicorn(
    factory: str, host: str, port: int, workers: int, log_level: str = "info", limits: ServerLimits | None = None
) -> None:
    """Serve ``module:factory`` with the server settings the benchmark compares under."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    # Our loggers ride on uvicorn's handlers, which every worker process configures.
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"]["nexus"] = {"handlers": ["default"], "level": log_level.upper(), "propagate": False}
    uvicorn.run(
        factory,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        log_config=log_config,
        access_log=False,
        loop="auto",  # uvloop when installed (it is with uvicorn[standard])
        **uvicorn_options(limits or ServerLimits()),
    )
