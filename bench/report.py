"""The benchmark's figures: the table, the targets, the JSON and the plot."""

from __future__ import annotations

import json
import os
import platform
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.trigger_level import KIND_LABELS, KINDS

#: Section 2 of the issue: the targets for this project's trigger (one process).
TARGETS = {
    "fired_all": "N = 20 / 200 / 1,000: every wait fired",
    "p99_1000": "p99 latency from send, N = 1,000: <= 2 s",
    "requests_1000": "SQS requests per callback, N = 1,000: <= 0.5",
    "idle_receives": "ReceiveMessage per minute, 1,000 idle waits: <= 3.2",
    "memory_1000": "peak memory of 1,000 waits above one wait: <= 117 MB",
}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    memory_gb = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory_gb = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    packages: dict[str, str | None] = {}
    for name in ("apache-airflow-core", "apache-airflow-providers-amazon", "aiobotocore", "moto", "werkzeug"):
        try:
            packages[name] = version(name)
        except Exception:
            packages[name] = None
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_gb": memory_gb,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": packages,
    }


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def versions(figures: list[dict[str, Any]]) -> list[str]:
    """The Airflow versions the figures were measured on, newest first."""
    found = {f.get("airflow", "") for f in figures}
    return sorted(found, key=lambda v: tuple(int(p) for p in v.split(".") if p.isdigit()), reverse=True)


