"""The README and the docs/ pages: their ```python blocks are copy-paste runnable and
formatted as ruff formats the package, and their relative links resolve.

A ```python block runs on its own (a fresh namespace per block); a block that only
shows a fragment (names defined in the prose, or a cluster to run on) is fenced as
```py and not run. Blocks that start a distributed runtime
(`jax.distributed.initialize`) need several processes and are not run here
(`tests/multiprocess_checks.py` runs that path)."""

import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _name(page: pathlib.Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _blocks(page: pathlib.Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


BLOCKS = [(_name(p), i, b) for p in PAGES for i, b in enumerate(_blocks(p))]
IDS = [f"{name}[{i}]" for name, i, _ in BLOCKS]


def test_pages_have_examples():
    assert _blocks(ROOT / "README.md"), "README.md has no ```python examples"
    assert len(PAGES) > 1, "docs/ has no markdown pages"


@pytest.mark.parametrize("name, index, block", BLOCKS, ids=IDS)
def test_example_runs(name, index, block):
    if "jax.distributed.initialize(" in block:
        pytest.skip("starts a distributed runtime: several processes needed")
    exec(compile(block, f"{name}[python block {index}]", "exec"), {})


def test_examples_formatted():
    """Each block is what `ruff format` (the project's configuration) makes of it."""
    exe = shutil.which("ruff")
    cmd = [exe] if exe else [sys.executable, "-m", "ruff"]
    unformatted = []
    for name, index, block in BLOCKS:
        result = subprocess.run(
            [*cmd, "format", "--stdin-filename", str(ROOT / "docs_block.py"), "-"],
            input=block,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, f"{name}[{index}]: {result.stderr}"
        if result.stdout != block:
            unformatted.append(f"{name}[python block {index}]")
    assert not unformatted, f"not as `ruff format` writes them: {unformatted}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: pathlib.Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {_slug(h) for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}


def test_relative_links_resolve():
    """Every relative link `[text](path#anchor)` names a file of the checkout and,
    for a markdown page, one of its headings."""
    broken = []
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto: ...
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{_name(page)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{_name(page)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)
