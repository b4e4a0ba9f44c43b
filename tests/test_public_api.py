"""The public API: every name in ``priorcache.__all__`` resolves, and the README's library example runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import priorcache

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_exported_name_resolves() -> None:
    for name in priorcache.__all__:
        assert getattr(priorcache, name) is not None, name
    with pytest.raises(AttributeError, match="no_such_name"):
        priorcache.no_such_name  # noqa: B018


def test_importing_the_package_loads_no_heavy_dependency() -> None:
    code = "import sys, priorcache; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _library_example() -> str:
    text = README.read_text()
    section = text[text.index("## Library") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README's Library section has no python example"
    return match.group(1)


def test_the_readme_library_example_uses_only_the_public_api() -> None:
    imports = re.findall(r"^from (\S+) import", _library_example(), re.M)
    assert imports and set(imports) == {"priorcache"}


@pytest.mark.slow
def test_the_readme_library_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real LLM, encoder and environment, exactly as a reader would paste it."""
    monkeypatch.chdir(tmp_path)
    exec(compile(_library_example(), "README.md", "exec"), {})
    assert (tmp_path / "my-cache" / "manifest.json").is_file()
