"""Paths from the browser stay inside the server's root (no server needed to check that)."""

from __future__ import annotations

from pathlib import Path

import pytest

from casparian_nb.errors import PathOutsideRootError
from casparian_nb.serverext._paths import confined, relative_to_root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "a" / "b").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (r / "escape").symlink_to(tmp_path / "secret")
    (r / "inside").symlink_to(r / "a")
    return r


@pytest.mark.parametrize("path", ["a/b/x.tape", "a/b", "", "inside/b/x.tape",
                                  "a/./b/x.tape"])
def test_paths_inside_the_root_resolve_there(root: Path, path: str) -> None:
    real = confined(root, path)
    assert real == root.resolve() or root.resolve() in real.parents


def test_an_absolute_path_inside_the_root_is_accepted(root: Path) -> None:
    assert confined(root, str(root / "a" / "b")) == (root / "a" / "b").resolve()


@pytest.mark.parametrize("path", ["..", "../x", "a/../../x", "a\\..\\..\\x", "/etc/passwd",
                                  "escape/x.tape", "escape", "a/b/\x00"])
def test_paths_leaving_the_root_are_refused_with_a_reason(root: Path, path: str) -> None:
    with pytest.raises(PathOutsideRootError, match=r"^refused: ") as info:
        confined(root, path)
    assert isinstance(info.value, PermissionError)
    assert "\n" not in str(info.value)


def test_relative_to_root_names_files_as_the_file_browser_does(root: Path, tmp_path: Path) -> None:
    assert relative_to_root(root, root / "a" / "b" / "s.tape") == "a/b/s.tape"
    assert relative_to_root(root, tmp_path / "secret" / "s.tape") is None
