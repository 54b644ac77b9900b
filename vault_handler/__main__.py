"""`python -m vault_handler`: the process the Azure Functions host starts."""

from __future__ import annotations

import asyncio
import logging
import sys

from shared.scrub import Scrubber, ScrubbingFormatter
from shared.settings import Settings, settings_for_command

from .binary import BinaryError
from .bootstrap import BootstrapError
from .scheduler import ScheduleError
from .server import Handler
from .template import TemplateError


def configure_logging(settings: Settings) -> None:
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(
        ScrubbingFormatter(
            Scrubber.from_environment(settings.environment),
            "%(asctime)s %(levelname)s %(name)s: %(message)s",
            "%Y-%m-%dT%H:%M:%S",
        )
    )
    logging.basicConfig(level=settings.log_level, handlers=[console])
    # One line per HTTP request (httpx, the Azure SDK, the telemetry exporter) is noise here.
    for noisy in ("httpx", "azure", "opentelemetry"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


async def _serve(settings: Settings) -> int:
    try:
        handler = Handler(settings)
    except (TemplateError, BinaryError, BootstrapError) as error:
        print(f"vaultfn: cannot start: {error}", file=sys.stderr)
        return 2
    try:
        await handler.run()
    except ScheduleError as error:
        await handler.supervisor.stop()  # removes its private directory
        print(f"vaultfn: cannot start: {error}", file=sys.stderr)
        return 2
    return 0


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main() -> int:
    settings = settings_for_command("vaultfn")
    if settings is None:
        return 2
    configure_logging(settings)
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        return runner.run(_serve(settings))


if __name__ == "__main__":
    sys.exit(main())
