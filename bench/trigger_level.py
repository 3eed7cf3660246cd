"""
Section 1 and 2 of the benchmark: triggers in one waiting process against the emulator.

Each scenario runs in its own emulator process and its own waiting process
(:mod:`bench.worker`), so that the request counts and the peak memory are that scenario's alone.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from bench.common import (
    CpuSampler,
    base_env,
    burst_figures,
    consumer_requests,
    emulator_process,
    prepare_callbacks,
    send_at_once,
)

KINDS = ("ours", "amazon", "amazon-vis0")
KIND_LABELS = {
    "ours": "SageMakerCallbackTrigger (shared stream)",
    "amazon": "SqsSensorTrigger (jsonpath, queue visibility 30 s)",
    "amazon-vis0": "SqsSensorTrigger (jsonpath, receive visibility 0)",
}


@dataclass(frozen=True)
class Scenario:
    """One run of one kind of wait."""

    kind: str
    #: ``burst``: n messages sent at once; ``idle``: no message for ``idle_seconds``.
    mode: str
    n: int
    time_limit: float = 240.0
    idle_seconds: float = 300.0

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.mode}-{self.n}"


class Worker:
    """A :mod:`bench.worker` process; its protocol lines are read on a thread, the rest logged."""

    def __init__(self, env: dict[str, str], log: IO[bytes]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.worker"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        self._lines: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self._log = log
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode(errors="replace")
            tag, _, rest = line.partition(" ")
            if tag in ("READY", "RESULT"):
                self._lines.put((tag, json.loads(rest)))
            else:
                self._log.write(raw)
        self._lines.put(None)

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((line + "\n").encode())
        self.process.stdin.flush()

    def expect(self, tag: str, within: float) -> dict[str, Any]:
        try:
            item = self._lines.get(timeout=within)
        except queue.Empty:
            raise TimeoutError(f"the waiting process sent no {tag} within {within:.0f} s") from None
        if item is None:
            raise RuntimeError(f"the waiting process exited before {tag} (exit code {self.process.wait()})")
        got, payload = item
        if got != tag:
            raise RuntimeError(f"expected {tag} from the waiting process, got {got}")
        return payload

    def close(self) -> None:
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


def run_scenario(
    scenario: Scenario, log_dir: Path, persist_delay: float, resume_delay: float = 1.0
) -> dict[str, Any]:
    """Run one scenario; return its raw figures."""
    with emulator_process(log_dir, scenario.name) as running, CpuSampler(running.pid) as emulator_cpu:
        emulator = running.emulator
        prepared_at = time.monotonic()
        callbacks = prepare_callbacks(emulator, f"bench-{scenario.name}", scenario.n)
        setup_seconds = time.monotonic() - prepared_at
        emulator.clear_requests()
        env = base_env(Path(tempfile.mkdtemp(prefix="bench-worker-")))
        env.update(emulator.airflow_connection("aws_default"))
        config = {
            "kind": scenario.kind,
            "mode": scenario.mode,
            "arns": list(callbacks.bodies),
            "queue_url": callbacks.queue_url,
            "endpoint_url": emulator.endpoint_url,
            "time_limit": scenario.time_limit,
            "persist_delay": persist_delay,
            "resume_delay": resume_delay,
        }
        with (log_dir / f"{scenario.name}.worker.log").open("wb") as log:
            worker = Worker(env, log)
            try:
                worker.send(json.dumps(config))
                ready = worker.expect("READY", within=900)
                sent: dict[str, float] = {}
                idle_counts: dict[str, int] = {}
                idle_window = 0.0
                if scenario.mode == "burst":
                    sent = send_at_once(emulator, callbacks)
                    worker.send(f"GO {min(sent.values())}")
                    result = worker.expect("RESULT", within=scenario.time_limit + 300)
                else:
                    emulator.clear_requests()
                    window_start = time.monotonic()
                    time.sleep(scenario.idle_seconds)
                    idle_counts = consumer_requests(emulator.request_counts("sqs"))
                    idle_window = time.monotonic() - window_start
                    worker.send("STOP")
                    result = worker.expect("RESULT", within=300)
            finally:
                worker.close()
        counts = consumer_requests(emulator.request_counts("sqs"))
        sagemaker = consumer_requests(emulator.request_counts("sagemaker"))
        left = len(emulator.queue_messages(callbacks.queue_url))
    return {
        "scenario": asdict(scenario),
        "name": scenario.name,
        "setup_seconds": setup_seconds,
        "ready_seconds": ready["ready_seconds"],
        "sent": sent,
        "fired": result["fired"],
        "failures": result["failures"],
        "maxrss_kb": result["maxrss_kb"],
        "max_loop_lag_s": result["max_loop_lag_s"],
        "sqs_requests": counts,
        "sagemaker_requests": sagemaker,
        "idle_sqs_requests": idle_counts,
        "idle_window_s": idle_window,
        "messages_left": left,
        "worker_cpu_s": result.get("burst_cpu_s"),
        "emulator_cpu_s": emulator_cpu.between(min(sent.values()), max(result["fired"].values()))
        if sent and result["fired"]
        else None,
    }


def figures(raw: dict[str, Any], baseline_kb: int | None) -> dict[str, Any]:
    """The issue's figures for one scenario, from its raw results."""
    scenario = raw["scenario"]
    n = scenario["n"]
    fired = raw["fired"]
    limit = scenario["time_limit"]
    out: dict[str, Any] = {
        "name": raw["name"],
        "kind": scenario["kind"],
        "mode": scenario["mode"],
        "n": n,
        "peak_rss_mb": raw["maxrss_kb"] / 1024,
        "memory_above_one_wait_mb": None if baseline_kb is None else (raw["maxrss_kb"] - baseline_kb) / 1024,
        "sqs_requests": raw["sqs_requests"],
        "sagemaker_requests": raw["sagemaker_requests"],
        "max_loop_lag_s": raw["max_loop_lag_s"],
        "worker_cpu_s": raw.get("worker_cpu_s"),
        "emulator_cpu_s": raw.get("emulator_cpu_s"),
        "ready_seconds": raw["ready_seconds"],
        "failures": len(raw["failures"]),
        "messages_left": raw["messages_left"],
    }
    if scenario["mode"] == "burst":
        out.update(burst_figures(raw["sent"], fired, n, limit, raw["sqs_requests"]))
    else:
        minutes = raw["idle_window_s"] / 60
        receives = raw["idle_sqs_requests"].get("ReceiveMessage", 0)
        out.update(
            {
                "idle_seconds": raw["idle_window_s"],
                "idle_sqs_requests": raw["idle_sqs_requests"],
                "receive_per_minute": receives / minutes if minutes else None,
            }
        )
    return out
