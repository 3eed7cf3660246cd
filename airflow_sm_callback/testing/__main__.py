"""
``python -m airflow_sm_callback.testing [--host 127.0.0.1] [--port 0] [--region us-east-1]``.

Runs the emulator in the foreground. The first line on stdout (flushed) is
``endpoint_url=http://HOST:PORT``; it runs until SIGINT or SIGTERM and then exits 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from .emulator import DEFAULT_REGION, CallbackEmulator


def main(argv: list[str] | None = None) -> int:
    """
    Run the emulator until a signal arrives.

    :param argv: command-line arguments (``sys.argv[1:]`` when omitted).
    :return: the exit code.
    """
    parser = argparse.ArgumentParser(
        prog="python -m airflow_sm_callback.testing",
        description="Local emulator of the SageMaker Pipelines callback side (plus moto's SQS).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default)")
    parser.add_argument("--region", default=DEFAULT_REGION, help=f"default region (default {DEFAULT_REGION})")
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    emulator = CallbackEmulator(host=args.host, port=args.port, region=args.region).start()
    try:
        print(f"endpoint_url={emulator.endpoint_url}", flush=True)
        while not stop.wait(0.2):
            pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
