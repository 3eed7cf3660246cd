"""
What every part of the benchmark shares: the environment, the emulator process, the callback
messages of real executions and sending them at once.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.config import Config

from airflow_sm_callback.testing import CallbackEmulator

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
#: The queue's visibility timeout (SQS's default), as the issue sets it.
QUEUE_VISIBILITY = 30
#: Header that makes the emulator log a request as internal (the producer side, not the consumer).
INTERNAL_HEADER = "X-Emulator-Internal"
#: Consumer-side SQS actions counted per callback (sends are the pipeline's, marked internal).
SEND_ACTIONS = frozenset({"SendMessage", "SendMessageBatch"})


def base_env(home: Path) -> dict[str, str]:
    """Environment for benchmark subprocesses: a throwaway AIRFLOW_HOME and dummy AWS credentials."""
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
    )
    env.pop("AWS_PROFILE", None)
    env.pop("AWS_ENDPOINT_URL", None)
    return env


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far, from ``/proc`` (``None`` elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuSampler:
    """Samples a process's CPU time ten times a second, on a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            used = cpu_seconds(self.pid)
            if used is not None:
                self.samples.append((time.time(), used))

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def between(self, start: float, end: float) -> float | None:
        """CPU seconds used between two epoch times (to the nearest sample)."""
        inside = [used for at, used in self.samples if start - 0.1 <= at <= end + 0.1]
        return inside[-1] - inside[0] if len(inside) >= 2 else None


@dataclass
class EmulatorProcess:
    """The emulator running in its own process."""

    emulator: CallbackEmulator
    pid: int


@contextmanager
def emulator_process(log_dir: Path, name: str) -> Iterator[EmulatorProcess]:
    """
    The emulator in its own process (so the waiting process's memory is the waits' alone).

    :param log_dir: where its output goes.
    :param name: the log file's stem.
    :return: a handle connected to it, and its process id.
    """
    home = Path(tempfile.mkdtemp(prefix="bench-emulator-"))
    log = (log_dir / f"{name}.emulator.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_sm_callback.testing", "--port", "0"],
        env=base_env(home),
        stdout=subprocess.PIPE,
        stderr=log,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode().strip()
        if not line.startswith("endpoint_url="):
            raise RuntimeError(f"the emulator did not start (see {log.name}): {line!r}")
        yield EmulatorProcess(CallbackEmulator.connect(line.partition("=")[2]), process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        log.close()


def internal_sqs(emulator: CallbackEmulator) -> Any:
    """An SQS client whose requests the emulator logs as internal (the pipeline's side)."""
    client = emulator.client("sqs", config=Config(max_pool_connections=16, retries={"max_attempts": 3}))

    def mark(request: Any, **_: Any) -> None:
        request.headers[INTERNAL_HEADER] = "1"

    client.meta.events.register("before-sign", mark)
    return client


def callback_pipeline(queue_url: str) -> dict[str, Any]:
    """A pipeline whose only step is a callback step sending to ``queue_url``."""
    return {
        "Version": "2020-12-01",
        "Parameters": [],
        "Steps": [
            {
                "Name": "Score",
                "Type": "Callback",
                "Arguments": {"step_name": "score"},
                "SqsQueueUrl": queue_url,
                "OutputParameters": [{"OutputName": "rows", "OutputType": "Integer"}],
            }
        ],
    }


@dataclass(frozen=True)
class Callbacks:
    """The callback messages of ``n`` real executions, taken off their queue to be sent again."""

    queue_url: str
    #: execution ARN -> the message body its callback step sent.
    bodies: dict[str, str]


def prepare_callbacks(emulator: CallbackEmulator, queue_name: str, n: int) -> Callbacks:
    """
    Start ``n`` executions whose callback step sends to a fresh queue, keep their messages' bodies
    and empty the queue, so that they can all be sent again at one recorded moment.

    Every body belongs to a real open callback step.
    """
    queue_url = emulator.create_queue(queue_name, visibility_timeout=QUEUE_VISIBILITY)
    if n == 0:
        return Callbacks(queue_url, {})
    pipeline = f"bench-{uuid.uuid4().hex[:8]}"
    emulator.create_pipeline(pipeline, callback_pipeline(queue_url))
    with ThreadPoolExecutor(8) as pool:
        arns = list(pool.map(lambda _: emulator.start_execution(pipeline), range(n)))
    bodies: dict[str, str] = {}
    for message in emulator.queue_messages(queue_url):
        body = json.loads(message["Body"])
        bodies[body["pipelineExecutionArn"]] = message["Body"]
    if sorted(bodies) != sorted(arns):
        raise RuntimeError(f"expected {n} callback messages, found {len(bodies)}")
    emulator.purge_queue(queue_url)
    return Callbacks(queue_url, {arn: bodies[arn] for arn in arns})


def send_at_once(emulator: CallbackEmulator, callbacks: Callbacks, threads: int = 10) -> dict[str, float]:
    """
    Send every body with ``SendMessageBatch`` (10 a request, ``threads`` requests at a time).

    :return: execution ARN -> epoch time just before the request that carried it was sent.
    """
    client = internal_sqs(emulator)
    items = list(callbacks.bodies.items())
    chunks = [items[i : i + 10] for i in range(0, len(items), 10)]

    def send(chunk: list[tuple[str, str]]) -> dict[str, float]:
        started = time.time()
        response = client.send_message_batch(
            QueueUrl=callbacks.queue_url,
            Entries=[{"Id": str(i), "MessageBody": body} for i, (_, body) in enumerate(chunk)],
        )
        if response.get("Failed"):
            raise RuntimeError(f"SendMessageBatch failed: {response['Failed']}")
        return {arn: started for arn, _ in chunk}

    sent: dict[str, float] = {}
    with ThreadPoolExecutor(threads) as pool:
        for times in pool.map(send, chunks):
            sent.update(times)
    return sent


def consumer_requests(counts: Mapping[str, int]) -> dict[str, int]:
    """The SQS requests the waiting side made (sends are the pipelines')."""
    return {action: n for action, n in sorted(counts.items()) if action not in SEND_ACTIONS and n}


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank), ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def latency_figures(latencies: list[float], n: int, prefix: str = "") -> dict[str, Any]:
    """
    p50, p99 and max of ``latencies`` for ``n`` waits, those that did not fire within the limit
    counting as later than every one that did (``None`` with ``..._over_limit`` set).
    """
    padded = sorted(latencies) + [math.inf] * (n - len(latencies))
    figures: dict[str, Any] = {}
    for name, q in (("p50", 50), ("p99", 99)):
        value = percentile(padded, q)
        over = value is not None and math.isinf(value)
        figures[f"{prefix}{name}_s"] = None if value is None or over else value
        figures[f"{prefix}{name}_over_limit"] = over
    figures[f"{prefix}max_s"] = max(latencies) if latencies else None
    return figures


def burst_figures(
    sent: Mapping[str, float],
    fired: Mapping[str, float],
    n: int,
    limit: float,
    sqs_requests: Mapping[str, int],
) -> dict[str, Any]:
    """A burst's figures: how many fired within ``limit``, latency from send, SQS requests per callback."""
    latencies = sorted(
        fired[arn] - sent[arn] for arn in fired if arn in sent and fired[arn] - sent[arn] <= limit
    )
    total = sum(sqs_requests.values())
    return {
        "fired": len(latencies),
        "time_limit_s": limit,
        **latency_figures(latencies, n, prefix="latency_"),
        "sqs_requests_total": total,
        "sqs_requests_per_callback": total / len(latencies) if latencies else None,
    }
