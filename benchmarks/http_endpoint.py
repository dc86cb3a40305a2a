"""The control endpoint under load: /readyz and /metrics latency, and its cost to the workflows. Tables.

    .venv/bin/python benchmarks/http_endpoint.py [--rounds 6] [--phase 5] [--clients 50] [--load 2] [--smoke]

Not a test. Real clock. The runtime in dev-server mode with the endpoint on (127.0.0.1, a free port) and a
worker running a one-activity workflow; `--load` loops run workflows back to back through
rt.execute_workflow the whole time.

1. Endpoint latency: a child process (plain asyncio, its own CPU) runs `--clients` concurrent keep-alive
   clients, half on /readyz and half on /metrics, for `--phase` seconds; p50/p99 per path.
2. Cost to the workflows: phases of `--phase` seconds alternate between "scraped" (a child process GETs
   /metrics every 100 ms, as a Prometheus would with a short interval) and "not scraped" (a child
   process that only sleeps: the same start-up cost), `--rounds`
   times each, order alternating; workflow round trip p50/p99 per condition. Target: p99 moves <= 5 %.
   `--aa` runs the same schedule with no scraping at all: the ratio it prints is the noise floor.

`--smoke` (CI): one 1 s phase per condition, 4 endpoint clients, one load loop (~15 s); exits non-zero
when anything breaks or a series got no samples.

Not named http.py: on sys.path (a script's own directory is) it would shadow the stdlib `http` package
for every benchmark here, since prometheus-client imports http.server.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time

import trio

import stigmer_trio as st
from _common import Table, command_line, free_port, leave, machine_note, pct, require, run_timed
from bench_workflows import BenchEcho, echo

QUEUE = "http-bench-q"


# --- the client side: a plain asyncio child process ------------------------------------------------------
async def _client(host: str, port: int, path: str, until: float, interval: float, out: list[float]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    try:
        while time.monotonic() < until:
            began = time.perf_counter_ns()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            out.append((time.perf_counter_ns() - began) / 1e6)
            if interval:
                await asyncio.sleep(max(0.0, interval - (time.perf_counter_ns() - began) / 1e9))
    finally:
        writer.close()


async def _child(url: str, mode: str, seconds: float, clients: int) -> None:
    host, _, port = url.removeprefix("http://").rpartition(":")
    until = time.monotonic() + seconds
    results: dict[str, list[float]] = {"/readyz": [], "/metrics": []}
    if mode == "idle":  # the control phase: the same child process start-up, no requests
        await asyncio.sleep(seconds)
    elif mode == "scrape":
        await _client(host, int(port), "/metrics", until, 0.1, results["/metrics"])
    else:
        paths = ["/readyz", "/metrics"]
        await asyncio.gather(
            *(
                _client(host, int(port), paths[i % 2], until, 0.0, results[paths[i % 2]])
                for i in range(clients)
            )
        )
    print(json.dumps(results), flush=True)


# --- the runtime side (trio) -----------------------------------------------------------------------------
async def clients(url: str, mode: str, seconds: float, n: int = 1) -> dict[str, list[float]]:
    proc = await trio.run_process(
        [sys.executable, __file__, "--child", url, mode, str(seconds), str(n)],
        capture_stdout=True,
        check=True,
    )
    results: dict[str, list[float]] = json.loads(proc.stdout)
    return results


class GcPauses:
    """Collector pauses in this process (gc.callbacks), per generation: a scrape allocates, and full
    collections in a process holding temporalio's object graph are what a latency tail feels."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._began = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.pauses.append((info["generation"], (time.perf_counter() - self._began) * 1000))

    def take(self) -> list[tuple[int, float]]:
        taken, self.pauses = self.pauses, []
        return taken


