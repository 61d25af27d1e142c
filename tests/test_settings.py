"""Settings are defined once, on the config dataclasses: every numeric one refuses NaN, infinities,
whole-number fields given fractions, and values out of its bounds, however it arrives (a flag, a
config file, Python), and the CLI turns each refusal into an error naming the flag, before any work."""

from __future__ import annotations

import math
import random

import pytest

from autointerp import config
from autointerp.cli import main
from autointerp.errors import AutointerpError
from autointerp.flags import settings_of

# What each config needs besides the setting under test to be valid at all.
BASE = {config.LLMConfig: {"provider": "openai", "model": "m"}, config.SteerConfig: {"scale": 1.0}}
CONFIGS = [
    getattr(config, name)
    for name in dir(config)
    if name.endswith("Config") and isinstance(getattr(config, name), type) and settings_of(getattr(config, name))
]
NUMERIC = [
    (cls, f) for cls in CONFIGS for f in settings_of(cls) if str(f.type).split("|")[0].strip() in ("int", "float")
]


def build(cls, **values):
    base = {} if "clamp" in values else BASE.get(cls, {})  # steering takes a scale or a clamp, not both
    return cls(**{**base, **values})


def flag(f) -> str:
    return "--" + (f.metadata.get("flag") or f.name).replace("_", "-")


def test_every_config_of_the_cli_is_covered():
    names = {cls.__name__ for cls in CONFIGS}
    assert {"GatherConfig", "TrainConfig", "LLMConfig", "ScoreConfig", "ExplainConfig", "SteerConfig"} <= names
    assert len(NUMERIC) >= 40


@pytest.mark.parametrize("cls,f", NUMERIC, ids=[f"{c.__name__}.{f.name}" for c, f in NUMERIC])
def test_a_numeric_setting_refuses_what_makes_no_sense(cls, f):
    whole = str(f.type).startswith("int")
    bad = [math.nan, math.inf, -math.inf, "7", True]
    if whole:
        bad.append(1.5)
    low, high = f.metadata["minimum"], f.metadata["maximum"]
    if low == config.POSITIVE:
        bad += [0, -1] if whole else [0.0, -0.5]
    elif low is not None:
        bad.append(low - 1)
    if high is not None:
        bad.append(high + 1)
    for value in bad:
        with pytest.raises(AutointerpError) as e:
            build(cls, **{f.name: value})
        assert flag(f) in e.value.problem, (value, e.value.problem)
    default = config.default_of(cls, f.name)
    good = default if default is not None else (1 if whole else 0.5)
    build(cls, **{f.name: good})  # the default, or a plain value where the default is unset, is taken


def test_random_values_are_taken_or_refused_with_the_flag_named_never_anything_else():
    rng = random.Random(0)
    pool = [math.nan, math.inf, -math.inf, 0, -1, 1, 2, 10**9, 1e300, -1e-9, 0.5, 2**40]
    for _ in range(600):
        cls, f = rng.choice(NUMERIC)
        value = rng.choice(pool)
        try:
            cfg = build(cls, **{f.name: value})
        except AutointerpError as e:
            assert flag(f) in e.problem or e.fix, (cls.__name__, f.name, value)
            continue
        taken = getattr(cfg, f.name)
        assert isinstance(taken, (int, float)) and math.isfinite(taken), (cls.__name__, f.name, value)


@pytest.mark.parametrize(
    "argv,named",
    [
        (["gather", "--seed", "-1"], "--seed is -1"),
        (["explain", "--sample", "-1"], "--sample is -1"),
        (["explain", "--judge", "openai", "--judge-model", "m", "--tpm", "nan"], "--tpm is nan"),
        (["explain", "--judge", "openai", "--judge-model", "m", "--timeout", "nan"], "--timeout is nan"),
        (["explain", "--judge", "openai", "--judge-model", "m", "--timeout", "0"], "--timeout is 0"),
        (["explain", "--judge", "openai", "--judge-model", "m", "--concurrency", "0"], "--concurrency is 0"),
        (["logs", "-n", "-1"], "--n is -1"),
        (["serve", "--port", "70000"], "--port is 70000"),
        (["steer", "--feature", "1", "--scale", "inf"], "--scale is inf"),
        (["saturate", "--target-coverage", "1.5"], "--target-coverage is 1.5"),
    ],
)
def test_the_cli_names_the_bad_number_before_any_work(argv, named, tmp_path, capsys):
    project = tmp_path / "p"
    assert main([*argv, "--project", str(project)]) == 2
    err = capsys.readouterr().err
    assert named in err and "fix:" in err and "Traceback" not in err
    assert not project.exists()  # refused before anything was written


def test_a_config_file_gets_the_same_checks(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("max_features = nan\n")
    assert main(["explain", "--config", str(bad), "--project", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "--max-features is nan" in err and "whole number" in err
