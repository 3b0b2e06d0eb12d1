"""README.md's results table is docs/results/README.md's, row for row (docs/results/readme_table.py makes it)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load():
    spec = importlib.util.spec_from_file_location("readme_table", ROOT / "docs" / "results" / "readme_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_results_table_is_the_results_index():
    table = load()
    assert (ROOT / "README.md").read_text() == table.expected_readme(), (
        "README.md's results table differs from docs/results/README.md's: run `python docs/results/readme_table.py`"
    )


def test_links_are_rewritten_from_the_repository_root():
    table = load()
    row = "| x | see [comparing runs](../guide/comparing-runs.md) | [demo](demo.md#seeds) |"
    assert (
        table.from_root(row)
        == "| x | see [comparing runs](docs/guide/comparing-runs.md) | [demo](docs/results/demo.md#seeds) |"
    )
    assert (
        table.from_root("[paper](https://arxiv.org/abs/1) [here](#top)")
        == "[paper](https://arxiv.org/abs/1) [here](#top)"
    )
