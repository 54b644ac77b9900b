"""`python -m keepwarm_timer [--url URL] [--json]`: one health check, as a probe for scripts.

Exit codes: 0 healthy (active or a standby), 1 not healthy, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from shared.settings import settings_for_command

from .check import check, health_url


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m keepwarm_timer",
        description="Check Vault's health URL once. Exit 0 when healthy, 1 when not, 2 on a usage error.",
    )
    parser.add_argument("--url", help="health URL (default: VAULT_HEALTH_URL, else VAULT_API_ADDR or this handler)")
    parser.add_argument("--timeout", type=float, help="seconds to wait for an answer (default: KEEPWARM_TIMEOUT, 60)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.url is not None and not args.url.startswith(("http://", "https://")):
        print(f"keepwarm: --url {args.url!r} is not an http(s) URL", file=sys.stderr)
        return 2
    if args.timeout is not None and args.timeout <= 0:
        print("keepwarm: --timeout must be a positive number of seconds", file=sys.stderr)
        return 2
    settings = settings_for_command("keepwarm")
    if settings is None:
        return 2
    result = asyncio.run(check(args.url or health_url(settings), args.timeout or settings.keepwarm_timeout))
    print(json.dumps(result.as_dict()) if args.json else result.summary())
    return 0 if result.healthy else 1


if __name__ == "__main__":
    sys.exit(main())
