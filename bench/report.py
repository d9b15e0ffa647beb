"""Regenerate bench/RESULTS.md from every bench/results/*.json present.

Known result files get tables written for them; any other (the sidecar's and
the operator's benchmarks, anything added later) is rendered generically from
its ``figures``. Wherever a figure holds both an ``amfs_k8s`` and an
``upstream`` value, the table shows the ratio upstream ÷ amfs-k8s.

    .venv/bin/python -m bench.report
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import RESULTS

OUT = Path(__file__).parent / "RESULTS.md"
OURS = "amfs_k8s"
UPSTREAM = "upstream"
COMMAND = ".venv/bin/python -m bench.report"
TIMES = "\N{MULTIPLICATION SIGN}"

# Known files first, in this order; everything else follows alphabetically.
ORDER = ["adapter_compare", "adapter_compare_seaweedfs", "propagation", "cold_start",
         "request_counts", "sidecar", "operator"]
TITLES = {
    "adapter_compare": "Adapter: this project vs. upstream `amfs-adapter-s3` (moto)",
    "adapter_compare_seaweedfs":
        "Adapter: this project vs. upstream `amfs-adapter-s3` (SeaweedFS, a real S3 server)",
    "propagation": "Cross-process change propagation and polling cost",
    "request_counts": "S3 requests per operation (this project's adapter)",
    "sidecar": "Sidecar over its socket",
    "operator": "Operator",
    "cold_start": "Cold start and S3 requests per sidecar-hour: full listing vs. index snapshot",
}

Result = dict[str, Any]


# ----------------------------------------------------------------------
# formatting
# ----------------------------------------------------------------------


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt(v)}" for k, v in value.items()) or "—"
    if isinstance(value, list):
        text = ", ".join(fmt(v) for v in value)
        return text if len(text) <= 80 else text[:77] + "…"
    return str(value).replace("|", "\\|").replace("\n", " ")


def ratio(upstream: Any, ours: Any) -> str:
    """upstream ÷ amfs-k8s, for numbers only; above 1 means amfs-k8s needs less."""
    if not _number(upstream) or not _number(ours) or ours == 0:
        return "—"
    return f"{upstream / ours:.2f}{TIMES}"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def about(result: Result) -> list[str]:
    machine = result.get("machine", {})
    recorded = f"Recorded {result['recorded_at']}" if "recorded_at" in result else "Recorded"
    return [
        f"{recorded} with `{result.get('command', '?')}` — "
        f"Python {machine.get('python', '?')}, {machine.get('platform', '?')}, "
        f"{machine.get('cpus', '?')} CPUs.",
        "",
    ]


# ----------------------------------------------------------------------
# generic rendering (sidecar.json, operator.json, anything new)
# ----------------------------------------------------------------------


def flatten(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, leaf) pairs; lists and small count maps stay whole."""
    if isinstance(value, dict) and value and not _is_count_map(value):
        for key, item in value.items():
            yield from flatten(item, f"{path}.{key}" if path else str(key))
    else:
        yield path, value


def _is_count_map(value: dict[str, Any]) -> bool:
    """A small {name: number} map, e.g. S3 calls by operation: one cell, not many rows."""
    return 0 < len(value) <= 6 and all(
        _number(v) and k[:1].isupper() for k, v in value.items()
    )


def split_comparisons(figures: Any, path: str = "") -> tuple[list[tuple[str, Any, Any]],
                                                              list[tuple[str, Any]]]:
    """Leaves under a dict holding both sides become (path, ours, upstream) rows."""
    compared: list[tuple[str, Any, Any]] = []
    plain: list[tuple[str, Any]] = []
    if isinstance(figures, dict) and OURS in figures and UPSTREAM in figures:
        ours = dict(flatten(figures[OURS]))
        theirs = dict(flatten(figures[UPSTREAM]))
        for sub in dict.fromkeys([*ours, *theirs]):
            label = ".".join(p for p in (path, sub) if p)
            compared.append((label, ours.get(sub), theirs.get(sub)))
        rest = {k: v for k, v in figures.items() if k not in (OURS, UPSTREAM)}
        if rest:
            plain += flatten(rest, path)
        return compared, plain
    if isinstance(figures, dict) and figures and not _is_count_map(figures):
        for key, item in figures.items():
            c, p = split_comparisons(item, f"{path}.{key}" if path else str(key))
            compared += c
            plain += p
        return compared, plain
    return [], [(path, figures)]


ENVELOPE = {"name", "command", "recorded_at", "machine"}


