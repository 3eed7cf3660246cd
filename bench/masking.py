"""
Masking many callback tokens: Airflow's public call against the provider's batched registration.

Each way runs in a fresh process (its own secrets masker), N tokens of the callback shape; the
figure is the wall time of the registration, which in a triggerer is event-loop time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

WAYS = {
    "mask_secret per token (public)": "one",
    "mask_secret with the list (public)": "list",
    "batched, one call": "batched",
    "batched, 10 calls of N/10 (a burst's batches)": "batches",
}

_CODE = """
import json, random, string, sys, time
from airflow_sm_callback import _airflow
from airflow_sm_callback._airflow import mask_secret
way, n = sys.argv[1], int(sys.argv[2])
random.seed(7)
tokens = ["".join(random.choices(string.ascii_letters + string.digits, k=10)) for _ in range(n)]
began = time.perf_counter()
if way == "one":
    for token in tokens:
        mask_secret(token)
elif way == "list":
    mask_secret(tokens)
elif way == "batched":
    _airflow.register_tokens(tokens)
else:
    step = max(1, n // 10)
    for start in range(0, n, step):
        _airflow.register_tokens(tokens[start : start + step])
seconds = time.perf_counter() - began
assert _airflow.redact(" ".join(tokens[:5])) == " ".join(["***"] * 5)
print(json.dumps({"seconds": seconds}))
"""


def run_masking(n: int = 1000) -> dict[str, Any]:
    """Seconds to register ``n`` tokens each way."""
    rows = []
    for label, way in WAYS.items():
        done = subprocess.run(
            [sys.executable, "-c", _CODE, way, str(n)],
            capture_output=True,
            text=True,
            check=True,
            timeout=900,
        )
        seconds = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
        rows.append({"way": label, "n": n, "seconds": round(seconds, 3)})
        print(f"          {label}: {seconds:.2f} s for {n} tokens", flush=True)
    return {"n": n, "rows": rows}


def masking_table(masking: dict[str, Any]) -> str:
    """The masking figures as a Markdown table."""
    lines = ["| registering N tokens | N | seconds |", "|---|---|---|"]
    lines += [f"| {row['way']} | {row['n']:,} | {row['seconds']:.2f} |" for row in masking["rows"]]
    return "\n".join(lines)
