"""The README's promises: its sample program, its sample error and its main-job command are real."""
from __future__ import annotations

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


def test_main_job_command_runs() -> None:
    command = block("bash", 0).strip()
    dspexc_part = command.split("pip install -e . && ", 1)[1]
    for step in dspexc_part.split(" && "):
        argv = shlex.split(step)
        assert argv[0] == "dspexc"
        done = subprocess.run([sys.executable, "-m", "dspex.cli", *argv[1:]], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert (done.stdout + done.stderr).strip()


def test_readme_test_command_is_what_ci_runs() -> None:
    assert 'pip install -e ".[test]" && pytest' in block("bash", 1)
    assert "pytest" in (ROOT / ".ci/run").read_text()
