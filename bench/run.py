"""`make bench`: the handler versus OpenBao directly, side by side, in one run.

Everything is measured against the same OpenBao: the handler is started with
`VAULTFN_VAULT_PORT` set, so the bench can send the same requests to the
handler's port ("through handler") and to the Vault child's port ("direct").

1. Throughput: `wrk -t2 -c16` on GET /v1/sys/health and on a kv-v2 read,
   direct and through the handler in alternating runs; median req/s.
2. Added latency: sequential keep-alive GETs of /v1/sys/health with
   http.client, one request to each side in turn (so drift hits both alike);
   p50 and p99 through the handler minus direct.
3. Handler start: spawn of a lazy `python -m vault_handler` to its port
   accepting TCP connections (polled every millisecond).
4. Lazy first request: the first GET /v1/sys/health through a lazy handler on
   an initialized data dir (it starts Vault) versus the bare `bao` binary on the
   same data and the same rendered config, timed from spawn to health 200.
5. Idle RSS of the handler (and, for context, of its Vault child).

Usage: `.venv/bin/python bench/run.py [--quick] [--json] [--duration S] [--runs N]`.
Results go to bench/RESULTS.md (a --quick run writes bench/.work/RESULTS-quick.md).
Exits 0 even when a target is missed; 1 when the bench itself failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import itertools
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.settings import APP_DIR, LOCAL_TEMPLATE  # noqa: E402
from vault_handler import bootstrap, template  # noqa: E402
from vault_handler.binary import BinaryError, resolve_binary  # noqa: E402

BENCH_DIR = ROOT / "bench"
WORK_DIR = BENCH_DIR / ".work"
HEALTH = "/v1/sys/health"
KV_MOUNT = "/v1/sys/mounts/secret"
KV_SECRET = "/v1/secret/data/bench"

WRK_THREADS = 2
WRK_CONNECTIONS = 16
WARMUP_SECONDS = 1
LATENCY_WARMUP = 200
IDLE_SECONDS = 2.0
POLL_INTERVAL = 0.001
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0

MIN_HEALTH_RATIO = 0.35
MIN_KV_RATIO = 0.7
MAX_ADDED_P50_MS = 0.3
MAX_START_MS = 150.0
MAX_LAZY_EXTRA_MS = 50.0
MAX_RSS_MB = 60.0

VAULT_LISTENING = re.compile(r"Vault \(pid (?P<pid>\d+)\) is listening on 127\.0\.0\.1:\d+ after (?P<ms>\d+) ms")
COLUMNS = ("Metric", "Direct (OpenBao)", "Through handler", "Ratio / delta", "Target", "Result")


class BenchError(RuntimeError):
    """The bench itself could not measure; the message says what broke."""


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    authenticated: bool
    min_ratio: float


ENDPOINTS = (
    Endpoint("health", HEALTH, False, MIN_HEALTH_RATIO),
    Endpoint("kv", KV_SECRET, True, MIN_KV_RATIO),
)


@dataclass(frozen=True)
class Options:
    duration: int
    runs: int
    starts: int
    lazy_runs: int
    requests: int
    as_json: bool
    output: Path
    keep: bool


@dataclass
class Results:
    start_ms: list[float] = field(default_factory=list)
    throughput: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)
    lazy_first_ms: list[float] = field(default_factory=list)
    lazy_vault_active_ms: list[float] = field(default_factory=list)
    handler_logged_listen_ms: list[float] = field(default_factory=list)
    bare_ready_ms: list[float] = field(default_factory=list)
    bare_fresh_answer_ms: list[float] = field(default_factory=list)
    socket_errors: int = 0


@dataclass(frozen=True)
class Row:
    metric: str
    direct: str
    handler: str
    compare: str
    target: str
    result: str


# -- child processes -----------------------------------------------------------


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    spawned: float

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            tail = "\n".join(self.output().splitlines()[-15:])
            raise BenchError(f"{self.name} (pid {self.process.pid}) exited with code {code}; last output:\n{tail}")


class Children:
    """Every process the bench starts, so that each one is stopped whatever happens."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.started: list[Child] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        log = self.work / f"{len(self.started):02d}-{name}.log"
        with log.open("wb") as out:
            spawned = time.perf_counter()
            process = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches only the bench, which stops them in order
            )
        child = Child(name, process, log, spawned)
        self.started.append(child)
        return child

    @staticmethod
    def stop(child: Child) -> None:
        """SIGTERM (the handler then stops its Vault), SIGKILL if it does not exit in time."""
        if child.process.poll() is not None:
            return
        child.process.terminate()
        try:
            child.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()

    def stop_all(self) -> None:
        for child in reversed(self.started):
            self.stop(child)


