"""Command line: a thin layer over autointerp.pipeline. `autointerp --help` lists the stages.

Every flag is a field of a config dataclass (config.py), which holds its default and help text;
flags.py turns the fields into flags and the parsed flags back into configs. Only what a command
does with the configs is written here.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path

from autointerp.config import (
    OFFLINE,
    CorpusConfig,
    ExplainConfig,
    ExportConfig,
    GatherConfig,
    LLMConfig,
    LogsConfig,
    ModelConfig,
    OutputEffectsConfig,
    ReportConfig,
    RunConfig,
    SaturationConfig,
    ScoreConfig,
    ServeConfig,
    ShowConfig,
    SteerConfig,
    SteeringExampleConfig,
    TrainConfig,
    default_of,
)
from autointerp.errors import AutointerpError
from autointerp.flags import Command, build, given
from autointerp.llm.providers import PROVIDERS

EPILOG = """\
stages: corpus → model → SAE → gather → store → explain → score → saturate → report
examples:
  autointerp run                                   # embedded default, fully offline
  autointerp gather --model gpt2 --hookpoint blocks.8.hook_resid_pre --sae ./my_sae --corpus data.jsonl
  autointerp hookpoints --model EleutherAI/pythia-70m
  autointerp saturate --project project             # categories and the saturation verdict
  autointerp report --project project               # self-contained HTML + Markdown audit report
  autointerp export --project project               # Parquet, Neuronpedia, OpenAI-style JSONL
  autointerp runs --project project
"""

# The RunConfig settings each kind of command takes.
WHERE = ("project", "run_id")
SAE_SOURCE = ("sae", "sae_id", "sae_norm_scale")
JUDGE_FILES = ("keys_file", "prompt_dir")
# --sample-judge: a second explainer for a seeded sample, one of the providers that run locally
# (the first is the default for the embedded run when it is installed)
LOCAL_JUDGES = tuple(name for name, spec in PROVIDERS.items() if spec.runs_locally)
SAMPLE_JUDGES = ("none", *LOCAL_JUDGES)


# ------------------------------------------------------------------------------------ flag groups


def _add_gather_flags(c: Command) -> None:
    c.settings(RunConfig, WHERE)
    src = c.parser.add_argument_group("model and SAE")
    c.settings(ModelConfig, group=src)
    c.settings(RunConfig, SAE_SOURCE, group=src)
    c.settings(CorpusConfig, group=c.parser.add_argument_group("corpus"))
    c.settings(GatherConfig, group=c.parser.add_argument_group("gather"))
    c.settings(OutputEffectsConfig, group=c.parser.add_argument_group("output effects (causal LMs)"))
    c.settings(TrainConfig, group=c.parser.add_argument_group("SAE training (when --sae is omitted)"))
    c.add("--quiet", action="store_true", help="no progress bars")


def _add_judge_flags(c: Command) -> None:
    group = c.parser.add_argument_group("judge")
    c.settings(LLMConfig, group=group)
    c.settings(RunConfig, JUDGE_FILES, group=group)


def _add_explain_flags(c: Command) -> None:
    c.settings(ExplainConfig, group=c.parser.add_argument_group("explain"))


SCORE_FLAGS = ("scorers", "shuffle_control", "alpha", "n_intervention")
SELECTION = ("features", "sample", "sample_seed")


def _add_score_flags(c: Command, selection: bool = True) -> None:
    group = c.parser.add_argument_group("score")
    c.settings(ScoreConfig, SCORE_FLAGS + (SELECTION if selection else ()), group=group)
    c.settings(RunConfig, ("explainer",), group=group)


def _add_sample_flags(c: Command) -> None:
    c.add(
        "--sample-judge",
        choices=SAMPLE_JUDGES,
        help="also label a seeded sample with this judge, beside the main one "
        "(default: local for the embedded default when installed)",
    )
    c.settings(RunConfig, ("sample_size", "llm_minutes", "sample_scorer"))


def _add_stored_run(c: Command, quiet: bool = True) -> None:
    c.settings(RunConfig, WHERE)
    if quiet:
        c.add("--quiet", action="store_true", help="no progress bars")


# ----------------------------------------------------------------------------- configs from flags


def _where(a: argparse.Namespace) -> tuple[str, str | None]:
    """The project and run a command reads, without building a whole RunConfig."""
    chosen = given(RunConfig, a, WHERE)
    return chosen.get("project", default_of(RunConfig, "project")), chosen.get("run_id")


def _judge_config(a: argparse.Namespace) -> LLMConfig | None:
    if (a.judge or default_of(LLMConfig, "provider")) == OFFLINE:
        return None
    return build(LLMConfig, a)


def _judged(cfg: RunConfig, a: argparse.Namespace) -> RunConfig:
    """The judge, and each stage's own flags where the command has them."""
    cfg.judge = _judge_config(a)
    for name, value in given(RunConfig, a, JUDGE_FILES + ("explainer",)).items():
        setattr(cfg, name, value)
    if hasattr(a, "redo"):
        cfg.explain = build(ExplainConfig, a)
    if hasattr(a, "scorers"):
        scored = SCORE_FLAGS + (SELECTION if not hasattr(a, "redo") else ())  # `run` scores what it labelled
        cfg.score = build(ScoreConfig, a, scored)
        from autointerp.stages.score.scorers import chosen

        chosen(cfg.score.scorers)  # an unknown scorer fails here, before the gather
    if cfg.judge is not None and cfg.judge.batch:  # few large batches: each round waits on the provider
        cfg.explain = replace(cfg.explain, chunk=max(cfg.explain.chunk, cfg.judge.batch_chunk))
        cfg.score = replace(cfg.score, chunk=max(cfg.score.chunk, cfg.judge.batch_chunk))
    return cfg


