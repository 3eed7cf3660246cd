"""
Scale-out: k triggerers on one queue, side by side in one run (``make bench``, section "Several triggerers").

Each triggerer is a waiting process of its own (:mod:`bench.worker`, kind ``ours``: Airflow's
shared stream manager, each event confirmed persisted after the stated delay), as one triggerer
runs its triggers. N waits are spread over the k processes round robin, as the scheduler's
assignment spreads deferred tasks over live triggerers (each triggerer takes up to its capacity
of the unassigned triggers; with N far below k times the capacity the split is even). Then:

* ``burst``: the N callbacks are sent at once;
* ``noise``: the same, with 100 callbacks of other executions (their steps open, nobody waits for
  them) and 10 foreign messages on the queue, sent at the same moment; after the burst the
  receives of those messages are counted over a window that starts once every triggerer has
  seen them (``--noise-window``, from 60 s after the send), and the messages left are counted
  (none may be deleted: their steps are open);
* ``idle``: N waits and no message for ``--idle-seconds``: ``ReceiveMessage`` per minute per
  triggerer.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    Callbacks,
    base_env,
    burst_figures,
    consumer_requests,
    cpu_seconds,
    emulator_process,
    percentile,
    prepare_callbacks,
    send_at_once,
)
from bench.trigger_level import Worker

#: Callbacks of executions nobody waits for, and foreign messages, in the ``noise`` scenario.
OTHER_CALLBACKS = 100
FOREIGN_BODIES = [
    json.dumps({"Records": [{"eventSource": "aws:s3", "s3": {"object": {"key": f"in/{i}.csv"}}}]})
    if i % 2
    else f"not json at all {i}"
    for i in range(10)
]


@dataclass(frozen=True)
class ScaleScenario:
    """One run with ``k`` triggerers."""

    k: int
    mode: str  # "burst", "noise" or "idle"
    n: int
    time_limit: float = 240.0
    idle_seconds: float = 180.0
    noise_window: tuple[float, float] = (60.0, 180.0)

    @property
    def name(self) -> str:
        return f"scale-k{self.k}-{self.mode}-{self.n}"


def _receive_counts(emulator: Any, queue_url: str, bodies: set[str]) -> dict[str, int]:
    """ApproximateReceiveCount of the messages on the queue whose bodies are in ``bodies``."""
    return {
        m["Body"]: int(m.get("Attributes", m).get("ApproximateReceiveCount", 0))
        for m in emulator.queue_messages(queue_url)
        if m["Body"] in bodies
    }


def run_scale(
    scenario: ScaleScenario, log_dir: Path, persist_delay: float, resume_delay: float = 1.0
) -> dict[str, Any]:
    """Run one scenario with ``scenario.k`` waiting processes; return its raw figures."""
    noise = scenario.mode == "noise"
    with emulator_process(log_dir, scenario.name) as running:
        emulator = running.emulator
        extra = OTHER_CALLBACKS if noise else 0
        prepared = prepare_callbacks(emulator, f"bench-{scenario.name}", scenario.n + extra)
        arns = list(prepared.bodies)
        waited = arns[: scenario.n]
        others = {prepared.bodies[arn] for arn in arns[scenario.n :]}
        env = base_env(Path(tempfile.mkdtemp(prefix="bench-worker-")))
        env.update(emulator.airflow_connection("aws_default"))
        workers: list[Worker] = []
        logs = []
        try:
            for index in range(scenario.k):
                log = (log_dir / f"{scenario.name}.triggerer-{index}.log").open("wb")
                logs.append(log)
                worker = Worker(env, log)
                workers.append(worker)
                worker.send(
                    json.dumps(
                        {
                            "kind": "ours",
                            "mode": "idle" if scenario.mode == "idle" else "burst",
                            "arns": waited[index :: scenario.k],  # round robin
                            "queue_url": prepared.queue_url,
                            "endpoint_url": emulator.endpoint_url,
                            "time_limit": scenario.time_limit,
                            "persist_delay": persist_delay,
                            "resume_delay": resume_delay,
                            # Every triggerer keeps polling until the noise window has ended.
                            "stay_after_go": scenario.noise_window[1] + 1.0 if noise else 0.0,
                            "sentinels": 1 if noise else 0,
                        }
                    )
                )
            ready = [worker.expect("READY", within=900) for worker in workers]
            emulator.clear_requests()
            sent: dict[str, float] = {}
            idle_counts: dict[str, int] = {}
            idle_window = 0.0
            noise_counts: dict[str, Any] = {}
            emulator_cpu_before: float | None = None
            if scenario.mode == "idle":
                started = time.monotonic()
                time.sleep(scenario.idle_seconds)
                idle_counts = consumer_requests(emulator.request_counts("sqs"))
                idle_window = time.monotonic() - started
                for worker in workers:
                    worker.send("STOP")
            else:
                bodies = {arn: prepared.bodies[arn] for arn in arns}
                if noise:
                    bodies.update({f"foreign-{i}": body for i, body in enumerate(FOREIGN_BODIES)})
                emulator_cpu_before = cpu_seconds(running.pid)
                sent = send_at_once(emulator, Callbacks(prepared.queue_url, bodies))
                t0 = min(sent.values())
                for worker in workers:
                    worker.send(f"GO {t0}")
                if noise:
                    watched = others | set(FOREIGN_BODIES)
                    start, end = scenario.noise_window
                    time.sleep(max(0.0, t0 + start - time.time()))
                    before = _receive_counts(emulator, prepared.queue_url, watched)
                    time.sleep(max(0.0, t0 + end - time.time()))
                    after = _receive_counts(emulator, prepared.queue_url, watched)
                    noise_counts = {
                        "window_s": end - start,
                        "receives": {b: after.get(b, 0) - before.get(b, 0) for b in watched},
                        "left": len(after),
                        "expected": len(watched),
                    }
            results = [worker.expect("RESULT", within=scenario.time_limit + 600) for worker in workers]
            emulator_cpu_after = cpu_seconds(running.pid)
            emulator_cpu = (
                emulator_cpu_after - emulator_cpu_before
                if emulator_cpu_before is not None and emulator_cpu_after is not None
                else None
            )
        finally:
            for worker in workers:
                worker.close()
            for log in logs:
                log.close()
        counts = consumer_requests(emulator.request_counts("sqs"))
        left = emulator.queue_messages(prepared.queue_url)
    fired: dict[str, float] = {}
    receives: dict[str, int] = {}
    failures: dict[str, str] = {}
    for result in results:
        fired.update(result["fired"])
        receives.update(result.get("receives", {}))
        failures.update(result["failures"])
    return {
        "scenario": asdict(scenario),
        "name": scenario.name,
        "ready_seconds": max(r["ready_seconds"] for r in ready),
        "sent": {arn: sent[arn] for arn in waited if arn in sent},
        "fired": fired,
        "receives": receives,
        "failures": failures,
        "maxrss_kb": max(r["maxrss_kb"] for r in results),
        # CPU seconds: the waiting processes' from the send until all their waits fired, the
        # emulator's from the send until the waiting processes were done.
        "triggerers_cpu_s": sum(r.get("burst_cpu_s") or 0.0 for r in results),
        "emulator_cpu_s": emulator_cpu,
        "sqs_requests": counts,
        "idle_sqs_requests": idle_counts,
        "idle_window_s": idle_window,
        "noise": noise_counts,
        "messages_left": len(left),
    }


def random_pollers_receives(k: int, q: float) -> int:
    """
    The ``q``-th percentile of the receives a message takes to reach one of ``k`` pollers, when
    each receive goes to any of them at random: the least ``r`` with ``1 - (1 - 1/k)^r >= q/100``.
    """
    if k <= 1:
        return 1
    return max(1, math.ceil(math.log(1 - q / 100) / math.log(1 - 1 / k)))


def latency_slope(points: list[tuple[float, float]]) -> float | None:
    """The least-squares slope of ``(receives, latency)`` points; ``None`` when receives never vary."""
    if len({x for x, _ in points}) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def scale_figures(raw: dict[str, Any]) -> dict[str, Any]:
    """The issue's figures of one scale-out scenario."""
    scenario = raw["scenario"]
    k, n = scenario["k"], scenario["n"]
    out: dict[str, Any] = {
        "name": raw["name"],
        "k": k,
        "mode": scenario["mode"],
        "n": n,
        "failures": len(raw["failures"]),
        "peak_rss_mb_per_triggerer": raw["maxrss_kb"] / 1024,
        "sqs_requests": raw["sqs_requests"],
    }
    if scenario["mode"] == "idle":
        minutes = raw["idle_window_s"] / 60
        receives = raw["idle_sqs_requests"].get("ReceiveMessage", 0)
        out.update(
            {
                "idle_seconds": raw["idle_window_s"],
                "receive_per_minute_per_triggerer": receives / minutes / k if minutes else None,
            }
        )
        return out
    out.update(burst_figures(raw["sent"], raw["fired"], n, scenario["time_limit"], raw["sqs_requests"]))
    out["messages_left"] = raw["messages_left"]
    # How many receives a callback took to reach its waiter (SQS's receive count then), against
    # what SQS's random choice of poller gives: each receive reaches the waiter's triggerer with
    # a chance of 1 in k, so the p-th percentile is the least r with 1 - (1 - 1/k)^r >= p.
    receives = raw.get("receives", {})
    counts = [float(c) for c in receives.values()]
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        out[f"receives_{name}"] = percentile(counts, q)
        out[f"receives_{name}_random"] = random_pollers_receives(k, q)
    # What one more receive adds to a callback's latency: the least-squares slope of latency
    # against receives (SQS's round trips, and here the share of two CPUs each process gets).
    points = [
        (float(count), raw["fired"][arn] - raw["sent"][arn])
        for arn, count in receives.items()
        if arn in raw["fired"] and arn in raw["sent"]
    ]
    out["seconds_per_receive"] = latency_slope(points)
    out["triggerers_cpu_s"] = raw.get("triggerers_cpu_s")
    out["emulator_cpu_s"] = raw.get("emulator_cpu_s")
    noise = raw.get("noise") or {}
    if noise:
        receives = list(noise["receives"].values())
        minutes = noise["window_s"] / 60
        out.update(
            {
                "noise_left": noise["left"],
                "noise_expected": noise["expected"],
                "noise_receives_per_minute_max": max(receives) / minutes if receives else None,
                "noise_receives_per_minute_mean": sum(receives) / len(receives) / minutes
                if receives
                else None,
            }
        )
    return out