def child_env(overrides: dict[str, str]) -> dict[str, str]:
    """This environment without the handler's own settings, plus `overrides`."""
    dropped = ("VAULTFN_", "FUNCTIONS_CUSTOMHANDLER_PORT", "VAULT_CONFIG_TEMPLATE")
    env = {name: value for name, value in os.environ.items() if not name.startswith(dropped)}
    env.update(overrides)
    return env


def shown(text: str | Path) -> str:
    """`text` with the paths under the repository relative to it (the bench runs from its root)."""
    return str(text).replace(f"{ROOT}/", "")


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports, all bound at once so that none repeats."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


# -- probes ----------------------------------------------------------------------


def poll(child: Child, attempt: Callable[[], bool], what: str) -> float:
    """Try `attempt` every millisecond until it succeeds; return the perf_counter time it did."""
    deadline = time.perf_counter() + READY_TIMEOUT
    while not attempt():
        child.check_alive()
        if time.perf_counter() > deadline:
            raise BenchError(f"{child.name}: {what} did not happen within {READY_TIMEOUT:g}s; see {child.log}")
        time.sleep(POLL_INTERVAL)
    return time.perf_counter()


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def http_call(
    port: int,
    method: str,
    path: str,
    token: str | None = None,
    body: dict[str, Any] | None = None,
    timeout: float = 30.0,
) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"X-Vault-Token": token} if token else {}
        connection.request(method, path, body=json.dumps(body).encode() if body else None, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        connection.close()


def health_status(port: int) -> int | None:
    """The HTTP status of GET /v1/sys/health, None when nothing answers."""
    try:
        return http_call(port, "GET", HEALTH, timeout=5.0)[0]
    except (OSError, http.client.HTTPException):
        return None


def timed_get(connection: http.client.HTTPConnection, path: str) -> float:
    """One GET on a keep-alive connection, in milliseconds."""
    started = time.perf_counter_ns()
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    elapsed = (time.perf_counter_ns() - started) / 1e6
    if response.status != 200:
        raise BenchError(f"GET {path} on port {connection.port} answered HTTP {response.status}")
    return elapsed


def first_200_at(port: int, stop: threading.Event) -> float:
    """When `port` first answers health 200 (tried every millisecond); 0.0 if `stop` is set first."""
    while not stop.is_set():
        if health_status(port) == 200:
            return time.perf_counter()
        time.sleep(POLL_INTERVAL)
    return 0.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS in /proc/{pid}/status")


def percentile(samples: list[float], pct: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1]


def parse_wrk(output: str, url: str) -> tuple[float, int]:
    """Requests per second and socket errors of one wrk run; non-2xx answers break the bench."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rate is None:
        raise BenchError(f"wrk on {url} printed no Requests/sec:\n{output}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if bad:
        raise BenchError(f"wrk on {url} got {bad.group(1)} non-2xx answers; results would be meaningless")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return float(rate.group(1)), sum(int(n) for n in errors.groups()) if errors else 0


def wrk_argv(port: int, endpoint: Endpoint, token: str, duration: int) -> list[str]:
    argv = ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{duration}s"]
    if endpoint.authenticated:
        argv += ["-H", f"X-Vault-Token: {token}"]
    return [*argv, f"http://127.0.0.1:{port}{endpoint.path}"]


def in_turn(sides: dict[str, int], turn: int) -> list[str]:
    """The sides in order on even turns, reversed on odd ones (ABBA), so that neither always goes first."""
    return list(sides) if turn % 2 == 0 else list(reversed(sides))


def vault_config(data_dir: Path, port: int, cluster_port: int) -> str:
    """config/local.hcl.tpl rendered as the handler's supervisor renders it."""
    env = child_env(
        {
            "VAULT_LISTEN_PORT": str(port),
            "VAULT_CLUSTER_PORT": str(cluster_port),
            "VAULTFN_DATA_DIR": str(data_dir),
            "VAULTFN_SEAL_KEY_FILE": str(data_dir / bootstrap.SEAL_KEY_FILE),
        }
    )
    return template.render(LOCAL_TEMPLATE, env, APP_DIR)


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- the measurements ------------------------------------------------------------


@dataclass(frozen=True)
class HandlerRun:
    child: Child
    port: int
    vault_port: int
    start_ms: float

    def vault_started(self) -> re.Match[str]:
        match = VAULT_LISTENING.search(self.child.output())
        if match is None:
            raise BenchError(f"the handler did not log that Vault is listening; see {self.child.log}")
        return match


class Bench:
    def __init__(self, options: Options, work: Path, binary: Path) -> None:
        self.options = options
        self.work = work
        self.binary = binary
        self.data_dir = work / "data"
        self.children = Children(work)
        self.commands: dict[str, str] = {}
        self.results = Results()

    def run(self) -> Results:
        self.measure_handler_start()
        self.measure_under_load()
        self.measure_lazy_start()
        return self.results

    def spawn(self, name: str, kind: str, argv: list[str], overrides: dict[str, str]) -> Child:
        """Start a child, noting its command line under `kind` for the report."""
        assignments = [f"{variable}={value}" for variable, value in overrides.items()]
        self.commands.setdefault(kind, shown(shlex.join([*assignments, *argv])))
        return self.children.spawn(name, argv, child_env(overrides))

    @contextlib.contextmanager
    def handler(self, eager: bool) -> Iterator[HandlerRun]:
        port, vault_port = free_ports(2)
        overrides = {
            "VAULTFN_PORT": str(port),
            "VAULTFN_DATA_DIR": str(self.data_dir),
            "VAULTFN_VAULT_PORT": str(vault_port),
            "VAULTFN_EAGER_START": "true" if eager else "false",
        }
        kind = "handler (eager: throughput, latency, RSS)" if eager else "handler (lazy: start, first request)"
        child = self.spawn("handler", kind, [sys.executable, "-m", "vault_handler"], overrides)
        try:
            listening = poll(child, lambda: accepts(port), f"accepting on port {port}")
            yield HandlerRun(child, port, vault_port, (listening - child.spawned) * 1000)
        finally:
            Children.stop(child)

    def bare_vault_ms(self, data_dir: Path, accept: Callable[[int | None], bool], what: str) -> float:
        """Milliseconds from spawning the bare `bao` on `data_dir` to a health answer that `accept` likes."""
        port, cluster_port = free_ports(2)
        config = self.work / f"bao-{port}.hcl"
        bootstrap.write_private_file(config, vault_config(data_dir, port, cluster_port).encode())
        argv = [str(self.binary), "server", f"-config={config}"]
        child = self.spawn("bao", "bare OpenBao (config/local.hcl.tpl rendered the same way)", argv, {})
        try:
            return (poll(child, lambda: accept(health_status(port)), what) - child.spawned) * 1000
        finally:
            Children.stop(child)

    # 3. handler start

    def measure_handler_start(self) -> None:
        for attempt in range(1, self.options.starts + 1):
            with self.handler(eager=False) as run:
                self.results.start_ms.append(run.start_ms)
            progress(f"handler start {attempt}/{self.options.starts}: {run.start_ms:.1f} ms")

    # 1, 2 and 5: one eager handler and its Vault

    def measure_under_load(self) -> None:
        with self.handler(eager=True) as run:
            poll(run.child, lambda: health_status(run.port) == 200, "health 200 through the handler")
            token = json.loads((self.data_dir / bootstrap.INIT_FILE).read_text())["root_token"]
            self.prepare_kv(run.port, token)
            sides = {"direct": run.vault_port, "handler": run.port}
            for endpoint in ENDPOINTS:
                self.measure_throughput(endpoint, sides, token)
            time.sleep(IDLE_SECONDS)
            rss = {"handler": rss_mb(run.child.process.pid), "vault": rss_mb(int(run.vault_started().group("pid")))}
            self.results.rss_mb = rss
            progress(f"idle RSS: handler {rss['handler']:.1f} MB, Vault {rss['vault']:.1f} MB")
            self.measure_latency(sides)

    def prepare_kv(self, port: int, token: str) -> None:
        status, answer = http_call(port, "POST", KV_MOUNT, token, {"type": "kv", "options": {"version": "2"}})
        if status not in (200, 204):
            raise BenchError(f"enabling kv-v2 at secret/ answered HTTP {status}: {answer}")
        deadline = time.monotonic() + READY_TIMEOUT
        # A new kv-v2 mount refuses writes until its background upgrade has finished.
        while (status := http_call(port, "POST", KV_SECRET, token, {"data": {"password": "bench"}})[0]) != 200:
            if time.monotonic() > deadline:
                raise BenchError(f"writing {KV_SECRET} still answers HTTP {status}")
            time.sleep(0.05)

    def wrk(self, argv: list[str]) -> float:
        """Run wrk; its requests per second."""
        done = subprocess.run(argv, capture_output=True, text=True, timeout=self.options.duration + 60, check=False)
        if done.returncode != 0:
            raise BenchError(f"{shlex.join(argv[:-1])} {argv[-1]} failed with code {done.returncode}: {done.stderr}")
        rate, errors = parse_wrk(done.stdout, argv[-1])
        self.results.socket_errors += errors
        return rate

    def measure_throughput(self, endpoint: Endpoint, sides: dict[str, int], token: str) -> None:
        for side, port in sides.items():
            self.wrk(wrk_argv(port, endpoint, token, WARMUP_SECONDS))
            command = shlex.join(wrk_argv(port, endpoint, token, self.options.duration))
            self.commands[f"wrk {endpoint.name} {side}"] = command.replace(token, "<root token>")
        samples: dict[str, list[float]] = {side: [] for side in sides}
        for run in range(self.options.runs):
            for side in in_turn(sides, run):
                samples[side].append(self.wrk(wrk_argv(sides[side], endpoint, token, self.options.duration)))
            rates = ", ".join(f"{side} {samples[side][-1]:,.0f}" for side in sides)
            progress(f"throughput {endpoint.name} run {run + 1}/{self.options.runs}: {rates} req/s")
        self.results.throughput[endpoint.name] = samples

    def measure_latency(self, sides: dict[str, int]) -> None:
        connections = {side: http.client.HTTPConnection("127.0.0.1", port, timeout=10) for side, port in sides.items()}
        samples: dict[str, list[float]] = {side: [] for side in sides}
        try:
            for connection in connections.values():
                for _ in range(LATENCY_WARMUP):
                    timed_get(connection, HEALTH)
            for request in range(self.options.requests):
                for side in in_turn(sides, request):
                    samples[side].append(timed_get(connections[side], HEALTH))
        finally:
            for connection in connections.values():
                connection.close()
        latency = {side: {"p50": percentile(s, 50), "p99": percentile(s, 99)} for side, s in samples.items()}
        self.results.latency_ms = latency
        progress(f"latency p50: direct {latency['direct']['p50']:.3f} ms, handler {latency['handler']['p50']:.3f} ms")

    # 4. lazy first request, against the bare binary's own start

    def measure_lazy_start(self) -> None:
        results = self.results
        for attempt in range(1, self.options.lazy_runs + 1):
            self.lazy_first_request()
            ready = self.bare_vault_ms(self.data_dir, lambda status: status == 200, "health 200 (initialized data)")
            results.bare_ready_ms.append(ready)
            fresh = self.work / f"fresh-{attempt}"
            bootstrap.prepare_data_dir(fresh)  # an empty raft dir and a new 32-byte seal key (0600)
            answered = self.bare_vault_ms(fresh, lambda status: status is not None, "any health answer (fresh data)")
            results.bare_fresh_answer_ms.append(answered)
            progress(
                f"lazy start {attempt}/{self.options.lazy_runs}: first request {results.lazy_first_ms[-1]:.0f} ms "
                f"(Vault's own port 200 after {results.lazy_vault_active_ms[-1]:.0f} ms), "
                f"bare OpenBao to health 200 {ready:.0f} ms, bare fresh first answer {answered:.0f} ms"
            )

    def lazy_first_request(self) -> None:
        """Time the first request through a lazy handler while watching the Vault child's own port."""
        stop = threading.Event()
        with self.handler(eager=False) as run, ThreadPoolExecutor(max_workers=1) as pool:
            started = time.perf_counter()
            watcher = pool.submit(first_200_at, run.vault_port, stop)
            try:
                status, _ = http_call(run.port, "GET", HEALTH, timeout=READY_TIMEOUT)
                answered = time.perf_counter()
                if status != 200:
                    raise BenchError(f"the first request through a lazy handler answered HTTP {status}")
                vault_active = watcher.result(timeout=READY_TIMEOUT)
            finally:
                stop.set()
            self.results.lazy_first_ms.append((answered - started) * 1000)
            self.results.lazy_vault_active_ms.append((vault_active - started) * 1000)
            self.results.handler_logged_listen_ms.append(float(run.vault_started().group("ms")))


# -- the report ------------------------------------------------------------------


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def throughput_row(endpoint: Endpoint, samples: dict[str, list[float]], options: Options) -> Row:
    direct, proxied = statistics.median(samples["direct"]), statistics.median(samples["handler"])
    ratio = proxied / direct
    return Row(
        f"Throughput GET {endpoint.path} (req/s, median of {options.runs} x {options.duration} s)",
        f"{direct:,.0f}",
        f"{proxied:,.0f}",
        f"{ratio:.2f}x",
        f">= {endpoint.min_ratio:.2f}x",
        verdict(ratio >= endpoint.min_ratio),
    )


def build_rows(results: Results, options: Options) -> list[Row]:
    rows = [throughput_row(e, results.throughput[e.name], options) for e in ENDPOINTS]
    latency = results.latency_ms
    for pct, limit in (("p50", MAX_ADDED_P50_MS), ("p99", None)):
        direct, proxied = latency["direct"][pct], latency["handler"][pct]
        added = proxied - direct
        rows.append(
            Row(
                f"Latency {pct}, 1 connection, {options.requests} sequential GET {HEALTH} (ms)",
                f"{direct:.3f}",
                f"{proxied:.3f}",
                f"{added:+.3f} ms",
                f"<= +{limit:.2f} ms" if limit is not None else "-",
                verdict(added <= limit) if limit is not None else "info",
            )
        )
    start = statistics.median(results.start_ms)
    rows.append(
        Row(
            f"Handler start: spawn -> port accepts (ms, median of {options.starts})",
            "-",
            f"{start:.1f}",
            "-",
            f"<= {MAX_START_MS:.0f} ms",
            verdict(start <= MAX_START_MS),
        )
    )
    ready, first = statistics.median(results.bare_ready_ms), statistics.median(results.lazy_first_ms)
    rows.append(
        Row(
            f"Lazy first request vs bare bao spawn -> health 200 (ms, median of {options.lazy_runs})",
            f"{ready:.0f}",
            f"{first:.0f}",
            f"{first - ready:+.0f} ms",
            f"<= +{MAX_LAZY_EXTRA_MS:.0f} ms",
            verdict(first - ready <= MAX_LAZY_EXTRA_MS),
        )
    )
    active = statistics.median(results.lazy_vault_active_ms)
    paired = statistics.median(f - a for f, a in zip(results.lazy_first_ms, results.lazy_vault_active_ms, strict=True))
    rows.append(
        Row(
            "Lazy, same runs: Vault child's port turns 200 / handler answers (median delta, ms)",
            f"{active:.0f}",
            f"{first:.0f}",
            f"{paired:+.0f} ms",
            "-",
            "info",
        )
    )
    fresh, logged = statistics.median(results.bare_fresh_answer_ms), statistics.median(results.handler_logged_listen_ms)
    rows.append(
        Row(
            "Vault spawn -> listening (ms): bare bao, fresh data / handler's log line",
            f"{fresh:.0f}",
            f"{logged:.0f}",
            f"{logged - fresh:+.0f} ms",
            "-",
            "info",
        )
    )
    handler_rss, vault_rss = results.rss_mb["handler"], results.rss_mb["vault"]
    rows.append(
        Row(
            "Idle RSS after load (MB): Vault child / handler",
            f"{vault_rss:.1f}",
            f"{handler_rss:.1f}",
            "-",
            f"handler <= {MAX_RSS_MB:.0f} MB",
            verdict(handler_rss <= MAX_RSS_MB),
        )
    )
    return rows


def table(rows: Sequence[Any], columns: tuple[str, ...] = COLUMNS) -> str:
    """A padded Markdown table of dataclass rows: readable in a terminal and renders in RESULTS.md."""
    cells = [columns, *(astuple(row) for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [
        "| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) + " |" for line in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


SECTION_HEADING = re.compile(r"^## ", re.MULTILINE)


def split_sections(text: str) -> tuple[str, dict[str, str]]:
    """A Markdown text's preamble (before its first `## ` heading) and its `## ` sections by heading line.

    A section runs to the next `## ` heading or the end (so its subsections use `### `).
    """
    bounds = [*(match.start() for match in SECTION_HEADING.finditer(text)), len(text)]
    parts = [text[start:end].strip() for start, end in itertools.pairwise(bounds)]
    return text[: bounds[0]].strip(), {part.partition("\n")[0]: part for part in parts}


def merge_results(old: str, new: str) -> str:
    """`old` with the `## ` sections of `new` replaced in place or appended, and its preamble if `new` has one."""
    old_preamble, old_sections = split_sections(old)
    new_preamble, new_sections = split_sections(new)
    parts = [new_preamble or old_preamble, *{**old_sections, **new_sections}.values()]
    return "\n\n".join(part for part in parts if part) + "\n"


def write_results(path: Path, text: str) -> None:
    """Write `text` into `path`, keeping what other benches wrote there (their `## ` sections, e.g. "## Backups")."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    path.write_text(merge_results(old, text), encoding="utf-8")


def command_version(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def base_machine() -> dict[str, str]:
    """What every bench records about the machine it ran on."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "kernel": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()} ({shown(sys.executable)})",
    }


def machine(binary: Path) -> dict[str, str]:
    try:
        uvloop = f"uvloop {metadata.version('uvloop')}"
    except metadata.PackageNotFoundError:
        uvloop = "asyncio (uvloop not installed)"
    return {
        **base_machine(),
        "event loop": uvloop,
        "openbao": command_version([str(binary), "version"]),
        "wrk": command_version(["wrk", "-v"]),
    }


METHOD = f"""\
- Throughput: `wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}`, a {WARMUP_SECONDS} s warm-up per side, then direct and \
through-handler runs alternating (ABBA order); the median req/s of each side. wrk shares the machine's CPUs with \
the handler and OpenBao.
- Latency: Python `http.client`, one keep-alive connection per side, {LATENCY_WARMUP} warm-up requests each, then \
one request to each side in turn (so that noise hits both alike); the client's own cost is in both columns and \
cancels in the delta. Chosen over `wrk -c1 --latency`, whose runs cannot be interleaved.
- Handler start: `python -m vault_handler` without `VAULTFN_EAGER_START`, from spawn to a TCP connect succeeding \
(tried every 1 ms).
- Lazy first request: a lazy handler on the already-initialized data dir; the time of its first GET {HEALTH}, which \
starts OpenBao (unseal, raft leader election) and waits until it is active. Reference (the target): the bare `bao` \
binary with config/local.hcl.tpl rendered the same way, on the same data dir, from spawn to its first health 200 \
(polled every 1 ms), in separate runs alternating with the handler's. Paired reference (same runs): a thread polls \
the Vault child's own port every 1 ms during the first request; the delta is what the handler adds after Vault is \
active. For context: the bare `bao` on a fresh raft dir with a new 32-byte static seal key (0600), from spawn to its \
first HTTP answer, and the handler's log line "Vault ... is listening ... after X ms".
- RSS: VmRSS from `/proc/<pid>/status` after the throughput runs and {IDLE_SECONDS:g} s idle."""


def markdown(report: dict[str, Any]) -> str:
    machine_lines = "\n".join(f"- {name}: {value}" for name, value in report["machine"].items())
    samples = report["samples"]
    sample_lines = "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in samples.items()) + "\n}"
    command_lines = "\n".join(f"    # {kind}\n    {command}\n" for kind, command in report["commands"].items())
    return (
        f"# Benchmark: handler vs OpenBao directly\n\n"
        f"Generated by `{shlex.join(['.venv/bin/python', 'bench/run.py', *report['arguments']])}`"
        " (`make bench` runs it without arguments). Both columns measure the same OpenBao.\n\n"
        f"{machine_lines}\n\n{report['table']}\n\n"
        f"## Method\n\n{METHOD}\n\n## Commands\n\nRun from the repository root; ports are the free loopback ports "
        f"this run used, paths are under its temporary work dir.\n\n{command_lines}\n"
        f"## Samples\n\nAll in ms, except req/s and MB.\n\n```json\n{sample_lines}\n```\n"
    )


# -- main ------------------------------------------------------------------------


def parse_args(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(description="Benchmark the handler against OpenBao directly.")
    parser.add_argument("--duration", type=int, help="seconds per wrk run (default 10, --quick 3)")
    parser.add_argument("--runs", type=int, help="wrk runs per side and endpoint (default 3, --quick 1)")
    parser.add_argument("--starts", type=int, help="handler start measurements (default 5, --quick 3)")
    parser.add_argument("--lazy-runs", type=int, help="lazy first-request measurements (default 3, --quick 1)")
    parser.add_argument("--requests", type=int, help="sequential requests per side for latency (default 2000)")
    parser.add_argument("--quick", action="store_true", help="a smoke check: short and fewer runs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--output", type=Path, help="Markdown results (default bench/RESULTS.md)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir with the logs under bench/.work/")
    args = parser.parse_args(argv)

    def pick(value: int | None, full: int, quick: int, minimum: int = 1) -> int:
        chosen = value if value is not None else quick if args.quick else full
        if chosen < minimum:
            parser.error(f"counts and durations must be at least {minimum}, not {chosen}")
        return chosen

    quick_output = WORK_DIR / "RESULTS-quick.md"
    return Options(
        duration=pick(args.duration, 10, 3),
        runs=pick(args.runs, 3, 1),
        starts=pick(args.starts, 5, 3),
        lazy_runs=pick(args.lazy_runs, 3, 1),
        requests=pick(args.requests, 2000, 1000, minimum=2),  # percentiles need two
        as_json=args.json,
        output=args.output or (quick_output if args.quick else BENCH_DIR / "RESULTS.md"),
        keep=args.keep,
    )


def preflight() -> Path:
    if not Path("/proc/self/status").exists():
        raise BenchError("this bench reads /proc; run it on Linux")
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed: run `make bench` (it installs wrk) or `apt-get install wrk`")
    try:
        return resolve_binary(os.environ.get("VAULT_BINARY"), APP_DIR)
    except BinaryError as error:
        raise BenchError(str(error)) from None


def report_of(bench: Bench, binary: Path, argv: list[str]) -> dict[str, Any]:
    results, options = bench.results, bench.options
    rows = build_rows(results, options)
    if results.socket_errors:
        progress(f"warning: wrk counted {results.socket_errors} socket errors (timeouts or resets)")
    return {
        "arguments": argv,
        "machine": machine(binary),
        "rows": [dict(zip(COLUMNS, astuple(row), strict=True)) for row in rows],
        "table": table(rows),
        "samples": rounded(vars(results)),
        "commands": bench.commands,
    }


def rounded(value: Any) -> Any:
    """`value` with every float rounded to microseconds (or thousandths of a req/s or MB)."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options = parse_args(argv)
    try:
        binary = preflight()
    except BenchError as error:
        print(f"bench: cannot run: {error}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _interrupt)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=WORK_DIR))
    bench = Bench(options, work, binary)
    failed = True
    try:
        bench.run()
        report = report_of(bench, binary, argv)
        write_results(options.output, markdown(report))
        print(json.dumps(report, indent=2) if options.as_json else report["table"])
        progress(f"results written to {shown(options.output)}")
        failed = False
        return 0
    except (BenchError, OSError, subprocess.SubprocessError, http.client.HTTPException) as error:
        print(f"bench: FAILED, nothing measured reliably: {error}\nlogs kept in {shown(work)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        failed = False
        return 130
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)  # let the clean-up finish
        bench.children.stop_all()
        if not (failed or options.keep):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