def run_config(a: argparse.Namespace):
    """The RunConfig of a gathering command, and its SAE loaded on the CPU (None: one is trained)."""
    from autointerp.pipeline import load_configured_sae, model_for_sae

    cfg = RunConfig(
        **given(
            RunConfig,
            a,
            WHERE
            + SAE_SOURCE
            + ("intervention_sample", "regather", "random_baseline", "sample_size", "llm_minutes", "sample_scorer"),
        ),
        corpus=build(CorpusConfig, a),
        train=build(TrainConfig, a),
        gather=build(GatherConfig, a),
        effects=build(OutputEffectsConfig, a),
        progress=not a.quiet,
    )
    sae = load_configured_sae(cfg)  # every path and SAE id checked before the model loads
    cfg.model = model_for_sae(sae, **given(ModelConfig, a))
    return cfg, sae


def _sample_judge(a: argparse.Namespace) -> LLMConfig | None:
    """--sample-judge, or for the embedded default the local LLM when it is installed."""
    name = a.sample_judge
    if name is None:
        default_model = default_of(ModelConfig, "name")
        if (a.model or (None if a.sae else default_model)) != default_model or _judge_config(a) is not None:
            return None
        name = LOCAL_JUDGES[0]
        if not PROVIDERS[name].installed():
            print(
                f"note: the local LLM judge is not installed, so no sample is labelled by a real LLM "
                f"({PROVIDERS[name].install} adds it)",
                file=sys.stderr,
            )
            return None
    if name == "none":
        return None
    return LLMConfig(provider=name, local_threads=a.local_threads)


# ------------------------------------------------------------------------------------ commands


def cmd_gather(a: argparse.Namespace) -> None:
    from autointerp.pipeline import gather

    cfg, sae = run_config(a)
    summary = gather(cfg, sae=sae)
    if summary is not None:  # None: a rank of a distributed gather other than rank 0, which reports
        print("\n".join(summary.lines()))


