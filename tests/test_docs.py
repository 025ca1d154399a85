"""The front page stays short and its numbers stay those of the results files."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_results_table_is_generated_from_the_results_files():
    script = ROOT / "experiments" / "benchmarks" / "summary_table.py"
    res = subprocess.run([sys.executable, str(script), "--check"], cwd=ROOT)
    assert res.returncode == 0, "README.md's table is stale: run python experiments/benchmarks/summary_table.py"


def test_the_readme_is_a_front_page_not_a_notebook():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    assert "make demo" in "\n".join(lines) and "make test" in "\n".join(lines)


def test_every_page_in_the_docs_navigation_exists_or_is_generated():
    import yaml

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python", ""))["nav"]

    def pages(items):
        for item in items:
            for value in item.values():
                yield from pages(value) if isinstance(value, list) else [value]

    generated = {"index.md", "changelog.md", "reference/cli.md"}
    for page in pages(nav):
        if page.startswith("results/"):
            assert (ROOT / "experiments" / page).exists(), page
        else:
            assert page in generated or (ROOT / "docs" / page).exists(), page
