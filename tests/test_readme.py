"""The README's set-up commands are the ones CI runs, and its Python example runs."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_setup_commands_install_the_pinned_versions():
    """Both set-up commands install with constraints.txt, which pins every direct dependency
    (server, client, test extra) to one exact version; Ray is held to its tested minor in
    pyproject too, as local mode patches its private internals (cluster/netbind.py)."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    for command in _blocks("bash"):
        assert command.startswith("pip install -c constraints.txt "), command
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[name.lower().replace("_", "-")] = Version(version)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((ROOT / "clients" / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]
              ["test"] + client["dependencies"]]
    for req in wanted:
        if req.name == "emu35-client":  # installed from ./clients
            continue
        assert req.name.lower() in pins, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(pins[req.name.lower()], prereleases=True), \
            f"constraints.txt pins {req.name}=={pins[req.name.lower()]}, outside {req}"
    ray = next(r for r in wanted if r.name == "ray")
    assert not ray.specifier.contains("2.61.0") and ray.specifier.contains(str(pins["ray"]))


def _fake_python(tmp_path: Path, pytest_rc: int) -> Path:
    """A `python3` for .ci/run whose `-m venv DIR` makes a venv of fakes: its pip records its
    arguments, its python exits with ``pytest_rc`` for `-m pytest`."""
    log = tmp_path / "calls.log"
    fake = tmp_path / "python3"
    fake.write_text(f"""#!/bin/sh
[ "$1 $2" = "-m venv" ] || exit 99
mkdir -p "$3/bin"
echo "$3" > {log}.venv
printf 'PATH="%s/bin:$PATH"\\n' "$3" > "$3/bin/activate"
printf '#!/bin/sh\\necho pip "$@" >> {log}\\n' > "$3/bin/pip"
printf '#!/bin/sh\\n[ "$1" = --version ] && echo fake && exit 0\\necho python "$@" >> {log}\\n'\\
'exit {pytest_rc}\\n' > "$3/bin/python"
chmod +x "$3/bin/pip" "$3/bin/python"
""")
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("pytest_rc", [0, 1, 5])
def test_ci_runs_the_readme_command_in_a_fresh_venv(tmp_path, pytest_rc):
    """.ci/run makes a new venv in a temporary folder, runs the README's test command inside
    it, exits with pytest's status (5, nothing collected, is a failure too) and removes it."""
    fake = _fake_python(tmp_path, pytest_rc)
    env = {**os.environ, "PYTHON": str(fake), "TMPDIR": str(tmp_path)}
    run = subprocess.run(["bash", str(ROOT / ".ci" / "run")], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == pytest_rc, run.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    install, _, tests = _blocks("bash")[1].partition(" && ")
    assert calls == [install.replace("'", ""), tests]
    venv = Path((tmp_path / "calls.log.venv").read_text().strip())
    assert venv.parent == tmp_path and not venv.exists()
    if pytest_rc == 5:
        assert "collected no tests" in run.stderr


def test_files_written_by_the_readme_commands_are_ignored():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git work tree")
    for path in ("tiny/llm/config.json", "out/manifest.json", ".emu35-tiny/llm/config.json",
                 "results/default/r1/manifest.json"):
        check = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert check.returncode == 0, f"{path} is not git-ignored"
