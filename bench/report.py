"""One table of every figure the benchmarks wrote to the results file (``BENCH_RESULTS``, else
bench/results.json), each beside its baseline from the same run and its goal. ``make bench`` prints it
last; ``python bench/report.py [file]`` prints it again."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from _common import results_path


def number(value: float | None) -> str:
    if value is None:
        return ""
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def table(data: dict[str, Any]) -> list[str]:
    lines = [
        f"{'benchmark':9} {'figure':58} {'value':>9} {'unit':8} {'baseline':>9}  {'target':18} baseline is"
    ]
    lines.append("-" * len(lines[0]))
    for bench, result in data.items():
        for row in result.get("figures", []):
            lines.append(
                f"{bench:9.9} {row['figure']:58.58} {number(row['value']):>9} {row['unit']:8.8} "
                f"{number(row.get('baseline')):>9}  {row.get('target', ''):18.18} "
                f"{row.get('baseline_name', '')}"
            )
    notes = [f"{bench}: {r['note']}" for bench, r in data.items() if r.get("note")]
    when = sorted({f"{r.get('measured_at')} load {r.get('load_average_1m')}" for r in data.values()})
    return [*lines, "", *notes, f"measured (UTC, 1-minute load average at the end): {', '.join(when)}"]


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else results_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        sys.exit(f"no results in {path} ({exc}): run the benchmarks first")
    print()
    print("\n".join(table(data)))
    print(f"\n(written to {path})")


if __name__ == "__main__":
    main()