def figures_of(result: Result) -> Any:
    """``figures`` as write_result stores them; a file written without the envelope
    is all figures apart from its command and machine."""
    if "figures" in result:
        return result["figures"]
    return {k: v for k, v in result.items() if k not in ENVELOPE}


def render_generic(result: Result) -> list[str]:
    compared, plain = split_comparisons(figures_of(result))
    lines: list[str] = []
    if compared:
        lines += table(
            ["Figure", "amfs-k8s", "upstream", "upstream ÷ amfs-k8s"],
            [[f"`{p}`", fmt(o), fmt(u), ratio(u, o)] for p, o, u in compared],
        )
    if plain:
        lines += table(["Figure", "Value"], [[f"`{p}`", fmt(v)] for p, v in plain])
    return lines or ["(no figures)", ""]


# ----------------------------------------------------------------------
# known result files
# ----------------------------------------------------------------------


def render_adapter_compare(result: Result) -> list[str]:
    figures = result["figures"]
    ops = figures["operations"]
    setup = figures.get("setup", {})
    lines = [
        f"Both adapters against {setup.get('s3', 'the same moto server')}. "
        f"{setup.get('timing', '')}; {setup.get('requests', '')}.",
        "",
    ]
    lines += table(
        ["Operation", "S3 requests amfs-k8s", "S3 requests upstream", "ratio",
         "median ms amfs-k8s", "median ms upstream", "ratio"],
        [
            [op, fmt(s[OURS]["requests_total"]), fmt(s[UPSTREAM]["requests_total"]),
             ratio(s[UPSTREAM]["requests_total"], s[OURS]["requests_total"]),
             fmt(s[OURS]["median_ms"]), fmt(s[UPSTREAM]["median_ms"]),
             ratio(s[UPSTREAM]["median_ms"], s[OURS]["median_ms"])]
            for op, s in ops.items()
        ],
    )
    lines += ["Requests by S3 operation (per call):", ""]
    lines += table(
        ["Operation", "amfs-k8s", "upstream"],
        [[op, fmt(s[OURS]["requests"]), fmt(s[UPSTREAM]["requests"])] for op, s in ops.items()],
    )
    race = figures["concurrent_writers"]
    trials = race.get("trials", 1)
    lines += [
        f"{race['writers']} writers {TIMES} {race['updates_each']} updates on one key, "
        f"{trials} races, counts summed:",
        "",
    ]
    rows = [
        ("updates attempted", "updates_attempted"),
        ("updates acknowledged", "updates_acknowledged"),
        ("versions kept", "versions_kept"),
        ("acknowledged updates lost", "acknowledged_updates_lost"),
        ("updates failed (error raised)", "updates_failed"),
        ("failures by error", "failures_by_error"),
        ("current version readable after", "current_version_readable"),
        ("wall time per race, s (median)", "median_wall_s"),
    ]
    lines += table(
        ["", "amfs-k8s", "upstream"],
        [[label, fmt(race[OURS].get(k)), fmt(race[UPSTREAM].get(k))] for label, k in rows],
    )
    lines += [f"- {note}" for note in setup.get("notes", [])]
    return [*lines, ""]


def render_propagation(result: Result) -> list[str]:
    figures = result["figures"]
    setup = figures.get("setup", {})
    prop = figures["propagation"]
    gap = " to ".join(fmt(g) for g in setup.get("write_gap_s", []))
    lines = [
        f"Latency: {setup.get('latency', '')}; watcher poll interval "
        f"{fmt(setup.get('watch_poll_interval_s'))} s, writes {gap} s apart, a write not "
        f"seen {fmt(setup.get('delivery_wait_s'))} s after the last one counts as not "
        "delivered.",
        "",
    ]
    lines += table(
        ["Adapter", "writes", "delivered", "median s", "p95 s", "max s"],
        [
            [name, fmt(r["writes"]), fmt(r["delivered"]), fmt(r.get("median_s")),
             fmt(r.get("p95_s")), fmt(r.get("max_s"))]
            for name, r in ((OURS, prop[OURS]), (UPSTREAM, prop[UPSTREAM]))
        ],
    )
    lines += [f"Polling cost: {setup.get('polling_cost', '')}.", ""]
    lines += table(
        ["Entries", "requests / idle poll", "requests / full resync",
         "amfs-k8s requests / min", "upstream requests / min",
         "full-listing poller requests / min"],
        [
            [fmt(c["entries"]), fmt(c["requests_per_idle_poll"]),
             fmt(c["requests_per_full_resync"]), fmt(c[OURS]["requests_per_minute"]),
             f"{fmt(c[UPSTREAM]['requests_per_minute'])} (changes from other processes "
             "never delivered)",
             fmt(c["full_listing_poller_requests_per_minute"])]
            for c in figures["polling_cost"].values()
        ],
    )
    if "full_listing_poller" in setup:
        lines += [f"Full-listing poller: {setup['full_listing_poller']}.", ""]
    return lines


