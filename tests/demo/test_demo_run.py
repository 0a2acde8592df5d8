"""The README's first command, end to end: the demo prints the fine-tuned answer, and Ctrl-C removes it all.

`python -m glmops_dev demo` is what `make demo` runs after its build checks. It starts a cluster
of its own (its own pod-network slot), so it runs beside the session's cluster. While it trains,
the operator's metrics page (its URL is printed) must show the job's progress.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from glmops_dev.demo import ANSWER_MARKER

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.llamacpp]


def _training_step_on_metrics_page(url: str) -> float | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            page = response.read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(page):
        if family.name == "glmops_finetunejob_step":
            for sample in family.samples:
                if sample.labels == {"namespace": "glmops-demo", "finetunejob": "tiny-flash-agent"}:
                    return sample.value
    return None


@pytest.mark.timeout(3600)
def test_the_demo_answers_with_what_it_was_taught_and_ctrl_c_cleans_up(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GLMOPS_NO_BUILD": "1"}
    demo = subprocess.Popen(
        [sys.executable, "-m", "glmops_dev", "demo"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    answered = threading.Event()

    def read() -> None:
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.append(line)
            if line.startswith(ANSWER_MARKER):
                answered.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    steps_seen: list[float] = []
    try:
        deadline = time.monotonic() + 3000
        while not answered.is_set() and demo.poll() is None and time.monotonic() < deadline:
            url = next((m.group(1) for m in (re.search(r"operator metrics: (\S+)", x) for x in lines) if m), None)
            if url:
                step = _training_step_on_metrics_page(url)
                if step is not None:
                    steps_seen.append(step)
            time.sleep(2)
        output = "".join(lines)
        assert answered.is_set(), f"no answer (exit {demo.poll()}):\n{output[-6000:]}"

        # What the fine-tune taught, asked through the Service.
        assert "Answer:     Pack a light jacket for Paris and an umbrella for Berlin." in output
        assert "Reasoning:  The user asks what to pack; the forecast says rain in Berlin, so an umbrella is useful." in output
        assert 'Tool call:  get_weather({"city": "Paris"})' in output
        # The stages in order, and the settings a coding agent needs.
        stages = re.findall(r"^==> \[(\w+)\]", output, flags=re.MULTILINE)
        # ... then the answer marker (`==> [done]`) that bench/demo_time.py stops its clock at
        assert stages == ["cluster", "operator", "examples", "model", "training", "export", "serving", "answer", "done"]
        assert ANSWER_MARKER == "==> [done]"
        slot = re.search(r"pod network: slot (\d+)", output)
        assert slot, output[:3000]
        time.sleep(3)  # the connect settings follow the answer
        output = "".join(lines)
        assert "export ANTHROPIC_BASE_URL=http://tiny-flash-agent.glmops-demo.svc:8000" in output
        # The operator's metrics followed the training job.
        assert steps_seen and max(steps_seen) >= 1 and steps_seen == sorted(steps_seen)

        # Ctrl-C: everything it started goes.
        os.killpg(demo.pid, signal.SIGINT)
        assert demo.wait(timeout=180) == 0
        reader.join(timeout=10)
        assert "Stopped:" in "".join(lines)
        namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        assert f"glmops-s{slot.group(1)}-" not in namespaces
        assert "tiny-flash-agent.glmops-demo.svc" not in Path("/etc/hosts").read_text()
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGTERM)
            try:
                demo.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait()
