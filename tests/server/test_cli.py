"""``kcore serve``'s argument checks, before any model loads (serving itself: test_server.py)."""

from __future__ import annotations

import pytest

from kernel_core.cli import build_parser, main


def test_serve_is_a_command_with_its_options(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    for option in ("--model", "--adapter NAME=PATH", "--adapter-dir", "--host", "--port", "--api-key",
                   "--shutdown-timeout", "--max-loras", "--num-kv-blocks", "--moe-kernel NAME", "--moe-quantization"):
        assert option in text, option
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.api_key, args.adapter) == ("127.0.0.1", 8000, None, [])


@pytest.mark.parametrize("bad", [["--adapter", "no-equals"], ["--adapter", "=path"], ["--port", "70000"]])
def test_bad_options_are_usage_errors(bad, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["serve", *bad])
    assert exit.value.code == 2


def test_refused_before_the_model_loads(tmp_path, capsys):
    assert main(["serve", "--adapter", "a=x", "--adapter", "a=y"]) == 2
    assert "distinct" in capsys.readouterr().err
    assert main(["serve", "--adapter-dir", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_moe_options_reach_the_engine_config(tiny_model, monkeypatch):
    """serve's engine gets --moe-kernel and --moe-quantization (the dense tiny model refuses them)."""
    from kernel_core.cli import serve
    from kernel_core.errors import KernelCoreError

    args = build_parser().parse_args(
        ["serve", "--model", str(tiny_model), "--num-kv-blocks", "8", "--moe-kernel", "torch", "--moe-quantization", "int8"]
    )
    with pytest.raises(KernelCoreError, match="^moe_kernel 'torch', moe_quantization 'int8': "):
        serve.build_engine(args)


def test_plugin_options_reach_the_engine_config(tiny_model):
    from kernel_core.cli import serve
    from kernel_core.contracts.settings import PluginSettingsError

    args = build_parser().parse_args(
        ["serve", "--model", str(tiny_model), "--num-kv-blocks", "8", "--plugin-option", "attention-backend.torch.nope=1"]
    )
    with pytest.raises(PluginSettingsError, match=r"^--plugin-option attention-backend.torch.nope=1: no such setting"):
        serve.build_engine(args)
