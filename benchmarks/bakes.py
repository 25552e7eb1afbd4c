"""Fresh projects from the template, and the cost of making them."""

from __future__ import annotations

import importlib
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from report import INFO, Row

TEMPLATE_DIR = Path(__file__).resolve().parent.parent

# Two default projects; their slugs differ so that both packages import side by side.
LIMITED = {"project_slug": "bench-limited"}
PLAIN = {"project_slug": "bench-plain", "use_rate_limiting": False}


@dataclass(frozen=True)
class Bake:
    root: Path
    package_name: str
    api_key_header: str

    def import_package(self) -> ModuleType:
        """Import the project's package from its ``src`` (as ``PYTHONPATH=src`` would)."""
        source = str(self.root / "src")
        if source not in sys.path:
            sys.path.insert(0, source)
        return importlib.import_module(self.package_name)

    def module(self, name: str) -> ModuleType:
        """Import one module of the project's package, e.g. ``keys``."""
        self.import_package()
        return importlib.import_module(f"{self.package_name}.{name}")


def cookiecutter_config(work: Path) -> Path:
    """A config of our own: no user defaults, and no replay files written to $HOME."""
    path = work / "cookiecutter-config.yaml"
    if not path.exists():
        path.write_text(
            f"cookiecutters_dir: {json.dumps(str(work / 'cookiecutters'))}\n"
            f"replay_dir: {json.dumps(str(work / 'replay'))}\n",
            encoding="utf-8",
        )
    return path


def bake(work: Path, extra_context: dict[str, object], output: str) -> Bake:
    """Generate a project from the template, as ``cookiecutter --no-input`` does."""
    from cookiecutter.main import cookiecutter

    target = work / output
    target.mkdir(parents=True, exist_ok=True)
    root = Path(
        cookiecutter(
            str(TEMPLATE_DIR),
            no_input=True,
            extra_context=extra_context,
            output_dir=str(target),
            config_file=str(cookiecutter_config(work)),
        )
    )
    answers = _answers(extra_context)  # derived ones (package name) included
    return Bake(root, answers["package_name"], answers["api_key_header"])


def _answers(extra_context: dict[str, object]) -> dict[str, object]:
    from cookiecutter.generate import generate_context
    from cookiecutter.prompt import prompt_for_config

    context = generate_context(
        context_file=str(TEMPLATE_DIR / "cookiecutter.json"), extra_context=extra_context
    )
    return dict(prompt_for_config(context, no_input=True))


def generation_time(work: Path, times: int) -> list[Row]:
    """Median wall time of ``times`` default bakes, each into an empty directory."""
    from cookiecutter.main import cookiecutter

    durations = []
    for attempt in range(times):
        target = work / f"generation-{attempt}"
        start = time.perf_counter()
        cookiecutter(
            str(TEMPLATE_DIR),
            no_input=True,
            output_dir=str(target),
            config_file=str(cookiecutter_config(work)),
        )
        durations.append(time.perf_counter() - start)
    spread = f"min {min(durations):.2f} s, max {max(durations):.2f} s"
    return [
        Row(
            "template",
            f"generate the default project (median of {times})",
            "-",
            f"{statistics.median(durations):.2f} s ({spread})",
            INFO,
        )
    ]


def suite_time() -> list[Row]:
    """Wall time of the template's whole test suite, as the README runs it."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q"],
        cwd=TEMPLATE_DIR,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    summary = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    return [
        Row(
            "template",
            "test suite wall time (python -m pytest -q)",
            "-",
            f"{elapsed:.0f} s, exit {result.returncode}: {summary.strip('= ')}",
            INFO,
        )
    ]