def render_cold_start(result: Result) -> list[str]:
    figures = result["figures"]
    sizes = figures["sizes"]
    lines = [f"Backend: {figures['backend']}; {fmt(figures['journal_since_snapshot'])} journal "
             "records written after the snapshot; in-process sidecar, `Sidecar.start()` to "
             "ready.", ""]
    if figures.get("note"):
        lines += [f"Note: {figures['note']}.", ""]
    rows = []
    for size, f in sizes.items():
        old, new = f["designs"]["full_listing"], f["designs"]["snapshot"]
        rows.append([fmt(int(size)), fmt(old["start_to_ready_seconds"]),
                     fmt(old["start_requests_total"]), fmt(new["start_to_ready_seconds"]),
                     fmt(new["start_requests_total"]),
                     fmt(new["first_start_without_snapshot_seconds"]),
                     fmt(f["snapshot_bytes"])])
    model = figures.get("model")
    if model:
        start = model["start_to_ready_seconds"]
        rows.append([f"{fmt(model['entries'])} (model)", fmt(start["full_listing"]), "",
                     fmt(start["snapshot"]), "", "", ""])
    lines += table(["Entries", "full listing: ready s", "requests", "snapshot: ready s",
                    "requests", "first start, no snapshot yet: s", "snapshot bytes"], rows)
    rows = []
    for size, f in sizes.items():
        for name, hour in f["requests_per_sidecar_hour"].items():
            rows.append([fmt(int(size)), name.replace("_", " "), fmt(hour["full_listing"]),
                         fmt(hour["snapshot"])])
    if model:
        for name, hour in model["requests_per_sidecar_hour"].items():
            rows.append([f"{fmt(model['entries'])} (model)", name.replace("_", " "),
                         fmt(hour["full_listing"]), fmt(hour["snapshot"])])
    lines += ["S3 requests per sidecar-hour (counted per poll and per resync, at the "
              f"default {fmt(figures['poll_interval_seconds'])} s poll and "
              f"{fmt(figures['resync_interval_seconds'])} s resync):", ""]
    lines += table(["Entries", "Sidecars", "full listing", "snapshot"], rows)
    if model:
        lines += [f"Model to {fmt(model['entries'])} entries (goal: ready within "
                  f"{fmt(model['goal_seconds'])} s — {'met' if model['goal_met'] else 'NOT met'}"
                  "); costs used:", ""]
        lines += table(["Cost", "Value"], [[f"`{k}`", fmt(v)] for k, v in model["costs"].items()])
        lines += ["Assumptions:", "", *[f"- {a}" for a in model["assumptions"]], ""]
    return lines


RENDERERS: dict[str, Callable[[Result], list[str]]] = {
    "adapter_compare": render_adapter_compare,
    "adapter_compare_seaweedfs": render_adapter_compare,
    "propagation": render_propagation,
    "cold_start": render_cold_start,
}


# ----------------------------------------------------------------------
# headline and document
# ----------------------------------------------------------------------


def adapter_headline(figures: Result, server: str) -> list[str]:
    ops, race = figures["operations"], figures["concurrent_writers"]
    # Every operation, as ratios upstream ÷ amfs-k8s: requests, then median time.
    ratios = [
        f"{op} {ratio(s[UPSTREAM]['requests_total'], s[OURS]['requests_total'])} / "
        f"{ratio(s[UPSTREAM]['median_ms'], s[OURS]['median_ms'])}"
        for op, s in ops.items()
    ]
    update = ops["update"]
    o, u = race[OURS], race[UPSTREAM]
    return [
        f"adapter vs. upstream on {server}, requests / median time (upstream ÷ amfs-k8s, "
        "above 1 is better): " + "; ".join(ratios),
        f"update on {server}: {fmt(update[OURS]['requests_total'])} S3 requests vs. "
        f"{fmt(update[UPSTREAM]['requests_total'])} upstream, median "
        f"{fmt(update[OURS]['median_ms'])} ms vs. {fmt(update[UPSTREAM]['median_ms'])} ms "
        f"({ratio(update[UPSTREAM]['median_ms'], update[OURS]['median_ms'])})",
        f"{race['writers']} writers {TIMES} {race['updates_each']} updates on one key on "
        f"{server} ({race.get('trials', 1)} races): amfs-k8s kept {fmt(o['versions_kept'])} "
        f"versions for {fmt(o['updates_acknowledged'])} acknowledged updates "
        f"({fmt(o['acknowledged_updates_lost'])} lost); upstream kept "
        f"{fmt(u['versions_kept'])} for {fmt(u['updates_acknowledged'])} acknowledged "
        f"({fmt(u['acknowledged_updates_lost'])} lost, {fmt(u['updates_failed'])} failed); "
        f"a race takes {fmt(o.get('median_wall_s'))} s vs. {fmt(u.get('median_wall_s'))} s"
        + (", the price of keeping every update"
           if (o.get("median_wall_s") or 0) > (u.get("median_wall_s") or 0) else ""),
    ]


