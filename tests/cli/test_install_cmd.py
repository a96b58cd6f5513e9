"""`kcore install` runs pip inside kcore's own interpreter."""

import sys

from kernel_core.cli import build_parser
from kernel_core.cli.install import pip_command


def test_install_uses_this_interpreters_pip():
    args = build_parser().parse_args(["install", "-U", "kernel-core-foo", "kernel-core-bar==1.0"])
    assert pip_command(args) == [sys.executable, "-m", "pip", "install", "--upgrade", "kernel-core-foo", "kernel-core-bar==1.0"]


def test_editable_install_of_local_folders():
    args = build_parser().parse_args(["install", "-e", "plugins/a", "plugins/b"])
    assert pip_command(args)[-4:] == ["-e", "plugins/a", "-e", "plugins/b"]
