"""`make bench`, telemetry part: proxy throughput with telemetry on versus off, in one run.

Two handlers on the same machine, each with its own OpenBao: one sends telemetry to
a local ingestion endpoint (tests/ingestion.py, a real HTTP server), the other has
none. `wrk` alternates between them on GET /v1/sys/health and a kv-v2 read; the
medians give the ratio on/off. Target: >= 0.9x. Writes the "## Telemetry" section
of bench/RESULTS.md.

Usage: `.venv/bin/python bench/telemetry.py [--duration S] [--runs N] [--json]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import run as proxy_bench  # noqa: E402

from tests.ingestion import IngestionServer  # noqa: E402

MIN_RATIO = 0.9
SECTION = "## Telemetry"


def start_handler(children: proxy_bench.Children, name: str, work: Path, extra: dict[str, str]) -> tuple[int, str]:
    port, vault_port = proxy_bench.free_ports(2)
    data = work / name
    env = {
        "VAULTFN_PORT": str(port),
        "VAULTFN_VAULT_PORT": str(vault_port),
        "VAULTFN_DATA_DIR": str(data),
        "VAULTFN_EAGER_START": "true",
        "VAULTFN_LOG_LEVEL": "WARNING",
        **extra,
    }
    child = children.spawn(name, [sys.executable, "-m", "vault_handler"], proxy_bench.child_env(env))
    proxy_bench.poll(child, lambda: proxy_bench.health_status(port) == 200, f"{name} healthy")
    token = json.loads((data / "init.json").read_text())["root_token"]
    return port, token


def measure(duration: int, runs: int) -> dict[str, dict[str, float]]:
    ingestion = IngestionServer()
    with tempfile.TemporaryDirectory(prefix="vaultfn-telemetry-bench-") as directory:
        work = Path(directory)
        children = proxy_bench.Children(work)
        try:
            on = {
                "APPLICATIONINSIGHTS_CONNECTION_STRING": ingestion.connection_string,
                "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
            }
            sides = {"off": start_handler(children, "off", work, {}), "on": start_handler(children, "on", work, on)}
            for port, token in sides.values():
                proxy_bench.http_call(
                    port, "POST", proxy_bench.KV_MOUNT, token, {"type": "kv", "options": {"version": "2"}}
                )
                proxy_bench.http_call(port, "POST", proxy_bench.KV_SECRET, token, {"data": {"answer": "42"}})
            samples: dict[str, dict[str, list[float]]] = {}
            for endpoint in proxy_bench.ENDPOINTS:
                for turn in range(runs):
                    for side in ["off", "on"] if turn % 2 == 0 else ["on", "off"]:
                        port, token = sides[side]
                        argv = proxy_bench.wrk_argv(port, endpoint, token, duration)
                        output = proxy_bench.subprocess.run(argv, capture_output=True, text=True, check=True).stdout
                        rate, _ = proxy_bench.parse_wrk(output, argv[-1])
                        samples.setdefault(endpoint.name, {}).setdefault(side, []).append(rate)
                        proxy_bench.progress(f"telemetry {endpoint.name} {side}: {rate:,.0f} req/s")
            received = sum(1 for e in ingestion.envelopes if e["data"]["baseType"] == "RequestData")
        finally:
            children.stop_all()
            ingestion.close()
    results = {
        name: {side: statistics.median(values) for side, values in by_side.items()} for name, by_side in samples.items()
    }
    results["ingested"] = {"requests": received}
    return results


def markdown(results: dict[str, dict[str, float]], duration: int, runs: int) -> str:
    lines = [
        SECTION,
        "",
        f"Proxy throughput with telemetry on (to a local ingestion endpoint) versus off, `wrk -t2 -c16 -d{duration}s`, "
        f"median of {runs} alternating runs each; target >= {MIN_RATIO}x.",
        "",
        "| Endpoint | off (req/s) | on (req/s) | on/off | Result |",
        "|---|---|---|---|---|",
    ]
    for name in ("health", "kv"):
        off, on = results[name]["off"], results[name]["on"]
        ratio = on / off
        lines.append(f"| {name} | {off:,.0f} | {on:,.0f} | {ratio:.2f}x | {'PASS' if ratio >= MIN_RATIO else 'FAIL'} |")
    lines += [
        "",
        f"Request telemetry items received by the endpoint during the run: {results['ingested']['requests']:,}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = measure(args.duration, args.runs)
    text = markdown(results, args.duration, args.runs)
    print(json.dumps(results) if args.json else text)
    proxy_bench.write_results(proxy_bench.BENCH_DIR / "RESULTS.md", text)  # keeps the other sections
    return 0


if __name__ == "__main__":
    sys.exit(main())
