"""The scale-out figures (several triggerers on one queue): targets, table and plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The targets of several triggerers on one queue.
SCALE_TARGETS = {
    "fired_all": "k = 1, 2, 4: every one of the N waits fired",
    "p99_k4": "p99 from send, k = 4: <= 2 s and <= 2x the k = 1 figure of the same run",
    "requests_k4": "SQS requests per callback, k = 4: <= 1.0",
    "idle": "idle ReceiveMessage per minute: <= 3.2 per triggerer",
    "noise": "messages nobody waits for: none deleted; each at most 2 receives a minute once every triggerer has seen it",
}


def _by(figures: list[dict[str, Any]], mode: str) -> dict[int, dict[str, Any]]:
    return {f["k"]: f for f in figures if f["mode"] == mode}


def scale_targets(figures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target with what was measured and whether it was met (``None``: not measured)."""
    burst, idle, noise = _by(figures, "burst"), _by(figures, "idle"), _by(figures, "noise")
    results: list[dict[str, Any]] = []

    def add(key: str, measured: Any, met: bool | None) -> None:
        results.append({"target": key, "text": SCALE_TARGETS[key], "measured": measured, "met": met})

    wanted = [k for k in (1, 2, 4) if k in burst]
    add(
        "fired_all",
        {k: f"{burst[k]['fired']}/{burst[k]['n']}" for k in wanted},
        all(burst[k]["fired"] == burst[k]["n"] for k in wanted) if wanted else None,
    )
    if 4 in burst and 1 in burst and burst[4]["latency_p99_s"] is not None and burst[1]["latency_p99_s"]:
        p99_4, p99_1 = burst[4]["latency_p99_s"], burst[1]["latency_p99_s"]
        add(
            "p99_k4",
            f"{p99_4:.2f} s (k = 1: {p99_1:.2f} s, {p99_4 / p99_1:.1f}x)",
            p99_4 <= 2.0 and p99_4 <= 2 * p99_1,
        )
    else:
        add("p99_k4", None, None)
    per = burst.get(4, {}).get("sqs_requests_per_callback")
    add("requests_k4", per, None if per is None else per <= 1.0)
    idle_rates = {k: f["receive_per_minute_per_triggerer"] for k, f in sorted(idle.items())}
    add(
        "idle",
        idle_rates or None,
        all(r is not None and r <= 3.2 for r in idle_rates.values()) if idle_rates else None,
    )
    if noise:
        measured = {
            k: f"{f['noise_left']}/{f['noise_expected']} left, at most {f['noise_receives_per_minute_max']:.1f} a minute"
            for k, f in sorted(noise.items())
        }
        met = all(
            f["noise_left"] == f["noise_expected"] and (f["noise_receives_per_minute_max"] or 0) <= 2.0
            for f in noise.values()
        )
        add("noise", measured, met)
    else:
        add("noise", None, None)
    return results


