"""How long `make demo` takes to print the fine-tuned model's answer, and where the time goes.

    .venv/bin/python bench/demo_time.py          (as root, on a warm machine: the caches built)

Runs `make demo DEMO_ARGS=--exit` from the repository root, stamps every line of its output as it
arrives, and splits the time by the demo's `==> [STAGE]` lines (glmops_dev.demo.STAGES); `make`
is everything before the first stage (the venv and cache checks). The clock stops at the line the
demo prints right after the answer; the teardown that follows is timed apart. The goal is 600 s
on 2 cores. Last line:

    RESULT demo_answer_s=... goal_s=600 met=... share_make=... share_cluster=... ... teardown_s=... load_avg=...
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from glmops_dev.demo import ANSWER_MARKER, STAGES

REPO = Path(__file__).resolve().parents[1]
GOAL_S = 600
STAGE_LINE = re.compile(r"^==> \[(?P<stage>[a-z]+)\]")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", type=Path, default=REPO / ".state" / "demo_time.log", help="the demo's output")
    args = parser.parse_args()
    args.log.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    marks: list[tuple[str, float]] = [("make", 0.0)]
    answer_s: float | None = None
    with args.log.open("w") as log:
        demo = subprocess.Popen(
            ["make", "demo", "DEMO_ARGS=--exit"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        assert demo.stdout is not None
        for line in demo.stdout:
            now = time.monotonic() - started
            log.write(f"{now:8.1f} {line}")
            log.flush()
            match = STAGE_LINE.match(line)
            if match and match.group("stage") in STAGES:
                marks.append((match.group("stage"), now))
            if line.startswith(ANSWER_MARKER) and answer_s is None:
                answer_s = now
        code = demo.wait()
    total_s = time.monotonic() - started
    load_after = os.getloadavg()[0]
    if answer_s is None:
        print(f"the demo printed no answer (exit {code}); its output: {args.log}", file=sys.stderr)
        print(f"RESULT demo_answer_s=nan goal_s={GOAL_S} met=False exit={code}")
        return 1
    durations: dict[str, float] = {}
    for (stage, begin), (_, end) in zip(marks, [*marks[1:], ("end", answer_s)], strict=True):
        durations[stage] = durations.get(stage, 0.0) + max(end - begin, 0.0)
    for stage, seconds in durations.items():
        print(f"{stage:>10} {seconds:7.1f} s  {100 * seconds / answer_s:5.1f}%")
    shares = " ".join(f"share_{stage}={seconds / answer_s:.3f}" for stage, seconds in durations.items())
    seconds = " ".join(f"{stage}_s={value:.0f}" for stage, value in durations.items())
    print(
        f"RESULT demo_answer_s={answer_s:.0f} goal_s={GOAL_S} met={answer_s <= GOAL_S} {shares} {seconds} "
        f"teardown_s={total_s - answer_s:.0f} exit={code} load_avg={load_before:.1f}/{load_after:.1f} cpus={os.cpu_count()}"
    )
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