def evaluate(figures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target, per Airflow version, with the measured figure and whether it was met."""
    results: list[dict[str, Any]] = []
    for airflow in versions(figures):
        results.extend(_evaluate([f for f in figures if f.get("airflow", "") == airflow], airflow))
    return results


def _evaluate(figures: list[dict[str, Any]], version: str) -> list[dict[str, Any]]:
    ours = {(f["mode"], f["n"]): f for f in figures if f["kind"] == "ours"}
    results: list[dict[str, Any]] = []

    def add(key: str, measured: Any, met: bool | None, detail: str = "") -> None:
        results.append(
            {
                "target": key,
                "text": TARGETS[key],
                "measured": measured,
                "met": met,
                "detail": detail,
                "airflow": version,
            }
        )

    bursts = sorted(n for mode, n in ours if mode == "burst" and n > 1)
    if bursts:
        fired = {n: f"{ours['burst', n]['fired']}/{n}" for n in bursts}
        add("fired_all", fired, all(ours["burst", n]["fired"] == n for n in bursts))
    largest = bursts[-1] if bursts else None
    if largest is not None:
        figure = ours["burst", largest]
        p99 = figure["latency_p99_s"]
        add(
            "p99_1000",
            p99,
            None if largest != 1000 else (p99 is not None and p99 <= 2.0),
            f"N = {largest}",
        )
        per = figure["sqs_requests_per_callback"]
        add(
            "requests_1000",
            per,
            None if largest != 1000 else (per is not None and per <= 0.5),
            f"N = {largest}",
        )
    idle = [f for (mode, n), f in ours.items() if mode == "idle" and n > 1]
    if idle:
        figure = max(idle, key=lambda f: f["n"])
        per_minute = figure["receive_per_minute"]
        add(
            "idle_receives",
            per_minute,
            per_minute is not None and per_minute <= 3.2,
            f"N = {figure['n']}, {figure['idle_seconds']:.0f} s",
        )
        memory = figure["memory_above_one_wait_mb"]
        add(
            "memory_1000",
            memory,
            None if figure["n"] != 1000 or memory is None else memory <= 117,
            f"{figure['n']} idle waits",
        )
    return results


def _s(value: float | None, over: bool = False, limit: float | None = None) -> str:
    if over:
        return f">{limit:.0f}" if limit else ">limit"
    return "-" if value is None else f"{value:.2f}"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}".replace("-0", "0") if abs(value) < 0.5 else f"{value:.0f}"


def table(figures: list[dict[str, Any]]) -> str:
    """The figures as a Markdown table (one row per scenario)."""
    lines = [
        "| Airflow | trigger | scenario | N | fired | p50 s | p99 s | SQS req. / callback | ReceiveMessage / min | peak RSS MB | above 1 wait MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [
        (airflow, kind, f)
        for airflow in versions(figures)
        for kind in KINDS
        for f in sorted(
            (f for f in figures if f["kind"] == kind and f.get("airflow", "") == airflow),
            key=lambda f: (f["mode"], f["n"]),
        )
    ]
    for airflow, kind, f in rows:
        if f["mode"] == "burst":
            limit = f["time_limit_s"]
            row = [
                airflow,
                kind,
                "sent at once",
                str(f["n"]),
                f"{f['fired']}/{f['n']}",
                _s(f["latency_p50_s"], f["latency_p50_over_limit"], limit),
                _s(f["latency_p99_s"], f["latency_p99_over_limit"], limit),
                _s(f["sqs_requests_per_callback"]),
                "",
            ]
        else:
            row = [
                airflow,
                kind,
                f"idle {f['idle_seconds']:.0f} s",
                str(f["n"]),
                "",
                "",
                "",
                "",
                _s(f["receive_per_minute"]),
            ]
        row += [_mb(f["peak_rss_mb"]), _mb(f["memory_above_one_wait_mb"])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def targets_table(results: list[dict[str, Any]]) -> str:
    lines = ["| Airflow | target | measured | met |", "|---|---|---|---|"]
    for r in results:
        measured = r["measured"]
        if isinstance(measured, float):
            measured = f"{measured:.2f}"
        elif isinstance(measured, dict):
            measured = ", ".join(f"{k}: {v}" for k, v in measured.items())
        met = {True: "yes", False: "**no**", None: "not measured"}[r["met"]]
        detail = f" ({r['detail']})" if r["detail"] else ""
        lines.append(f"| {r.get('airflow', '')} | {r['text']} | {measured}{detail} | {met} |")
    return "\n".join(lines)


def e2e_table(e2e: dict[str, Any]) -> str:
    lines = [
        "| DAG | runs | succeeded in limit | p50 s | p99 s | max s | to event p50 s | event to task start p50 s "
        "| task run p50 s | SQS requests | SQS req. / run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in e2e.get("scenarios", {}).items():
        total = r.get("sqs_requests_total")
        per = None if not r.get("succeeded") or total is None else total / r["succeeded"]
        lines.append(
            f"| {name} | {r['runs']} | {r['succeeded']} | {_s(r.get('p50_s'), r.get('p50_over_limit', False), r.get('time_limit_s'))} "
            f"| {_s(r.get('p99_s'), r.get('p99_over_limit', False), r.get('time_limit_s'))} | {_s(r.get('max_s'))} "
            f"| {_s(r.get('to_trigger_event_p50_s'))} | {_s(r.get('event_to_task_start_p50_s'))} "
            f"| {_s(r.get('task_run_p50_s'))} | {'-' if total is None else total} | {_s(per)} |"
        )
    return "\n".join(lines)


def plot(figures: list[dict[str, Any]], path: Path) -> None:
    """
    Latency (p50 and p99, one panel each) against N for every trigger. A quantile later than the
    time limit (waits that never fired) is drawn as a triangle at the limit, with how many fired.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    colors = {"ours": "tab:blue", "amazon": "tab:red", "amazon-vis0": "tab:orange"}
    offsets = {"ours": -14, "amazon": 8, "amazon-vis0": -26}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    limit = None
    for ax, quantile in zip(axes, ("p50", "p99"), strict=True):
        for kind in KINDS:
            points = sorted(
                (f for f in figures if f["kind"] == kind and f["mode"] == "burst"), key=lambda f: f["n"]
            )
            if not points:
                continue
            limit = points[0]["time_limit_s"]
            xs = [f["n"] for f in points]
            ys = [
                f["time_limit_s"] if f[f"latency_{quantile}_over_limit"] else f[f"latency_{quantile}_s"]
                for f in points
            ]
            ax.plot(xs, ys, "-", color=colors[kind], label=KIND_LABELS[kind])
            for f, x, y in zip(points, xs, ys, strict=True):
                over = f[f"latency_{quantile}_over_limit"]
                ax.plot([x], [y], "^" if over else "o", color=colors[kind], markersize=7 if over else 5)
                if f["fired"] < f["n"]:
                    ax.annotate(
                        f"{f['fired']}/{f['n']} fired",
                        (x, y),
                        textcoords="offset points",
                        xytext=(4, offsets[kind]),
                        fontsize=7,
                        color=colors[kind],
                    )
        ax.set_xscale("log")
        ax.set_yscale("log")
        sizes = sorted({f["n"] for f in figures if f["mode"] == "burst"})
        if sizes:
            ax.set_xticks(sizes)
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            ax.set_xlim(sizes[0] / 1.5, sizes[-1] * 3)
        ax.set_xlabel("waits on one queue (N); N callbacks sent at once")
        ax.set_title(f"{quantile} latency, send to trigger event")
        ax.grid(True, which="both", linewidth=0.3)
        if limit is not None:
            ax.axhline(limit, color="black", linewidth=0.6, linestyle="--")
            ax.text(
                ax.get_xlim()[0],
                limit,
                f" time limit {limit:.0f} s (triangle: later)",
                fontsize=7,
                va="bottom",
            )
        if quantile == "p99":
            ax.axhline(2.0, color="grey", linewidth=0.8, linestyle=":")
            ax.text(ax.get_xlim()[0], 2.0, " target: 2 s at N = 1,000", fontsize=7, va="bottom", color="grey")
    axes[0].set_ylabel("seconds")
    axes[0].legend(fontsize=7, loc="center left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


DOC_BEGIN, DOC_END = "<!-- results:begin -->", "<!-- results:end -->"


def _machine_of(machine: dict[str, Any] | None) -> str:
    if not machine:
        return "on a machine it did not record"
    return f"on {machine['cpus']} CPUs ({machine['cpu']}), {machine['memory_gb']} GB, {machine['system']}"


def write_doc(path: Path, payload: dict[str, Any]) -> None:
    """Put this run's tables between the result markers of ``path`` (docs/performance.md)."""
    m = payload["machine"]
    parts = [
        DOC_BEGIN,
        f"_Generated by `make bench` (`{payload['command']}`) at {payload['started_at']} in "
        f"{payload.get('duration_s', 0) / 60:.0f} minutes, on {m['cpus']} CPUs ({m['cpu']}), "
        f"{m['memory_gb']} GB, {m['system']}, Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
        + f". Load average at start {payload.get('load_average_at_start')}, at end "
        f"{payload.get('load_average_at_end')}._",
    ]
    trigger_level = payload.get("trigger_level")
    earlier = payload.get("trigger_level_from")
    if trigger_level and earlier:
        parts.append(
            f"_The trigger-level figures are those of `{earlier['command']}` started at "
            f"{earlier['started_at']}, {_machine_of(earlier.get('machine'))}._"
        )
    for airflow, run in sorted((trigger_level or {}).get("runs", {}).items(), reverse=True):
        packages = ", ".join(f"{k} {v}" for k, v in (run.get("machine") or {}).get("packages", {}).items())
        parts.append(
            f"_Trigger-level figures on Airflow {airflow}: `{run['command']}` started at "
            f"{run['started_at']}, {_machine_of(run.get('machine'))}; {packages}._"
        )
    if trigger_level:
        parts += [
            "### Targets (this project's trigger)",
            targets_table(trigger_level["targets"]),
            "### Trigger level, side by side",
            "Latency from send to trigger event; requests counted by the emulator; memory is the "
            "waiting process's peak RSS.",
            table(trigger_level["figures"]),
            "![latency against N](../bench/results/latency.png)",
        ]
    masking = payload.get("masking")
    if masking:
        from bench.masking import masking_table

        parts += [
            "### Masking callback tokens",
            "Wall time to register the tokens with a fresh process's secrets masker (in a triggerer, "
            "event-loop time): Airflow's public `mask_secret`, against the provider's batched "
            "registration (`_airflow.register_tokens`), which the shared stream uses.",
            masking_table(masking),
        ]
    scale = payload.get("scale_out")
    if scale:
        from bench.scale_report import scale_receives_table, scale_table, scale_targets_table

        run = scale.get("run") or {}
        parts += [
            "### Several triggerers on one queue",
            f"_Measured by `{run.get('command')}` started at {run.get('started_at')}, "
            f"{_machine_of(run.get('machine'))}._",
            "Each triggerer is a waiting process of its own (Airflow's shared stream manager, each "
            "event persisted after the stated delay); the N waits are spread over them round robin. "
            "Latency from send to trigger event; requests counted by the emulator; the others' "
            "receives are counted from a minute after the send, once every triggerer has seen them.",
            scale_targets_table(scale["targets"]),
            scale_table(scale["figures"]),
            "Where the time goes: the receives a callback took to reach its waiter (SQS's receive "
            "count when its waiter's triggerer got it), against what a random choice of poller at "
            "each receive gives; what one more receive adds to a callback's latency (the slope of "
            "latency against receives); "
            "and the CPU seconds the waiting processes (until their waits fired) and the emulator "
            "(until they were done) used, on this machine's CPUs.",
            scale_receives_table(scale["figures"]),
            "![latency against the number of triggerers](../bench/results/scale_out.png)",
        ]
    e2e = payload.get("end_to_end")
    if e2e:
        settings = ", ".join(f"`{k.replace('__', '.', 1)} = {v}`" for k, v in e2e["settings"].items())
        run = e2e.get("run")
        parts += [
            "### End to end",
            *(
                [
                    f"_Measured by `{run['command']}` started at {run['started_at']}, {_machine_of(run.get('machine'))}._"
                ]
                if run
                else []
            ),
            f"{e2e['runs']} concurrent DAG runs per DAG and round; latency from the callback sent "
            "(for `DateTimeSensorAsync`, from its target time) to the sensor task's end. After a "
            f"warm-up round of {e2e.get('warm_up_runs', 0)} runs, the rounds of Airflow alone and "
            "of this project's sensor ran in turn, in the order of the table. "
            f"Settings: {settings}.",
            e2e_table(e2e),
        ]
        from bench.scale_report import e2e_triggerer_comparison, e2e_triggerer_table

        rows = e2e_triggerer_comparison(e2e)
        if rows:
            parts += [
                "One queue, this project's sensor, with 1, 2 and 4 triggerer processes in turn "
                "(target: 2 and 4 within 1.2 times the p50 of one):",
                e2e_triggerer_table(rows),
            ]
    parts.append(DOC_END)
    generated = "\n\n".join(parts)
    text = path.read_text() if path.exists() else "# Performance\n"
    if DOC_BEGIN in text and DOC_END in text:
        text = text[: text.index(DOC_BEGIN)] + generated + text[text.index(DOC_END) + len(DOC_END) :]
    else:
        text = f"{text.rstrip()}\n\n{generated}\n"
    path.write_text(text)