def headline(results: dict[str, Result]) -> list[str]:
    """The few ratios worth quoting (README links them)."""
    items: list[str] = []
    for name, server in (("adapter_compare", "moto"), ("adapter_compare_seaweedfs", "SeaweedFS")):
        if name in results:
            items += adapter_headline(results[name]["figures"], server)
    try:
        prop = results["propagation"]["figures"]
        ours = prop["propagation"][OURS]
        theirs = prop["propagation"][UPSTREAM]
        cost = prop["polling_cost"]
    except KeyError:
        pass
    else:
        items.append(
            f"a write in another process reaches a watcher in median {fmt(ours['median_s'])} s "
            f"(p95 {fmt(ours.get('p95_s'))} s, 1 s poll); upstream: "
            f"{fmt(theirs['delivered'])} of {fmt(theirs['writes'])} delivered"
        )
        items.append(
            "watch polling costs "
            + ", ".join(
                f"{fmt(c[OURS]['requests_per_minute'])} requests/min at {fmt(c['entries'])} "
                "entries" for c in cost.values()
            )
            + " (5 s poll, 5 min resync)"
        )
    try:
        cold = results["cold_start"]["figures"]
        model = cold["model"]
        largest = max(cold["sizes"], key=int)
        measured = cold["sizes"][largest]["designs"]
    except (KeyError, TypeError):
        pass
    else:
        hour = model["requests_per_sidecar_hour"]["100_sidecars"]
        items.append(
            f"cold start at {fmt(int(largest))} entries ({cold['backend']}): "
            f"{fmt(measured['snapshot']['start_to_ready_seconds'])} s from the snapshot vs. "
            f"{fmt(measured['full_listing']['start_to_ready_seconds'])} s listing entries/; "
            f"modelled at {fmt(model['entries'])}: "
            f"{fmt(model['start_to_ready_seconds']['snapshot'])} s vs. "
            f"{fmt(model['start_to_ready_seconds']['full_listing'])} s; with 100 sidecars "
            f"{fmt(hour['snapshot'])} vs. {fmt(hour['full_listing'])} S3 requests per "
            "sidecar-hour"
        )
    return [f"- {item}" for item in items]


def load(directory: Path = RESULTS) -> dict[str, Result]:
    results: dict[str, Result] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            results[path.stem] = json.loads(path.read_text())
        except ValueError as exc:
            print(f"skip {path.name}: not valid JSON ({exc})")
    return results


def render(results: dict[str, Result]) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Generated by `bench/report.py` from `bench/results/*.json` (`make bench`); "
        "do not edit by hand. Each section names the command that produced it. Ratios "
        "are upstream ÷ amfs-k8s: above 1 means amfs-k8s needs fewer requests or less "
        "time. Times are medians after warm-up unless a column says otherwise. Request "
        "counts and correctness figures are exact; timings vary with the machine and its "
        "load (the adapters alternate call by call, so both see the same load).",
        "",
    ]
    top = headline(results)
    if top:
        lines += ["## Headline", "", *top, ""]
    names = [n for n in ORDER if n in results] + sorted(set(results) - set(ORDER))
    for name in names:
        result = results[name]
        lines += [f"## {TITLES.get(name, name)}", "", f"`bench/results/{name}.json`", ""]
        lines += about(result)
        renderer = RENDERERS.get(name, render_generic)
        try:
            lines += renderer(result)
        except (KeyError, TypeError):
            # A result whose shape changed still gets reported, just plainly.
            lines += render_generic(result)
    return "\n".join(lines).rstrip() + "\n"


def main() -> Path:
    OUT.write_text(render(load()))
    print(f"wrote {OUT.relative_to(OUT.parent.parent)}")
    return OUT


if __name__ == "__main__":
    main()
