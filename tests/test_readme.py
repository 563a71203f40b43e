"""The README's set-up commands are the ones CI runs, and its Python example runs."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return [b.strip() for b in re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)]


def test_exactly_two_setup_commands_and_ci_runs_the_test_one():
    install_run, tests = _blocks("bash")
    assert "\n" not in install_run and "\n" not in tests
    assert install_run.startswith("pip install") and "emu35 " in install_run
    assert "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci, ".ci/run must run the README's test command verbatim"


def test_python_example_runs(tmp_path):
    from services.model.tiny import write_tiny_checkpoint

    write_tiny_checkpoint(tmp_path / "tiny")
    example = "\n".join(_blocks("python"))  # the blocks build on each other, in order
    example += "\nassert len(logits) == 2 and logits[0].dim() == 1\nassert pixels.dtype == torch.uint8\n"
    subprocess.run([sys.executable, "-c", example], cwd=tmp_path, check=True)