async def bench(
    rounds: int,
    phase: float,
    n_clients: int,
    load: int,
    aa: bool = False,
    freeze: bool = False,
    warmup: float = 2.0,
) -> str:
    with tempfile.TemporaryDirectory(prefix="stigmer-http-bench-") as state:
        config = st.RuntimeConfig(
            state_dir=state,
            dev_server=st.DevServerConfig(port=free_port()),
            workers=[st.WorkerSpec(QUEUE, workflows=[BenchEcho], activities=[echo])],
            http=st.HttpConfig(port=0),
        )
        latencies: list[float] = []  # ms, of the workflow currently running in any load loop
        serial = iter(range(10**9))
        async with st.open_runtime(config) as rt:
            with trio.fail_after(60):
                await rt.wait_ready()
            url = rt.http_url
            assert url is not None

            async def loop() -> None:
                while True:
                    began = time.perf_counter_ns()
                    await rt.execute_workflow("BenchEcho", "x", id=f"h-{next(serial)}", task_queue=QUEUE)
                    latencies.append((time.perf_counter_ns() - began) / 1e6)

            by_condition: dict[str, list[float]] = {"not scraped": [], "scraped every 100 ms": []}
            pauses: dict[str, list[tuple[int, float]]] = {"not scraped": [], "scraped every 100 ms": []}
            if freeze:
                gc.collect()
                gc.freeze()  # everything alive now is never traversed again by the collector
            collector = GcPauses()
            async with trio.open_nursery() as nursery:
                for _ in range(load):
                    nursery.start_soon(loop)
                await trio.sleep(warmup)
                latencies.clear()
                endpoint = await clients(url, "load", phase, n_clients)
                under_load = latencies[:]
                for index in range(rounds):
                    order = ["not scraped", "scraped every 100 ms"]
                    for condition in order if index % 2 else order[::-1]:
                        latencies.clear()
                        collector.take()
                        if condition == "not scraped" or aa:  # --aa: both conditions unscraped
                            # A child that only sleeps: both conditions pay for starting one (~0.2 s of
                            # CPU at the start of a phase, which alone moved the p99 by ~5-10 %).
                            await clients(url, "idle", phase)
                        else:
                            scraped = await clients(url, "scrape", phase)
                            by_condition.setdefault("scrapes", []).extend(scraped["/metrics"])
                        by_condition[condition] += latencies
                        pauses[condition] += collector.take()
                    print(f"# round {index + 1}/{rounds}", file=sys.stderr, flush=True)
                nursery.cancel_scope.cancel(reason="benchmark over")

    base, scraped = by_condition["not scraped"], by_condition["scraped every 100 ms"]
    series = {"GET /readyz": endpoint["/readyz"], "GET /metrics": endpoint["/metrics"], "not scraped": base}
    series |= {"scraped every 100 ms": scraped, "scrapes": by_condition.get("scrapes", [])}
    require(series, *(name for name in series if not (aa and name == "scrapes")))
    http_table = Table("ms", "{:.2f}")
    for path in ("/readyz", "/metrics"):
        http_table.row(f"GET {path}, {n_clients} concurrent clients, workflows running", endpoint[path])
    http_table.row(f"workflow round trip during that ({load} loops)", under_load)
    http_table.row("GET /metrics, one scraper every 100 ms", by_condition.get("scrapes", []))
    wf = Table("ms")
    wf.row("workflow round trip, not scraped", base)
    p99_ratio = pct(scraped, 0.99) / pct(base, 0.99)
    wf.row("workflow round trip, /metrics scraped every 100 ms", scraped)
    wf.ratios("ratio scraped / not scraped", scraped, base, "p99 <= 1.05x", p99_ratio <= 1.05)
    requests = sum(len(v) for v in endpoint.values())
    gc_lines = [
        "| collector pauses in the runtime process | gen 0 | gen 1 | gen 2 | gen 2 max (ms) |",
        "|---|---|---|---|---|",
    ]
    for condition, seen in pauses.items():
        counts = [sum(1 for g, _ in seen if g == gen) for gen in (0, 1, 2)]
        worst = max((ms for g, ms in seen if g == 2), default=0.0)
        gc_lines.append(f"| {condition} | {counts[0]} | {counts[1]} | {counts[2]} | {worst:.1f} |")
    return "\n\n".join(
        [
            http_table.render(),
            f"{requests / phase:.0f} requests/s served to {n_clients} clients over {phase:g} s.",
            wf.render(),
            f"p99 ratio scraped / not scraped: {p99_ratio:.3f}; p50 ratio: "
            f"{pct(scraped, 0.5) / pct(base, 0.5):.3f} ({rounds} phases of {phase:g} s each, alternating"
            + ("; A/A: neither condition scraped" if aa else "")
            + ("; gc.freeze() after start-up" if freeze else "")
            + ").",
            "\n".join(gc_lines),
        ]
    )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        url, mode, seconds, n = sys.argv[2:6]
        asyncio.run(_child(url, mode, float(seconds), int(n)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="phases per condition")
    parser.add_argument("--phase", type=float, default=5.0, help="seconds per phase")
    parser.add_argument("--clients", type=int, default=50, help="concurrent endpoint clients")
    parser.add_argument("--load", type=int, default=2, help="concurrent workflow loops")
    parser.add_argument(
        "--aa", action="store_true", help="A/A control: no scraping in either condition (the noise floor)"
    )
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() once the runtime is ready")
    parser.add_argument("--smoke", action="store_true", help="CI: 1 phase of 1 s each, 4 clients, 1 loop")
    args = parser.parse_args()
    if args.rounds < 1 or args.phase <= 0 or args.clients < 1 or args.load < 1:
        parser.error("every count must be >= 1 and --phase > 0")
    warmup = 2.0
    if args.smoke:
        args.rounds, args.phase, args.clients, args.load, warmup = 1, 1.0, 4, 1, 0.5
    tables: list[str] = []

    def run() -> None:
        tables.append(
            trio.run(bench, args.rounds, args.phase, args.clients, args.load, args.aa, args.gc_freeze, warmup)
        )

    code, elapsed, load_before = run_timed(run)
    for table in tables:
        print(table)
    print()
    print(f"Command: `{command_line()}` ({elapsed:.0f} s wall). {machine_note(load_before)}")
    return code


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.exit(main())
    leave(main())
