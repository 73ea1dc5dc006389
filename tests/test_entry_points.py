"""The console scripts in pyproject.toml: each resolves, answers --help, and is in the README."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_the_four_tools_exist() -> None:
    assert {"sattn-tune", "sattn-store", "sattn-eval", "sattn-bench"} <= set(SCRIPTS)
    assert SCRIPTS["sattn-eval"] == "sampleattn.eval.__main__:main"


def test_readme_lists_exactly_the_console_scripts() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Command-line tools", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(sattn-[a-z]+)` \|", section, flags=re.M))
    assert listed == set(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_entry_point_answers_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    module, function = SCRIPTS[name].split(":")
    main = getattr(importlib.import_module(module), function)
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert name in capsys.readouterr().out  # the parser's prog is the script's name


def test_eval_refuses_a_run_without_the_reference_rule(capsys: pytest.CaptureFixture[str]) -> None:
    """No alpha leaves no reference row to match the baselines to: a usage error that says so,
    before any model is loaded."""
    from sampleattn.eval.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main(["run", "--alphas", "", "--out", "unused"])
    assert stop.value.code == 2
    assert "--alphas needs at least one alpha" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["run", "--block-betas", "0.9", "--block-max-stripes", "64", "--out", "unused"])
    assert stop.value.code == 2
    assert "give --block-stripes-alpha too" in capsys.readouterr().err


def test_eval_block_rows_carry_the_block_options() -> None:
    """The block rule's rows are built with the options given: block size (key blocks and query
    blocks), stripes at their alpha, share power; each option is named in the row's label."""
    from sampleattn.eval.methods import method_specs
    from sampleattn.eval.settings import EvalSettings
    from sampleattn.rules import BlockRule

    settings = EvalSettings(alphas=[0.95], baselines=[], oracle_alphas=[], rescored_alphas=[],
                            block_betas=[0.85], block_size=64, block_stripes_alpha=0.9, block_share_power=2)
    (spec,) = [s for s in method_specs(settings) if s.family == "block_rule"]
    assert spec.name == "block b=0.85 w=0.02 p=2 kb=64 stripes a=0.9"
    config = spec.build(None, 4096).config_for(0)
    assert config.block_m == 64 and config.alpha == 0.9
    assert config.selection == BlockRule(beta=0.85, key_block=64, stripes=True, share_power=2)
    heavy = EvalSettings(alphas=[0.95], baselines=[], oracle_alphas=[], rescored_alphas=[], block_betas=[0.9],
                         block_stripes_alpha=0.99, block_max_stripes=64)
    (spec,) = [s for s in method_specs(heavy) if s.family == "block_rule"]
    assert spec.name == "block b=0.9 w=0.02 stripes a=0.99 max=64"
    assert spec.build(None, 4096).config_for(0).selection == BlockRule(beta=0.9, stripes=True, max_stripes=64)
    plain = EvalSettings(alphas=[0.95], baselines=[], oracle_alphas=[], rescored_alphas=[], block_betas=[0.9])
    (spec,) = [s for s in method_specs(plain) if s.family == "block_rule"]
    assert spec.name == "block b=0.9 w=0.02"
    assert spec.build(None, 4096).config_for(0).selection == BlockRule(beta=0.9)
