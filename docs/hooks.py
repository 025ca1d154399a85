"""MkDocs hooks: pages generated from the repository before every build, so no number or flag is
written twice. The benchmark pages are copies of ``experiments/results/*.md`` (with their plots),
the front page is ``README.md``, the changelog ``CHANGELOG.md``, and the command-line reference
is each command's ``--help``, which tyro generates from the config dataclasses. The generated
files are git-ignored."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RESULTS = ROOT / "experiments" / "results"


def _links_outside(text: str, page: Path, source: Path = ROOT) -> str:
    """A link whose target is not a file of the site (relative to ``page``, where the page will sit
    in docs/) becomes the repository path it names (relative to ``source``, where it was written),
    as code: results files link to configs and raw JSON that the site does not carry."""

    def fix(m: re.Match) -> str:
        label, target = m.group(1), m.group(2)
        if re.match(r"https?://|#|mailto:", target):
            return m.group(0)
        path = target.split("#")[0]
        generated = path.startswith(("results/", "reference/cli.md", "changelog.md")) or "/results/" in path
        if _in_site((page.parent / path).resolve()) or generated:
            return m.group(0)
        repo_path = os.path.relpath((source / path).resolve(), ROOT)
        return f"{label} (`{repo_path}`)" if label.strip("`") != repo_path else f"`{repo_path}`"

    return re.sub(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)", fix, text)


def _in_site(path: Path) -> bool:
    """A page or picture the site carries: under docs/, or a results page or plot (copied in)."""
    if not path.is_file() or path.suffix not in (".md", ".png"):
        return False
    return path.is_relative_to(DOCS) or path.parent == RESULTS


def _copy_results() -> None:
    out = DOCS / "results"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    for f in sorted(RESULTS.glob("*.png")):
        shutil.copyfile(f, out / f.name)
    for f in sorted(RESULTS.glob("*.md")):
        (out / f.name).write_text(_links_outside(f.read_text(), RESULTS / f.name, RESULTS))


def _front_page() -> None:
    """docs/index.md is README.md, its links moved to where the pages sit in the site."""
    text = (ROOT / "README.md").read_text()
    text = re.sub(r"\]\(experiments/results/", "](results/", text)
    text = re.sub(r"\]\(docs/", "](", text)
    text = text.replace("](CHANGELOG.md)", "](changelog.md)")
    (DOCS / "index.md").write_text(_links_outside(text, DOCS / "index.md"))


def _changelog() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    text = re.sub(r"\]\(experiments/results/", "](results/", text)
    (DOCS / "changelog.md").write_text(_links_outside(text, DOCS / "changelog.md", ROOT))


def _cli_reference() -> None:
    from dpft.finetune.commands.cli import command_names

    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "100", "TERM": "dumb"}
    parts = [
        "# Command line",
        "",
        "Every command's `--help`, generated from its typed config at each docs build. Any setting",
        "can also come from `--config FILE.yaml` (keys as the flag names); flags win over the file.",
        "A file that starts with `extends: OTHER.yaml` (relative to it) takes that file's settings and",
        "overrides them, group by group: `experiments/configs/bench/` composes every row this way.",
        "A method that can run several algorithms keeps each one's own settings under its prefix",
        "(`finetune residual --td3.* --sac.* --ppo.*`, `finetune dsrl --na.*`); the settings of a method",
        "that always runs one algorithm (FIND's and DPPO's PPO, DPO's loss) stay flat.",
        "",
    ]
    for name in command_names():
        res = subprocess.run(
            [sys.executable, "-m", "dpft.finetune", *name.split(), "--help"],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
        )
        help_text = re.sub(r"\x1b\[[0-9;]*m", "", res.stdout or res.stderr).rstrip()
        parts += [f"## dpft {name}", "", "```text", help_text, "```", ""]
    (DOCS / "reference").mkdir(exist_ok=True)
    (DOCS / "reference" / "cli.md").write_text("\n".join(parts))


def on_pre_build(config, **kwargs) -> None:
    _copy_results()
    _front_page()
    _changelog()
    _cli_reference()
