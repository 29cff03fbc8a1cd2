"""The kernels' build runs this environment's ninja, whatever PATH its process was started with."""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path

from tokenworks.engine.kernels.build import _environment_ninja_first, path_with_environment_ninja


def test_the_scripts_directory_goes_first_when_it_holds_a_ninja(tmp_path: Path) -> None:
    scripts = tmp_path / "bin"
    scripts.mkdir()
    (scripts / "ninja").write_text("")
    path = os.pathsep.join(["/usr/local/bin", str(scripts), "/usr/bin"])
    assert path_with_environment_ninja(path, scripts) == os.pathsep.join([str(scripts), "/usr/local/bin", "/usr/bin"])
    assert path_with_environment_ninja("", scripts) == str(scripts)


def test_without_a_ninja_there_path_is_left_alone(tmp_path: Path) -> None:
    path = os.pathsep.join(["/usr/local/bin", "/usr/bin"])
    assert path_with_environment_ninja(path, tmp_path) == path


def test_during_the_build_ninja_is_this_environments_and_path_comes_back(monkeypatch) -> None:
    scripts = Path(sysconfig.get_path("scripts"))
    assert (scripts / "ninja").is_file()  # the `ninja` dependency, installed beside this interpreter
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # as `.venv/bin/pytest` or `.venv/bin/tokenworks` start
    with _environment_ninja_first():
        assert Path(shutil.which("ninja")) == scripts / "ninja"
    assert os.environ["PATH"] == "/usr/bin:/bin"