def cmd_run(a: argparse.Namespace) -> None:
    from autointerp.pipeline import run

    cfg, sae = run_config(a)
    cfg = _judged(cfg, a)  # a bad judge setting fails here, before minutes of gathering
    cfg.steering = build(SteeringExampleConfig, a)
    if (sample := _sample_judge(a)) is not None:
        cfg.sample_judge = sample
    write_config(Path(cfg.project) / "configs" / f"{cfg.resolved_run_id()}.toml", a)  # a killed run can be repeated
    run(cfg, reuse_gather=not cfg.regather, sae=sae)


def cmd_estimate(a: argparse.Namespace) -> None:
    from autointerp.pipeline import estimate, gather
    from autointerp.stages.estimate import refuse_offline

    cfg, sae = run_config(a)
    cfg = _judged(cfg, a)
    refuse_offline(cfg.judge)  # before the gather, which would be for nothing
    if (sample := _sample_judge(a)) is not None:
        cfg.sample_judge = sample
    gathered = gather(cfg, reuse=True, sae=sae)
    if gathered is None:  # another rank of a distributed gather: rank 0 estimates
        return
    print("\n".join(gathered.lines()))
    for cost in estimate(cfg, gathered.run_id):
        print("\n".join(cost.lines()))


def cmd_label(a: argparse.Namespace) -> None:
    from autointerp.pipeline import label_and_score

    project, run_id = _where(a)
    cfg = _judged(RunConfig(project=project, run_id=run_id, progress=not a.quiet), a)
    explained, scored = label_and_score(
        cfg, run_id, explain_stage=a.command == "explain", score_stage=a.command == "score"
    )
    print("\n".join((explained.lines() if explained else []) + (scored.lines() if scored else [])))
    if explained is not None and explained.n_failed and not explained.n_ok:  # none of the work asked was done
        raise AutointerpError(
            f"no feature was labelled: all {explained.n_failed:,} answers failed",
            "read the answers with `autointerp logs --purpose explain --full` (each failure is stored with its "
            "reason); another --judge-model or your own prompts (--prompt-dir) may answer in the form asked",
        )


def cmd_saturate(a: argparse.Namespace) -> None:
    from autointerp.pipeline import saturate_labels

    project, run_id = _where(a)
    cfg = _judged(RunConfig(project=project, run_id=run_id, progress=not a.quiet), a)
    cfg.saturation = build(SaturationConfig, a)
    print("\n".join(saturate_labels(cfg, run_id).lines()))


def cmd_report(a: argparse.Namespace) -> None:
    from autointerp.views.report import write_report

    project, run_id = _where(a)
    cfg = build(ReportConfig, a)
    files = write_report(project, run_id, cfg.out, cfg)
    print(f"report: {files.html}\nsummary: {files.markdown}\n({files.n_features:,} features in {files.seconds:.1f}s)")


def cmd_export(a: argparse.Namespace) -> None:
    from autointerp.export import export

    project, run_id = _where(a)
    cfg = build(ExportConfig, a)
    for fmt, paths in export(project, run_id, cfg.out, cfg.formats, cfg).items():
        shown = (
            ", ".join(str(p) for p in paths)
            if len(paths) <= 4
            else f"{len(paths)} files under {os.path.commonpath(paths)}"
        )
        print(f"{fmt}: {shown}")


def cmd_steer(a: argparse.Namespace) -> None:
    from autointerp.stages.steering import steering_row
    from autointerp.store import Store
    from autointerp.subject.load import load_subject
    from autointerp.subject.steer import steer

    cfg = build(SteerConfig, a)  # a bad setting fails before the model loads
    project, run_id = _where(a)
    with Store(project, read_only=True) as store:
        subject = load_subject(store, run_id, device=cfg.device)
    result = steer(subject, cfg)
    with Store(project) as store:  # kept for the report, beside the run's own example
        store.write_steering(
            subject.run_id, "steer", steering_row(result, None, None, "asked for with autointerp steer")
        )
    print("\n".join(result.lines()))


