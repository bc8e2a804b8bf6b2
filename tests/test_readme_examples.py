"""The documentation runs: every ```python block of README.md, then every examples/*.py script, executed
in order in one namespace (as a reader pasting them into one notebook would), so that the documented
API can never drift from the code. No block can opt out."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.model
ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)


def readme_blocks() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        blocks.append((f"README.md, block at line {line}", match.group(1)))
    return blocks


def example_scripts() -> list[tuple[str, str]]:
    return [(str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"))
            for path in sorted((ROOT / "examples").glob("*.py"))]


def test_fences_are_found():
    """The extraction itself: a README without Python blocks would make the test below vacuous."""
    blocks = readme_blocks()
    assert len(blocks) >= 2
    assert any("load_language_model" in code for _, code in blocks)
    assert FENCE.findall("```python\nx = 1\n```\n```bash\nls\n```\n```python title\ny = 2\n```\n") == \
        ["x = 1\n", "y = 2\n"]


def test_readme_and_examples_run_in_order_in_one_namespace(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)
    namespace: dict = {"__name__": "__readme__"}
    for where, code in readme_blocks() + example_scripts():
        try:
            exec(compile(code, where, "exec"), namespace)  # noqa: S102 - our own documentation
        except Exception as err:  # noqa: BLE001 - name the block that broke
            pytest.fail(f"{where} raised {type(err).__name__}: {err}\n--- code ---\n{code}")
