"""A chunk server's running mark: a machine that went down under it is told from a kill on the same boot."""

from __future__ import annotations

from pathlib import Path

import pytest

from chunkfs.cs import clean_stop


def test_a_mark_from_another_boot_says_the_machine_went_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clean_stop, "boot_id", lambda: "boot-b")
    assert clean_stop.begin(tmp_path) is False  # a first start
    assert (tmp_path / clean_stop.RUNNING_MARK).read_text() == "boot-b\n"
    assert clean_stop.begin(tmp_path) is False  # killed and started again on this boot: its pages were kept
    (tmp_path / clean_stop.RUNNING_MARK).write_text("boot-a\n")
    assert clean_stop.begin(tmp_path) is True  # left by a boot that ended under it
    assert clean_stop.begin(tmp_path) is False  # and marked for this one
    clean_stop.end(tmp_path)
    assert not (tmp_path / clean_stop.RUNNING_MARK).exists()
    assert clean_stop.begin(tmp_path) is False  # after a clean stop


def test_without_a_boot_id_every_mark_left_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clean_stop, "boot_id", lambda: "")
    assert clean_stop.begin(tmp_path) is False
    assert clean_stop.begin(tmp_path) is True
