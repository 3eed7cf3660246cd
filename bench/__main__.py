"""
``python -m bench``: this project's trigger beside the amazon provider's ``SqsSensorTrigger``.

Trigger level (one waiting process per scenario, the emulator in its own process): N waits on
one queue, each for its own execution, the N callbacks sent at once (N = 20, 200, 1,000, and 1
for the memory baseline); 1,000 waits idle for five minutes. End to end: 50 concurrent DAG runs
under the real scheduler, triggerer, DAG processor and API server, for each sensor.

Writes ``bench/results/latest.json`` and ``bench/results/latency.png`` (the processes' logs go to
a temporary directory, printed first), and prints the tables. ``--quick`` runs a small smoke version.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT
from bench.report import (
    e2e_table,
    evaluate,
    load_average,
    machine,
    plot,
    table,
    targets_table,
    versions,
    write_doc,
    write_json,
)
from bench.scale_out import ScaleScenario, run_scale, scale_figures
from bench.scale_report import (
    scale_plot,
    scale_receives_table,
    scale_table,
    scale_targets,
    scale_targets_table,
)
from bench.trigger_level import KINDS, Scenario, figures, run_scenario

#: Seconds between an event and its persist confirmation (the metadata database write and the
#: triggerer's next state sync).
PERSIST_DELAY = 1.0


def airflow_version() -> str:
    """The installed Airflow's version (figures are kept per version)."""
    from importlib.metadata import version

    return version("apache-airflow")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small N, short idle, few runs: a smoke run")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="which triggers")
    parser.add_argument("--sizes", nargs="+", type=int, help="N of the burst scenarios (default 20 200 1000)")
    parser.add_argument("--idle-waits", type=int, help="waits of the idle scenario (default 1000)")
    parser.add_argument("--idle-seconds", type=float, help="length of the idle scenario (default 300)")
    parser.add_argument("--time-limit", type=float, help="seconds a burst may take (default 240)")
    parser.add_argument("--persist-delay", type=float, default=PERSIST_DELAY, help="seconds (default 1.0)")
    parser.add_argument("--e2e-runs", type=int, help="concurrent DAG runs end to end (default 50)")
    parser.add_argument("--e2e-time-limit", type=float, help="seconds (default 300)")
    parser.add_argument("--skip-trigger", action="store_true", help="skip the trigger-level scenarios")
    parser.add_argument("--skip-idle", action="store_true", help="skip the idle scenarios")
    parser.add_argument("--skip-e2e", action="store_true", help="skip the end-to-end scenarios")
    parser.add_argument("--skip-masking", action="store_true", help="skip the token masking measurement")
    parser.add_argument("--skip-scale-out", action="store_true", help="skip the several-triggerer scenarios")
    parser.add_argument(
        "--triggerers",
        nargs="+",
        type=int,
        help="k of the several-triggerer scenarios (default 1 2 4; add 8 on a machine with more CPUs)",
    )
    parser.add_argument("--scale-n", type=int, help="waits spread over the k triggerers (default 1000)")
    parser.add_argument(
        "--e2e-triggerers-only",
        action="store_true",
        help="end to end: only this project's sensor with 1, 2 and 4 triggerers (kept beside the rest)",
    )
    parser.add_argument(
        "--only",
        choices=["masking", "scale-out"],
        help="run one section alone (masking: printed only; scale-out: kept beside the other figures)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory (default bench/results)")
    parser.add_argument(
        "--doc",
        type=Path,
        help="Markdown file whose results section to rewrite (default: docs/performance.md after a "
        "full run into bench/results, none otherwise)",
    )
    parser.add_argument(
        "--logs", type=Path, help="where the processes' logs go (default: a new temporary directory)"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    if args.doc is None and not quick and args.out == RESULTS:
        args.doc = ROOT / "docs" / "performance.md"
    args.sizes = args.sizes or ([20] if quick else [20, 200, 1000])
    args.idle_waits = args.idle_waits or (50 if quick else 1000)
    args.idle_seconds = args.idle_seconds or (20.0 if quick else 300.0)
    args.time_limit = args.time_limit or (20.0 if quick else 240.0)
    args.e2e_runs = args.e2e_runs or (3 if quick else 50)
    args.e2e_time_limit = args.e2e_time_limit or (60.0 if quick else 300.0)
    args.triggerers = args.triggerers or ([1, 2] if quick else [1, 2, 4])
    args.scale_n = args.scale_n or (40 if quick else 1000)
    if args.only == "scale-out":
        args.skip_trigger = args.skip_masking = args.skip_e2e = True
    return args


def run_scale_out(
    args: argparse.Namespace, logs: Path, began: float, this_run: dict[str, Any]
) -> dict[str, Any]:
    """The several-triggerer scenarios, side by side: for each k, the burst, the noise, the idle."""
    figures: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    time_limit = args.time_limit
    idle_seconds = min(args.idle_seconds, 180.0)
    window = (20.0, 50.0) if args.quick else (60.0, 180.0)
    for mode in ("burst", "noise", "idle"):
        if mode == "idle" and args.skip_idle:
            continue
        for k in args.triggerers:
            scenario = ScaleScenario(
                k, mode, args.scale_n, time_limit=time_limit, idle_seconds=idle_seconds, noise_window=window
            )
            print(f"[{time.monotonic() - began:7.0f} s] {scenario.name} ...", flush=True)
            result = run_scale(scenario, logs, args.persist_delay)
            raw.append({k: v for k, v in result.items() if k not in ("sent", "fired", "receives")})
            figure = scale_figures(result)
            figure["airflow"] = airflow_version()
            figures.append(figure)
            if mode == "idle":
                print(
                    f"          ReceiveMessage/min/triggerer {figure['receive_per_minute_per_triggerer']:.2f}"
                )
            else:
                print(
                    f"          fired {figure['fired']}/{figure['n']}, p50 {figure['latency_p50_s']}, "
                    f"p99 {figure['latency_p99_s']}, {figure['sqs_requests_per_callback']} SQS req./callback, "
                    f"receives p99 {figure['receives_p99']} (random {figure['receives_p99_random']}), "
                    f"{figure['seconds_per_receive']} s a further receive",
                    flush=True,
                )
    return {"figures": figures, "targets": scale_targets(figures), "run": this_run, "raw": raw}


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    """Side by side: for each size, every kind in turn; the one-wait baselines first."""
    result: list[Scenario] = []
    for n in [1, *sorted(set(args.sizes) - {1})]:
        result.extend(Scenario(kind, "burst", n, time_limit=args.time_limit) for kind in args.kinds)
    if not args.skip_idle:
        baseline_seconds = min(args.idle_seconds, 60.0)
        result.extend(Scenario(kind, "idle", 1, idle_seconds=baseline_seconds) for kind in args.kinds)
        result.extend(
            Scenario(kind, "idle", args.idle_waits, idle_seconds=args.idle_seconds) for kind in args.kinds
        )
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.only == "masking":
        from bench.masking import masking_table, run_masking

        print(masking_table(run_masking(100 if args.quick else 1000)))
        return 0
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    logs: Path = args.logs or Path(tempfile.mkdtemp(prefix="bench-logs-"))
    logs.mkdir(parents=True, exist_ok=True)
    print(f"Logs: {logs}", flush=True)
    began = time.monotonic()
    payload: dict[str, Any] = {
        "command": " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "load_average_at_start": load_average(),
        "settings": {
            "quick": args.quick,
            "persist_delay_s": args.persist_delay,
            "time_limit_s": args.time_limit,
            "idle_seconds": args.idle_seconds,
            "queue_visibility_timeout_s": 30,
        },
    }
    all_figures: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    previous = out / "latest.json"
    if args.skip_trigger and previous.exists():
        # Keep the trigger-level figures of the last run beside the new end-to-end ones.
        earlier = json.loads(previous.read_text())
        if "trigger_level" in earlier:
            payload["trigger_level"] = earlier["trigger_level"]
            # Figures kept through several end-to-end runs keep the run that measured them.
            payload["trigger_level_from"] = earlier.get("trigger_level_from") or {
                "command": earlier.get("command"),
                "started_at": earlier.get("started_at"),
                "machine": earlier.get("machine"),
            }
            all_figures = earlier["trigger_level"]["figures"]
    version = airflow_version()
    this_run = {k: payload[k] for k in ("command", "started_at", "machine")}
    if not args.skip_trigger:
        runs: dict[str, Any] = {}
        if previous.exists():
            # The other Airflow versions' figures stay beside this run's (the same tables), each
            # with the run that measured it.
            before = json.loads(previous.read_text())
            earlier = before.get("trigger_level") or {}
            kept = [f for f in earlier.get("figures", []) if f.get("airflow", "") not in ("", version)]
            all_figures = kept
            runs = {v: r for v, r in (earlier.get("runs") or {}).items() if v != version}
        runs[version] = this_run
        baselines: dict[tuple[str, str], int] = {}
        for scenario in scenarios(args):
            print(f"[{time.monotonic() - began:7.0f} s] {scenario.name} ...", flush=True)
            result = run_scenario(scenario, logs, args.persist_delay)
            raw.append(result)
            if scenario.n == 1:
                baselines[scenario.kind, scenario.mode] = result["maxrss_kb"]
            figure = figures(result, baselines.get((scenario.kind, scenario.mode)))
            figure["airflow"] = version
            all_figures.append(figure)
            summary = (
                f"fired {figure['fired']}/{figure['n']}, p50 {figure['latency_p50_s']}, p99 {figure['latency_p99_s']}"
                if scenario.mode == "burst"
                else f"ReceiveMessage/min {figure['receive_per_minute']:.1f}"
            )
            print(f"          {summary}, peak RSS {figure['peak_rss_mb']:.0f} MB", flush=True)
        payload["trigger_level"] = {
            "figures": all_figures,
            "targets": evaluate(all_figures),
            "runs": runs,
            "raw": raw,
        }
        write_json(out / "latest.json", payload)
        newest = versions(all_figures)[0]
        plot([f for f in all_figures if f.get("airflow", "") == newest], out / "latency.png")
    if not args.skip_masking:
        from bench.masking import run_masking

        print(f"[{time.monotonic() - began:7.0f} s] masking tokens ...", flush=True)
        payload["masking"] = run_masking(100 if args.quick else 1000)
    elif previous.exists() and "masking" in json.loads(previous.read_text()):
        payload["masking"] = json.loads(previous.read_text())["masking"]
    if not args.skip_scale_out:
        payload["scale_out"] = run_scale_out(args, logs, began, this_run)
        write_json(out / "latest.json", payload)
        scale_plot(payload["scale_out"]["figures"], out / "scale_out.png")
    elif previous.exists() and "scale_out" in json.loads(previous.read_text()):
        payload["scale_out"] = json.loads(previous.read_text())["scale_out"]
    if not args.skip_e2e:
        from bench.e2e import ROUNDS, run_e2e

        print(f"[{time.monotonic() - began:7.0f} s] end to end, {args.e2e_runs} runs per DAG ...", flush=True)
        payload["end_to_end"] = run_e2e(
            logs,
            args.e2e_runs,
            args.e2e_time_limit,
            rounds=1 if args.quick else ROUNDS,
            triggerers=tuple(k for k in args.triggerers if k <= 4),
            only_triggerers=args.e2e_triggerers_only,
        )
        payload["end_to_end"]["run"] = this_run
        if (
            args.e2e_triggerers_only
            and previous.exists()
            and "end_to_end" in json.loads(previous.read_text())
        ):
            # The several-triggerer rounds join the earlier end-to-end figures.
            merged = json.loads(previous.read_text())["end_to_end"]
            merged["scenarios"].update(payload["end_to_end"]["scenarios"])
            merged["triggerers"] = payload["end_to_end"]["triggerers"]
            merged["triggerers_run"] = this_run
            payload["end_to_end"] = merged
    elif previous.exists() and "end_to_end" in json.loads(previous.read_text()):
        # Kept, with the run that measured it, beside the new figures.
        payload["end_to_end"] = json.loads(previous.read_text())["end_to_end"]
    payload["load_average_at_end"] = load_average()
    payload["duration_s"] = time.monotonic() - began
    write_json(out / "latest.json", payload)

    if all_figures:
        print("\nTrigger level (one waiting process; latency from send to trigger event)\n")
        print(table(all_figures))
        print("\nTargets (this project's trigger)\n")
        print(targets_table(payload["trigger_level"]["targets"]))
    if "masking" in payload:
        from bench.masking import masking_table

        print("\nMasking callback tokens\n")
        print(masking_table(payload["masking"]))
    if "scale_out" in payload:
        print("\nSeveral triggerers on one queue\n")
        print(scale_table(payload["scale_out"]["figures"]))
        print()
        print(scale_receives_table(payload["scale_out"]["figures"]))
        print()
        print(scale_targets_table(payload["scale_out"]["targets"]))
    if "end_to_end" in payload:
        print("\nEnd to end (latency from callback sent to sensor task succeeded)\n")
        print(e2e_table(payload["end_to_end"]))
    if args.doc is not None:
        write_doc(args.doc, payload)
        print(f"\nUpdated {args.doc}")
    print(f"\nWrote {out / 'latest.json'}" + ("" if not all_figures else f" and {out / 'latency.png'}"))
    print(f"Took {payload['duration_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