def _s(value: Any, digits: int = 2) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def scale_table(figures: list[dict[str, Any]]) -> str:
    """One row per scenario and k."""
    lines = [
        "| triggerers (k) | scenario | N | fired | p50 s | p99 s | SQS req. / callback | ReceiveMessage / min / triggerer "
        "| others left | other's receives / min (max) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {"burst": 0, "noise": 1, "idle": 2}
    for f in sorted(figures, key=lambda f: (order[f["mode"]], f["k"])):
        if f["mode"] == "idle":
            row = [
                str(f["k"]),
                f"idle {f['idle_seconds']:.0f} s",
                str(f["n"]),
                "",
                "",
                "",
                "",
                _s(f["receive_per_minute_per_triggerer"]),
                "",
                "",
            ]
        else:
            over = f"> {f['time_limit_s']:.0f}"
            row = [
                str(f["k"]),
                "sent at once" if f["mode"] == "burst" else "sent at once, with 110 others",
                str(f["n"]),
                f"{f['fired']}/{f['n']}",
                over if f["latency_p50_over_limit"] else _s(f["latency_p50_s"]),
                over if f["latency_p99_over_limit"] else _s(f["latency_p99_s"]),
                _s(f["sqs_requests_per_callback"]),
                "",
                f"{f['noise_left']}/{f['noise_expected']}" if "noise_left" in f else "",
                _s(f.get("noise_receives_per_minute_max")),
            ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def scale_receives_table(figures: list[dict[str, Any]]) -> str:
    """
    Where a callback's time goes: how many receives it took to reach its waiter (measured, and
    what SQS's random choice of poller gives), what one more receive adds to its latency, and
    the CPU the waiting processes and the emulator used meanwhile.
    """
    lines = [
        "| triggerers (k) | scenario | receives to the waiter p50 / p90 / p99 | if each receive went to a random poller "
        "| s per further receive | CPU s: triggerers / emulator |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    order = {"burst": 0, "noise": 1}
    for f in sorted((f for f in figures if f["mode"] in order), key=lambda f: (order[f["mode"]], f["k"])):
        if f.get("receives_p50") is None:
            continue
        measured = " / ".join(f"{f[f'receives_{q}']:.0f}" for q in ("p50", "p90", "p99"))
        model = " / ".join(str(f[f"receives_{q}_random"]) for q in ("p50", "p90", "p99"))
        cpu = f"{_s(f.get('triggerers_cpu_s'), 1)} / {_s(f.get('emulator_cpu_s'), 1)}"
        scenario = "sent at once" if f["mode"] == "burst" else "sent at once, with 110 others"
        lines.append(
            f"| {f['k']} | {scenario} | {measured} | {model} | {_s(f.get('seconds_per_receive'), 3)} | {cpu} |"
        )
    return "\n".join(lines)


def scale_targets_table(results: list[dict[str, Any]]) -> str:
    lines = ["| target | measured | met |", "|---|---|---|"]
    for r in results:
        measured = r["measured"]
        if isinstance(measured, dict):
            measured = ", ".join(f"k = {k}: {_s(v)}" for k, v in measured.items())
        elif isinstance(measured, float):
            measured = f"{measured:.2f}"
        met = {True: "yes", False: "**no**", None: "not measured"}[r["met"]]
        lines.append(f"| {r['text']} | {'' if measured is None else measured} | {met} |")
    return "\n".join(lines)


def scale_plot(figures: list[dict[str, Any]], path: Path) -> None:
    """p50 and p99 from send against the number of triggerers, with and without the others' messages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for mode, color in (("burst", "tab:blue"), ("noise", "tab:purple")):
        points = sorted(
            (f for f in figures if f["mode"] == mode and f["latency_p99_s"] is not None), key=lambda f: f["k"]
        )
        if not points:
            continue
        ks = [f["k"] for f in points]
        label = "N callbacks" if mode == "burst" else "N callbacks and 110 others"
        ax.plot(ks, [f["latency_p99_s"] for f in points], "o-", color=color, label=f"p99, {label}")
        ax.plot(ks, [f["latency_p50_s"] for f in points], "o--", color=color, label=f"p50, {label}")
    ax.axhline(2.0, color="grey", linewidth=0.8, linestyle=":")
    ax.text(1, 2.0, " target: p99 2 s at k = 4", fontsize=7, va="bottom", color="grey")
    ax.set_xscale("log", base=2)
    ks = sorted({f["k"] for f in figures})
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("triggerers polling the queue (k), N = 1,000 waits spread round robin")
    ax.set_ylabel("seconds from send to trigger event")
    ax.grid(True, linewidth=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def e2e_triggerer_comparison(e2e: dict[str, Any]) -> list[dict[str, Any]]:
    """
    End to end with several triggerers: the p50 of each count, averaged over its rounds, against
    one triggerer's (target: within 1.2 times for 2 and 4).
    """
    p50s: dict[int, list[float]] = {}
    for name, figures in e2e.get("scenarios", {}).items():
        if not name.startswith("SageMakerCallbackSensor, ") or figures.get("p50_s") is None:
            continue
        k = int(name.split(", ")[1].split()[0])
        p50s.setdefault(k, []).append(figures["p50_s"])
    if 1 not in p50s:
        return []
    base = sum(p50s[1]) / len(p50s[1])
    rows = []
    for k in sorted(p50s):
        mean = sum(p50s[k]) / len(p50s[k])
        rows.append(
            {"k": k, "p50_s": mean, "ratio": mean / base, "met": None if k == 1 else mean <= 1.2 * base}
        )
    return rows


def e2e_triggerer_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| triggerers | p50 s (mean of its rounds) | against one triggerer | within 1.2x |",
        "|---:|---:|---:|---|",
    ]
    for r in rows:
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]
        lines.append(f"| {r['k']} | {r['p50_s']:.2f} | {r['ratio']:.2f}x | {met} |")
    return "\n".join(lines)