def cmd_show(a: argparse.Namespace) -> None:
    from autointerp.store import Store
    from autointerp.views.show import feature_lines

    cfg = build(ShowConfig, a)
    project, run_id = _where(a)
    with Store(project, read_only=True) as store:
        lines = feature_lines(store, run_id, cfg.feature, explainer=cfg.explainer, n=cfg.n, colour=sys.stdout.isatty())
    print("\n".join(lines))


def cmd_hookpoints(a: argparse.Namespace) -> None:
    import torch

    from autointerp.subject.model import list_hookpoints, load_transformers

    model, _, hf_config, _ = load_transformers(a.model, torch.device("cpu"))
    print("\n".join(list_hookpoints(model, hf_config)))


def cmd_logs(a: argparse.Namespace) -> None:
    from autointerp.store import Store

    cfg = build(LogsConfig, a)
    project, run_id = _where(a)
    with Store(project, read_only=True) as store:
        calls = store.llm_calls(run_id, cfg.purpose, cfg.feature, cfg.n)
    if calls.empty:
        filtered = run_id or cfg.purpose or cfg.feature is not None
        print("no LLM calls logged" + (" matching these filters" if filtered else ""))
        return
    import pandas as pd

    for c in calls.itertuples():
        # Nullable columns come back as NaN, None or pd.NA (the last when DuckDB keeps an integer
        # type): pd.isna takes all three.
        feature = "" if pd.isna(c.feature) else f" feature {int(c.feature)}"
        if pd.isna(c.prompt_tokens):
            tokens = "no usage"
        else:
            completion = 0 if pd.isna(c.completion_tokens) else int(c.completion_tokens)
            tokens = f"{int(c.prompt_tokens):,}+{completion:,} tokens"
        error = f" ERROR {c.error}" if isinstance(c.error, str) else ""
        print(
            f"#{int(c.call_id)} {c.created_at:%Y-%m-%d %H:%M:%S} run {c.run_id} {c.purpose}{feature} "
            f"{c.provider}:{c.model} {tokens} {c.latency_s:.2f}s retries {int(c.retries)}{error}"
        )
        if cfg.full:
            print(f"  system: {c.system}\n  user: {c.user}\n  params: {c.params}")
        text = c.response if isinstance(c.response, str) else ""
        print("  response: " + (text if cfg.full or len(text) <= 200 else text[:200] + " …"))


def cmd_runs(a: argparse.Namespace) -> None:
    from autointerp.store import Store

    project, _ = _where(a)
    with Store(project, read_only=True) as store:
        runs = store.runs()
        if runs.empty:
            print(f"no runs in {store.path}")
            return
        cols = ["run_id", "model", "hookpoint", "sae_format", "d_sae", "n_tokens", "updated_at"]
        print(runs[cols].to_string(index=False))


def cmd_serve(a: argparse.Namespace) -> None:
    from autointerp.views.serve import serve

    project, run_id = _where(a)
    serve(project, run_id, build(ServeConfig, a))


# --------------------------------------------------------------------------------------- parser


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    """The parser, and each subcommand's Command (its flags, for checking a --config file)."""
    from autointerp import __version__

    parser = argparse.ArgumentParser(
        prog="autointerp",
        description="Label every feature of a sparse autoencoder, score the labels, and report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"autointerp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    commands: dict[str, Command] = {}

    def command(name: str, help: str, description: str, examples: str, func) -> Command:
        p = sub.add_parser(
            name,
            help=help,
            description=description,
            epilog="examples:\n" + examples,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        c = commands[name] = Command(p)
        c.add(
            "--config",
            help="a TOML file of this command's settings, keyed by flag name (e.g. n_top = 20); flags given as "
            "well win",
        )
        return c

    c = command(
        "run",
        "the whole pipeline: gather, explain, score, saturate, report (the embedded default when given no options)",
        "Gather (kept when this run was gathered with the same settings), explain, score, saturate and report. "
        "Re-run the same command after an interruption: answered LLM calls come from the cache and stored labels "
        "are kept.",
        "  autointerp run                                        # the embedded default, offline\n"
        "  autointerp run --model gpt2 --hookpoint blocks.8.hook_resid_pre --sae ./sae --corpus data.jsonl \\\n"
        "                 --judge openai --judge-model gpt-4o-mini\n",
        cmd_run,
    )
    _add_gather_flags(c)
    _add_judge_flags(c)
    _add_explain_flags(c)
    _add_score_flags(c, selection=False)
    c.settings(RunConfig, ("regather", "intervention_sample", "random_baseline"))
    _add_sample_flags(c)
    c.settings(SteeringExampleConfig, group=c.parser.add_argument_group("steering example (causal LMs)"))

    c = command(
        "estimate",
        "what `run` would spend: judge calls, prompt and completion tokens and dollars per stage, before any call",
        "Gathers (or keeps the stored gather: it costs no calls), then renders every prompt explain and score would "
        "send on the gathered data and counts its tokens, with no request made (no key needed); prices come from "
        "the package's price table or --prices. Takes the flags of `run`.",
        "  autointerp estimate --sae gemma-scope-2b-pt-res-canonical --sae-id layer_12/width_16k/canonical \\\n"
        "                      --judge openai --judge-model gpt-4o-mini --max-features 1000\n"
        "  autointerp estimate --config gemma-scope-2b-res.toml\n",
        cmd_estimate,
    )
    _add_gather_flags(c)
    _add_judge_flags(c)
    _add_explain_flags(c)
    _add_score_flags(c, selection=False)
    _add_sample_flags(c)

    c = command(
        "gather",
        "stream a corpus through model and SAE; store examples and statistics",
        "One streaming pass: the model stops at the hookpoint, the SAE encodes, and every feature keeps its top, "
        "quantile-sampled and verified non-activating windows and its statistics, in memory bounded by features × "
        "examples.",
        "  autointerp gather --model EleutherAI/pythia-70m --hookpoint gpt_neox.layers.3 --sae hf://owner/repo/layer_3\n",
        cmd_gather,
    )
    _add_gather_flags(c)
    c.settings(RunConfig, ("regather",))

    c = command(
        "explain",
        "label the alive features of a gathered run",
        "A judge labels each chosen feature from its explain-split windows. Features it labelled before are kept.",
        "  autointerp explain --judge local --sample 32\n"
        "  autointerp explain --judge anthropic --judge-model claude-haiku-4-5 --features 0-99\n",
        cmd_label,
    )
    _add_stored_run(c)
    _add_judge_flags(c)
    _add_explain_flags(c)

    c = command(
        "score",
        "score stored labels on held-out snippets, with a per-feature null and a shuffle control",
        "Each scorer predicts activity on score-split windows from the label alone; a label is confident when it "
        "beats a label unrelated to the activations on the same windows.",
        "  autointerp score --judge openai_compatible --base-url http://localhost:8000/v1 --judge-model llama3.1\n"
        "  autointerp score --explainer local:qwen2.5-coder-1.5b-instruct-q4_k_m --scorers embedding   # no calls\n",
        cmd_label,
    )
    _add_stored_run(c)
    _add_judge_flags(c)
    _add_score_flags(c)

    c = command(
        "saturate",
        "map labels to categories and report when new categories stop appearing",
        "Categories by embedding clustering (offline) or an LLM codebook; coverage, Chao1, Guest and ITS, bounded "
        "by the dictionary's size.",
        "  autointerp saturate\n"
        "  autointerp saturate --method codebook --judge openai --judge-model gpt-4o-mini "
        "--explainer offline:token-stats-v1\n",
        cmd_saturate,
    )
    _add_stored_run(c)
    _add_judge_flags(c)
    group = c.parser.add_argument_group("saturation")
    c.settings(RunConfig, ("explainer",), group=group)
    c.settings(SaturationConfig, group=group)

    c = command(
        "report",
        "write a run's audit report: one self-contained HTML file and a Markdown summary",
        "Built from the database alone; needs no key. Every explainer of the run is compared side by side.",
        "  autointerp report\n"
        "  autointerp report --explainer local:qwen2.5-coder-1.5b-instruct-q4_k_m --out report.html\n",
        cmd_report,
    )
    _add_stored_run(c, quiet=False)
    c.settings(ReportConfig)

    c = command(
        "export",
        "export a run: Parquet of every table, Neuronpedia and OpenAI explanation JSONL",
        "Read from the database alone; needs no key.",
        "  autointerp export --format neuronpedia\n",
        cmd_export,
    )
    _add_stored_run(c, quiet=False)
    c.settings(ExportConfig)

    c = command(
        "steer",
        "generate with a feature's decoder direction added (or the feature clamped) at the SAE's hookpoint",
        "Causal LMs. Strength is in multiples of the feature's max activation in the gather; the unsteered "
        "continuation is generated with the same seed beside it, and the added vector's norm is given against the "
        "hookpoint's.",
        "  autointerp steer --feature 123 --prompt 'I think that' --scale 8\n"
        "  autointerp steer --feature 123 --prompt 'My favourite topic is' --clamp 2 --temperature 0.7 --seed 3\n",
        cmd_steer,
    )
    _add_stored_run(c, quiet=False)
    group = c.parser.add_argument_group("steering")
    c.settings(SteerConfig, ("feature", "prompt"), group=group, required=("feature",))
    how = group.add_mutually_exclusive_group(required=True)
    c.settings(SteerConfig, ("scale", "clamp"), group=how)
    c.settings(SteerConfig, ("max_new_tokens", "temperature", "seed", "device"), group=group)

    c = command(
        "show",
        "print one feature: labels, scores, statistics, output effects and top windows, active tokens highlighted",
        "Read from the database alone; needs no key and loads no model.",
        "  autointerp show 123\n  autointerp show 123 --explainer offline:token-stats-v1 -n 10\n",
        cmd_show,
    )
    _add_stored_run(c, quiet=False)
    c.add("feature", type=int, help=ShowConfig.__dataclass_fields__["feature"].metadata["help"])
    c.settings(ShowConfig, ("explainer", "n"))

    c = command(
        "hookpoints",
        "list the hookpoints a model offers",
        "Module paths and the TransformerLens names mapped onto them.",
        "  autointerp hookpoints --model gpt2\n",
        cmd_hookpoints,
    )
    c.add("--model", required=True, help="hub id or local directory")

    c = command(
        "logs",
        "browse the logged LLM calls, newest first: prompts, answers, tokens, latency, errors",
        "Every call has an id and its run; labels and scores keep the ids of the calls behind them.",
        "  autointerp logs --purpose explain --feature 12 --full\n",
        cmd_logs,
    )
    _add_stored_run(c, quiet=False)
    c.settings(LogsConfig)

    c = command(
        "runs",
        "list the runs stored in a project",
        "One line per run: model, hookpoint, SAE, tokens.",
        "  autointerp runs --project p\n",
        cmd_runs,
    )
    c.settings(RunConfig, ("project",))

    c = command(
        "serve",
        "browse a project's features, labels, scores and saturation in a local web app (read-only)",
        "A local web app over the project's DuckDB file, opened read-only: a paged, sortable feature table with label "
        "and token search, one page per feature with every explainer's label, scores with intervals and the top "
        "windows, and the saturation and score-distribution plots. Nothing is written; while it runs no stage can "
        "write the project, so stop it (Ctrl-C) before the next stage.",
        "  autointerp serve                                   # http://127.0.0.1:8765/ over ./project\n"
        "  autointerp serve --project runs/gemma --port 9000 --quiet\n"
        "  autointerp serve --run-id r1 --port 0              # any free port\n"
        "pages: /  /feature/<index>  /scores  /saturation   (e.g. /?q=python&sort=score&scorer=detection, "
        "/?token=def)\n",
        cmd_serve,
    )
    _add_stored_run(c, quiet=False)
    c.settings(ServeConfig)
    return parser, commands


# ------------------------------------------------------------------------------------ config files


def config_file_settings(path: str, command: str, c: Command) -> dict:
    """The settings of a --config TOML file, checked against the command's flags."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise AutointerpError(f"cannot read config file {path}: {e.strerror}", "check the path") from None
    except tomllib.TOMLDecodeError as e:
        raise AutointerpError(
            f"config file {path} is not valid TOML: {e}", "write one `flag_name = value` line per setting"
        ) from None
    flat = {}
    for key, value in data.items():  # [sections] are only for reading: their keys are flags too
        flat.update(value if isinstance(value, dict) else {key: value})
    values = {k.replace("-", "_"): v for k, v in flat.items()}
    unknown = sorted(k for k in values if k not in c.flags or k == "config")
    if unknown:
        raise AutointerpError(
            f"config file {path} has settings `autointerp {command}` does not take: {', '.join(unknown)}",
            f"use the flag names of `autointerp {command} --help`, with _ for -",
        )
    for dest, value in values.items():
        choices = c.flags[dest]
        if choices is not None and value not in choices:
            raise AutointerpError(
                f"config file {path}: {dest} = {value!r} is not one of {', '.join(map(str, choices))}",
                f"pick one of them for {dest}",
            )
    return values


def write_config(path: Path, args: argparse.Namespace) -> None:
    """The settings a command was given, as a TOML file `--config` takes back. A setting holding a URL
    with a user or password (or a secret-looking query parameter) is left out, and a comment shows
    it redacted: the file never holds a secret, and a rerun asks for it again."""
    from autointerp.llm.redact import redacted

    lines = [f"# autointerp {args.command}: rerun with `autointerp {args.command} --config {path}`"]
    for key, value in sorted(vars(args).items()):
        if key in ("func", "command", "config") or value is None:
            continue
        if (shown := redacted(value)) != value:
            lines.append(
                f"# {key} = {json.dumps(shown)} is left out: it holds a password or token; "
                f"pass --{key.replace('_', '-')} again when rerunning"
            )
            continue
        lines.append(f"{key} = {json.dumps(value)}")  # JSON strings, numbers, booleans and lists are TOML too
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with a --config file's settings under the flags given beside it."""
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        c = commands[args.command]
        c.parser.set_defaults(**config_file_settings(args.config, args.command, c))
        args = parser.parse_args(argv)
    return args


# ------------------------------------------------------------------------------------------ main


def _stored_state(project: str) -> str:
    """What the project's database holds now, for the message after an interruption."""
    from autointerp.store import Store, db_path

    if not db_path(project).exists():
        return "nothing was stored"
    try:
        with Store(project, read_only=True) as store:
            counts = store.stored_counts()
    except AutointerpError as e:
        return f"could not read what was stored ({e.problem})"
    kept = ", ".join(f"{n:,} {what}" for what, n in counts.items() if n) or "nothing"
    return (
        f"{db_path(project)} holds {kept}; every stage writes whole chunks, so re-running the command resumes "
        "where it stopped"
    )


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(argv)
    except AutointerpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if getattr(args, "quiet", False):  # the libraries' own bars too (model loading, hub downloads)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    rank = os.environ.get("RANK", "0")
    who = "" if rank == "0" else f"rank {rank}: "  # under torchrun every rank reports its own failure
    # torchrun stops the other ranks with SIGTERM when one fails: unwinding like Ctrl-C lets a first
    # gather remove the database it had just created, and leaves a stored one as it was.
    main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        args.func(args)
    except AutointerpError as e:
        print(f"{who}error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        state = "" if who else f"; {_stored_state(_where(args)[0])}"  # rank 0 owns the store
        print(f"{who}interrupted{state}", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
