"""The Python API: run the stages in order, each one reading and writing the store."""

from __future__ import annotations

import json
import platform
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TypeVar

import pandas as pd
import torch

from autointerp import __version__
from autointerp.config import (
    ModelConfig,
    RunConfig,
)
from autointerp.errors import AutointerpError
from autointerp.gather.collect import HIST_EDGES, auto_batch_size, fit_sae, run_gather
from autointerp.gather.corpus import CorpusStats, iter_contexts, iter_documents
from autointerp.gather.distributed import group, rank_device, world
from autointerp.gather.text import drop_repeated_windows, source_texts
from autointerp.llm.providers import PROVIDERS
from autointerp.llm.redact import redacted
from autointerp.stages.explain import ExplainSummary, explain
from autointerp.stages.saturate import SaturationSummary, saturate
from autointerp.stages.score.stage import ScoreSummary, score
from autointerp.store import RunRecord, Store, db_path, remove_database
from autointerp.store.store import derived_loss
from autointerp.subject.effects import output_effects
from autointerp.subject.model import SubjectModel, keep_freed_memory
from autointerp.subject.sae import SAE, load_sae, save_saelens
from autointerp.subject.train import collect_activations, evaluate_sae, loss_recovered, train_topk_sae
from autointerp.views.compare import store_agreements

T = TypeVar("T")


@dataclass
class GatherSummary:
    run_id: str
    db_path: Path
    n_tokens: int
    n_contexts: int
    n_features: int
    n_dead: int
    n_dense: int
    n_examples: int
    sae_metrics: dict
    seconds: dict
    reused: bool = False  # the stored gather of the same settings was kept
    n_without_text: int = 0  # windows whose source text could not be cut out (shown as vocabulary pieces)
    n_repeated_windows: int = 0  # windows dropped because the feature had one of the same text
    n_repeated_documents: int = 0  # documents skipped as copies of an earlier one
    causal: bool = False  # the subject is a causal LM (loss recovered, output effects, intervention)

    def lines(self) -> list[str]:
        m = self.sae_metrics
        health = (
            f"SAE on held-out tokens: FVU {m['fvu']:.3f}, L0 {m['l0']:.1f}, dead {m['dead_fraction']:.1%}"
            if m
            else "SAE health: not evaluated"
        )
        if "loss_recovered" in m:
            health += (
                f", loss recovered {m['loss_recovered']:.3f} (next-token loss clean {m['loss_clean']:.3f}, SAE spliced "
                f"in {m['loss_spliced']:.3f}, zero-ablated {m['loss_zero_ablated']:.3f} nats/token)"
            )
        timing = (
            "gather: kept the stored one (same settings; --regather gathers again)"
            if self.reused
            else "time: " + ", ".join(f"{k} {v:.0f}s" for k, v in self.seconds.items())
        )
        return [
            f"database: {self.db_path}",
            f"run: {self.run_id}",
            f"corpus: {self.n_tokens:,} tokens in {self.n_contexts:,} contexts"
            + (f"; {self.n_repeated_documents:,} repeated documents skipped" if self.n_repeated_documents else ""),
            f"features: {self.n_features:,} ({self.n_features - self.n_dead:,} alive, {self.n_dead:,} dead, "
            f"{self.n_dense:,} ultra-dense)",
            f"examples stored: {self.n_examples:,}"
            + (
                f" ({self.n_repeated_windows:,} dropped as repeats of a window of the same feature with the same text)"
                if self.n_repeated_windows
                else ""
            )
            + (
                f" ({self.n_without_text:,} shown as vocabulary pieces: the tokenizer gives no character offsets "
                "or the corpus changed while it was read)"
                if self.n_without_text
                else ""
            ),
            health,
            timing,
        ]


def package_versions() -> dict[str, str]:
    out = {"autointerp": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("torch", "transformers", "duckdb", "numpy", "pandas"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _batches(cfg: RunConfig, model: SubjectModel, n_features: int, ranks: int = 1):
    """The corpus in batches; with several ranks each batch holds every rank's share of about batch_size contexts."""
    batch_size = cfg.gather.batch_size or auto_batch_size(cfg.corpus.context_length, n_features, model.device)
    if model.max_positions is not None and cfg.corpus.context_length > model.max_positions:
        raise AutointerpError(
            f"--context-length {cfg.corpus.context_length} is longer than {model.cfg.name} reads "
            f"({model.max_positions} positions)",
            f"pass --context-length {model.max_positions} or less",
        )
    return iter_contexts(iter_documents(cfg.corpus), model.tokenizer, cfg.corpus, batch_size * ranks)


def load_configured_sae(cfg: RunConfig) -> SAE | None:
    """The configured SAE on the CPU (None: one is trained). Loaded before the model, so that a
    wrong path, release or SAE id fails in seconds rather than after the model has loaded."""
    if cfg.sae is None:
        return None
    return load_sae(cfg.sae, sae_id=cfg.sae_id, norm_scaling_factor=cfg.sae_norm_scale)


def model_for_sae(
    sae: SAE | None,
    name: str | None = None,
    hookpoint: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
) -> ModelConfig:
    """The subject model of an SAE: each of name, hookpoint and dtype not given is taken from the
    SAE's own config (its release, cfg.json or trainer config); without an SAE, or where the SAE
    says nothing, ModelConfig's defaults (the embedded model)."""

    def model(**chosen) -> ModelConfig:
        return ModelConfig(**{k: v for k, v in chosen.items() if v is not None})

    if sae is None:
        return model(name=name, hookpoint=hookpoint, device=device, dtype=dtype)
    from autointerp.subject.releases import hub_model

    source = sae.metadata.get("source", "the SAE")
    named = sae.metadata.get("release", {}).get("model") or sae.metadata.get("model_name")
    if name is None and not named:
        raise AutointerpError(
            f"{source} does not name the model it was trained on", "pass --model (hub id or local directory)"
        )
    if hookpoint is None and not sae.hook_name:
        raise AutointerpError(
            f"{source} does not name its hookpoint",
            "pass --hookpoint (list them with `autointerp hookpoints --model ...`)",
        )
    if dtype is None:
        source_dtype = str(sae.metadata.get("source_dtype") or "").removeprefix("torch.")
        dtype = source_dtype if source_dtype in ("float32", "float16", "bfloat16") else None
    return model(name=name or hub_model(named), hookpoint=hookpoint or sae.hook_name, device=device, dtype=dtype)


def prepare_sae(cfg: RunConfig, model: SubjectModel, run_id: str, sae: SAE | None = None) -> tuple[SAE, str, dict]:
    """The configured SAE (given already loaded, or loaded here), or one trained when none is
    configured. Returns (sae, source, metrics): a trained SAE's held-out metrics, none for a given one
    (see evaluate_given_sae)."""
    if cfg.sae is not None:
        sae = (sae or load_configured_sae(cfg)).to(model.device)
        fit_sae(model, sae)
        if sae.hook_name and sae.hook_name not in (model.hook.name, model.hook.module_path):
            warnings.warn(
                f"the SAE names hookpoint '{sae.hook_name}' but you read '{model.hook.name}'; make sure they are the "
                "same place"
            )
        return sae, cfg.sae, {}
    x_train, x_held = collect_activations(
        model,
        _batches(cfg, model, cfg.train.n_features),
        cfg.train.train_tokens,
        cfg.train.holdout_tokens,
        progress=cfg.progress,
    )
    sae, metrics, log = train_topk_sae(x_train, x_held, cfg.train, progress=cfg.progress)
    del x_train
    out = Path(cfg.project) / "saes" / run_id
    save_saelens(
        sae,
        out,
        hook_name=cfg.model.hookpoint,
        model_name=cfg.model.name,
        extra_metadata={
            "trained_by": "autointerp",
            "train_config": asdict(cfg.train),
            "heldout": metrics.as_dict(),
            "train_seconds": log["seconds"],
        },
    )
    return sae, str(out), {**metrics.as_dict(), "train_seconds": log["seconds"], "train_tokens": log["train_tokens"]}


def evaluate_given_sae(cfg: RunConfig, model: SubjectModel, sae: SAE) -> dict:
    """FVU, L0 and dead fraction of a configured SAE on the first eval_tokens of the corpus."""
    if cfg.sae is None or cfg.eval_tokens <= 0:
        return {}
    _, held = collect_activations(model, _batches(cfg, model, sae.d_sae), 0, cfg.eval_tokens)
    return evaluate_sae(sae, held).as_dict()


# The RunConfig fields that decide what a gather stores; a stored run gathered with the same ones is current.
GATHER_FIELDS = (
    "model",
    "corpus",
    "sae",
    "sae_id",
    "sae_norm_scale",
    "train",
    "gather",
    "eval_tokens",
    "effects",
)


def gather_settings(config: dict) -> dict:
    """The settings that decide a gather, from a stored config or asdict(RunConfig). Configs stored
    before the settings were renamed (sae_hookpoint → sae_id; output effects enabled and token_change
    → mode) are read under today's names, so that their gathers stay current."""
    config = dict(config)
    if "sae_hookpoint" in config:
        config.setdefault("sae_id", config.pop("sae_hookpoint"))
    effects = dict(config.get("effects") or {})
    if "enabled" in effects:
        enabled, token_change = effects.pop("enabled"), effects.pop("token_change", True)
        config["effects"] = {"mode": "none" if not enabled else "full" if token_change else "projection", **effects}
    return json.loads(json.dumps({k: config.get(k) for k in GATHER_FIELDS}, default=str))


def stored_gather(cfg: RunConfig) -> GatherSummary | None:
    """The summary of this run's stored gather if it was made with the same settings, else None."""
    if not db_path(cfg.project).exists():
        return None
    with Store(cfg.project) as store:
        runs = store.runs()
        run_id = cfg.resolved_run_id()
        if run_id not in set(runs.run_id):
            return None
        run = store.run(run_id)
        if gather_settings(run["config"]) != gather_settings(asdict(cfg)):
            return None
        f = store.features(run_id)
        return GatherSummary(
            run_id=run_id,
            db_path=store.path,
            n_tokens=int(run["n_tokens"]),
            n_contexts=int(run["n_contexts"]),
            n_features=len(f),
            n_dead=int(f.dead.sum()),
            n_dense=int(f.dense.sum()),
            n_examples=store.table_counts(run_id)["examples"],
            sae_metrics=run["sae_metrics"],
            seconds={},
            reused=True,
            causal=bool(run["output_effects"]) or "loss_clean" in run["sae_metrics"],
        )


def _changed_settings(stored, wanted, prefix: str = "") -> list[str]:
    """The settings that differ between two gather_settings, as "gather.n_top 3 → 2"."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        return [
            change
            for key in sorted(set(stored) | set(wanted), key=str)
            for change in _changed_settings(stored.get(key), wanted.get(key), f"{prefix}{key}.")
        ]

    def short(value) -> str:
        text = json.dumps(value)
        return text if len(text) <= 40 else text[:39] + "…"

    return [f"{prefix.rstrip('.')} {short(stored)} → {short(wanted)}"] if stored != wanted else []


def regather_refusal(cfg: RunConfig) -> AutointerpError | None:
    """Why gathering this run again must not go ahead: it would delete the labels, scores and
    saturation stored for the run's present examples, and cfg.regather does not confirm that. None
    when nothing would be lost."""
    if cfg.regather or not db_path(cfg.project).exists():
        return None
    run_id = cfg.resolved_run_id()
    with Store(cfg.project) as store:
        if run_id not in set(store.runs().run_id):
            return None
        lost = derived_loss(store.derived_counts(run_id))
        if not lost:
            return None
        changed = _changed_settings(gather_settings(store.run(run_id)["config"]), gather_settings(asdict(cfg)))
    why = (
        f"other settings ({'; '.join(changed[:5])}{'; …' if len(changed) > 5 else ''})"
        if changed
        else "the same settings"
    )
    return AutointerpError(
        f"run '{run_id}' holds {lost} made from its stored examples; gathering it again with {why} would delete them",
        "to delete them, gather again with --regather (`autointerp gather --regather` or `autointerp run --regather`; "
        "Python: RunConfig(regather=True)); to keep them, pass a new --run-id"
        + ("" if changed else ", or leave out reuse=False to keep the stored gather"),
    )


def gather(cfg: RunConfig, reuse: bool = True, sae: SAE | None = None) -> GatherSummary | None:
    """Model → SAE (loaded or trained) → one streaming gather pass → the store. With reuse (unless
    cfg.regather), a run already gathered with the same settings is kept as it is, and its labels
    and scores with it. Gathering a run again deletes what was derived from its old examples
    (labels, scores, saturation): without cfg.regather to confirm it, such a gather is refused
    before any work. sae: the configured SAE when the caller has loaded it already (see
    load_configured_sae).

    Under torchrun (WORLD_SIZE > 1) every rank gathers its share of the contexts and rank 0 merges
    them, evaluates the SAE and writes the store; the other ranks return None."""
    w = world()
    if w.distributed and cfg.sae is None:
        raise AutointerpError(
            "a distributed gather needs an SAE to read: training one runs in a single process",
            "train it first with `autointerp gather` in one process (it is saved under PROJECT/saes/), then pass --sae "
            "that directory",
        )
    if not 0 < cfg.gather.window <= cfg.corpus.context_length:
        raise AutointerpError(
            f"example windows of {cfg.gather.window} tokens do not fit in contexts of {cfg.corpus.context_length}",
            f"use --window between 1 and {cfg.corpus.context_length}, or a longer --context-length",
        )
    if sae is not None:
        sae.check_finite()  # a given SAE as one loaded here (load_sae checks its own)
    model_cfg = replace(cfg.model, device=rank_device(cfg.model.device, w))
    with group(w, torch.device(model_cfg.device if model_cfg.device.startswith("cuda") else "cpu")) as g:
        stored, refusal = None, None
        if w.is_root:  # rank 0 owns the store, and decides for every rank
            try:
                stored = stored_gather(cfg) if reuse and not cfg.regather else None
                refusal = regather_refusal(cfg) if stored is None else None
            except AutointerpError as e:  # e.g. a locked database or another application's file
                refusal = e
        plan = "keep" if stored is not None else "refuse" if refusal is not None else "gather"
        if g is not None:
            plan = g.broadcast(plan)
        if plan == "refuse":
            if refusal is not None:
                raise refusal
            return None
        if plan == "keep":
            return stored
        return _gather(cfg, model_cfg, sae, g)


def _gather(cfg: RunConfig, model_cfg: ModelConfig, sae: SAE | None, g) -> GatherSummary | None:
    run_id = cfg.resolved_run_id()
    root = g is None or g.world.is_root
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    new_database = root and not db_path(cfg.project).exists()
    store = Store(cfg.project) if root else None  # opened first: a locked database fails before minutes of work
    try:
        keep_freed_memory()
        next(iter_documents(cfg.corpus), None)  # a wrong corpus path fails here, before the model loads
        sae = sae or load_configured_sae(cfg)
        model = SubjectModel(model_cfg)
        timings["load"] = time.perf_counter() - t0
        t = time.perf_counter()
        sae, sae_source, metrics = prepare_sae(cfg, model, run_id, sae)
        timings["sae"] = time.perf_counter() - t
        ranks = 1 if g is None else g.world.size
        result = run_gather(
            model,
            sae,
            lambda: _batches(cfg, model, sae.d_sae, ranks),
            cfg.gather,
            progress=cfg.progress,
            group=g,
            expected_tokens=cfg.corpus.max_tokens,
        )
        if not root:
            return None
        timings["gather"] = result.seconds
        t = time.perf_counter()
        metrics |= evaluate_given_sae(cfg, model, sae)
        if model.is_causal:
            metrics |= loss_recovered(model, sae, _batches(cfg, model, sae.d_sae))
        timings["evaluate"] = time.perf_counter() - t
        effects, effect_settings = None, {}
        if model.is_causal and cfg.effects.enabled:
            alive = result.features.feature[~result.features.dead].astype(int).tolist()
            computed = output_effects(model, sae, alive, cfg.effects, progress=cfg.progress)
            effects, effect_settings = computed.rows, computed.settings
            timings["output effects"] = computed.seconds
        t = time.perf_counter()
        corpus_stats = CorpusStats()
        names, texts, ends, without_text = source_texts(
            result.examples, iter_documents(cfg.corpus, corpus_stats), model.tokenizer
        )
        examples = result.examples.append_column("text", texts).append_column("text_ends", ends)
        examples, repeated_windows = drop_repeated_windows(examples)
        documents = pd.DataFrame(names, columns=["doc_id", "name"])
        timings["text"] = time.perf_counter() - t
        vocab = model.tokenizer.convert_ids_to_tokens(list(range(len(model.tokenizer))))
        run = RunRecord(
            run_id=run_id,
            model=cfg.model.name,
            hookpoint=cfg.model.hookpoint,
            hook_module=f"{model.hook.module_path} ({model.hook.read}put)",
            d_model=model.width,
            sae_source=sae_source,
            sae_format=sae.format,
            sae_architecture=sae.architecture,
            d_sae=sae.d_sae,
            corpus=cfg.corpus.source,
            config=redacted(asdict(cfg)),  # a base URL's password stays out of the database
            versions=package_versions(),
            sae_metrics=metrics,
            n_tokens=result.n_tokens,
            n_contexts=result.n_contexts,
            gather_seconds=result.seconds,
            output_effects=effect_settings,
            histogram_edges=HIST_EDGES.tolist(),
        )
        t = time.perf_counter()
        store.write_gather(
            run,
            result.features,
            examples,
            result.contexts,
            documents,
            vocab,
            effects,
            drop_derived=cfg.regather,  # labels written since regather_refusal looked are not lost either
        )
        timings["store"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        f = result.features
        return GatherSummary(
            run_id=run_id,
            db_path=store.path,
            n_tokens=result.n_tokens,
            n_contexts=result.n_contexts,
            n_features=len(f),
            n_dead=int(f.dead.sum()),
            n_dense=int(f.dense.sum()),
            n_examples=examples.num_rows,
            n_without_text=without_text,
            n_repeated_windows=repeated_windows,
            n_repeated_documents=corpus_stats.repeated_documents,
            sae_metrics=metrics,
            seconds=timings,
            causal=model.is_causal,
        )
    except BaseException:
        if new_database:  # a failed first gather leaves no empty database behind
            store.close()
            remove_database(cfg.project)
        raise
    finally:
        if store is not None:
            store.close()


def run_sync(coro):
    """Run a coroutine to the end from sync code, also where an event loop already runs (Jupyter):
    there it runs on a fresh loop in a worker thread, since asyncio.run refuses to nest.

    Ctrl-C raises KeyboardInterrupt at once, as it does in synchronous code. asyncio.run's own
    handler only cancels the main task, which takes effect at its next await: after the whole of
    a long computation between two awaits (embedding a chunk's windows took 9 s here, minutes on a
    busy machine). Unwinding from anywhere is safe: the store writes in transactions, the call
    journal line by line, and asyncio then cancels the requests in flight and runs their cleanup."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        # Only the main thread gets signals; and a Ctrl-C the caller ignores (a background job) stays ignored.
        if threading.current_thread() is not threading.main_thread() or (
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        ):
            return asyncio.run(coro)
        previous = signal.signal(signal.SIGINT, _interrupt_now)  # not default_int_handler: asyncio leaves it be
        try:
            return asyncio.run(coro)
        finally:
            signal.signal(signal.SIGINT, previous)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _interrupt_now(signum, frame):
    raise KeyboardInterrupt


def server_log(cfg: RunConfig) -> Path:
    return Path(cfg.project) / "logs" / "local-judge.log"


async def acheck_judge(cfg: RunConfig) -> None:
    """Find a judge that cannot work now, before any gathering: a missing key, a malformed or
    unreachable base URL, a rejected key, a missing local model or server. Makes no paid call."""
    if cfg.judge is None:
        return
    from autointerp.judges.prompts import load_prompts
    from autointerp.llm.client import MemoryCallStore, load_keys
    from autointerp.llm.connect import make_client

    load_prompts(cfg.prompt_dir)
    if PROVIDERS[cfg.judge.provider].runs_locally:
        from autointerp.llm.local import preflight

        preflight()
        return
    client = make_client(cfg.judge, MemoryCallStore(), load_keys(cfg.keys_file) if cfg.keys_file else None)
    try:
        await client.check()
    finally:
        await client.aclose()


def check_judge(cfg: RunConfig) -> None:
    run_sync(acheck_judge(cfg))


async def _with_judge(cfg: RunConfig, run_id: str | None, stages):
    """Open the store, the call log and the judge, check the judge can work, and run
    `stages(store, run_id, judge, log)`; the judge is closed and the log written after."""
    from autointerp.judges.judge import make_judge
    from autointerp.llm.client import load_keys
    from autointerp.store import CallLog

    store = Store(cfg.project, create=False)
    try:
        run_id = store.run(run_id or cfg.run_id)["run_id"]  # an unknown run id is refused, naming the stored ones
        log = CallLog(store, run_id)
        try:
            judge = make_judge(
                cfg.judge,
                log,
                keys=load_keys(cfg.keys_file) if cfg.keys_file else None,
                prompt_dir=cfg.prompt_dir,
                server_log=server_log(cfg),
            )
            try:
                await judge.check()
                return await stages(store, run_id, judge, log)
            finally:
                await judge.aclose()
        finally:
            log.close()
    finally:
        store.close()


async def alabel_and_score(
    cfg: RunConfig, run_id: str | None = None, *, explain_stage: bool = True, score_stage: bool = True
) -> tuple[ExplainSummary | None, ScoreSummary | None]:
    """Explain then score a gathered run. Scoring alone scores the labels this judge stored earlier."""

    async def stages(store, run_id, judge, log):
        started = time.perf_counter()
        explained = (
            await explain(store, run_id, judge, cfg.explain, call_log=log, progress=cfg.progress)
            if explain_stage
            else None
        )
        if explained is not None:  # the report reads these rather than embedding labels itself
            store_agreements(store, run_id, explained.explainer)
            explained.seconds = time.perf_counter() - started
        scored = None
        if score_stage:
            explainer = explained.explainer if explained else (cfg.explainer or judge.name)
            if not explained and explainer not in (known := store.explainers(run_id)):
                raise AutointerpError(
                    f"run '{run_id}' has no labels by {explainer}",
                    (
                        f"pass --explainer with one of: {', '.join(known)}"
                        if known
                        else "run `autointerp explain` first"
                    ),
                )
            started = time.perf_counter()
            scored = await score(store, run_id, explainer, judge, cfg.score, call_log=log, progress=cfg.progress)
            scored.seconds = time.perf_counter() - started
        if usage := judge.usage():  # what this run was billed, both stages together
            (scored or explained).usage = usage
        return explained, scored

    return await _with_judge(cfg, run_id, stages)


def label_and_score(
    cfg: RunConfig, run_id: str | None = None, *, explain_stage: bool = True, score_stage: bool = True
) -> tuple[ExplainSummary | None, ScoreSummary | None]:
    """alabel_and_score from sync code (notebooks included)."""
    return run_sync(alabel_and_score(cfg, run_id, explain_stage=explain_stage, score_stage=score_stage))


async def asaturate_labels(cfg: RunConfig, run_id: str | None = None) -> SaturationSummary:
    """Map a run's stored labels to categories and measure saturation (the judge is used only by method 'codebook')."""

    async def stages(store, run_id, judge, log):
        return await saturate(store, run_id, cfg.explainer or judge.name, cfg.saturation, judge=judge, call_log=log)

    return await _with_judge(cfg, run_id, stages)


def saturate_labels(cfg: RunConfig, run_id: str | None = None) -> SaturationSummary:
    """asaturate_labels from sync code (notebooks included)."""
    return run_sync(asaturate_labels(cfg, run_id))


async def aestimate(cfg: RunConfig, run_id: str | None = None) -> list:
    """What `run` would spend on LLM calls for a gathered run: a CostEstimate for the judge and one
    for the sample judge, if any. Renders every prompt; sends none (see estimate.py)."""
    from autointerp.stages.estimate import estimate_costs, refuse_offline

    judged = [cfg] + ([sample_config(cfg)] if cfg.sample_judge is not None else [])
    out = []
    with Store(cfg.project, read_only=True) as store:
        run_id = store.run(run_id or cfg.run_id)["run_id"]
        for c in judged:
            out.append(
                await estimate_costs(
                    store,
                    run_id,
                    refuse_offline(c.judge),
                    c.explain,
                    c.score,
                    explainer=c.explainer,
                    codebook_batch=c.saturation.codebook_batch if c.saturation.method == "codebook" else None,
                    prompt_dir=c.prompt_dir,
                )
            )
    return out


def estimate(cfg: RunConfig, run_id: str | None = None) -> list:
    """aestimate from sync code (notebooks included)."""
    return run_sync(aestimate(cfg, run_id))


# What the offline judge scores a sample judge's labels by: the label-reading scorers the main run
# scores its token labels by (the label-free ones do not depend on who wrote the label).
SAMPLE_READ_BY = ("detection", "fuzzing", "simulation", "embedding")


def sample_read_offline(cfg: RunConfig) -> bool:
    """Whether the offline judge, not the sample judge, scores the sample's labels (cfg.sample_scorer)."""
    if cfg.sample_scorer == "auto":
        return cfg.sample_judge is not None and not PROVIDERS[cfg.sample_judge.provider].follows_labels
    return cfg.sample_scorer == "offline"


def sample_config(cfg: RunConfig) -> RunConfig:
    """The config the sample judge runs under: its own judge, the seeded sample, its scorers (none where
    the offline judge scores its labels: see label_sample)."""
    return replace(
        cfg,
        judge=cfg.sample_judge,
        explain=replace(cfg.explain, sample=cfg.sample_size, features=None, max_features=None, stop_coverage=None),
        score=cfg.sample_score if not sample_read_offline(cfg) else replace(cfg.score, scorers=()),
        sample_judge=None,
    )


def label_sample(cfg: RunConfig, sampled: RunConfig, run_id: str) -> tuple[ExplainSummary, ScoreSummary]:
    """One round of the sample: labelled by the sample judge, scored by it or, where the offline judge
    reads the labels (sample_read_offline), by that judge at the main run's sizes, as the token labels are."""
    if not sample_read_offline(cfg):
        return label_and_score(sampled, run_id)
    explained, _ = label_and_score(sampled, run_id, score_stage=False)
    reader = replace(
        sampled, judge=None, explainer=explained.explainer, score=replace(cfg.score, scorers=SAMPLE_READ_BY)
    )
    _, scored = label_and_score(reader, run_id, explain_stage=False)
    return explained, scored


def describe_with(cfg: RunConfig, run_id: str) -> Callable[[int], str | None]:
    """A function labelling one feature by cfg's judge from its explain-split snippets, as the explain
    stage would, the label returned and not stored among the judge's labels (None if it gave none). The
    call is logged and priced like any other."""
    from autointerp.stages.explain import label_one

    def label(feature: int) -> str | None:
        async def ask(store, run_id, judge, log):
            return await label_one(store, run_id, judge, feature, cfg.explain)

        return run_sync(_with_judge(cfg, run_id, ask))

    return label


def run(cfg: RunConfig, reuse_gather: bool = True, echo=print, sae: SAE | None = None) -> None:
    """The whole pipeline: check the judges, gather (kept when already stored with the same
    settings), explain, score, saturate, then the same for the sample judge if any, and the report.
    Each stage's summary is passed to `echo` as it finishes."""
    from autointerp.config import ReportConfig
    from autointerp.stages.steering import steering_example
    from autointerp.views.compare import sample_lines
    from autointerp.views.report import write_report

    if world().is_root:  # under torchrun the other ranks only gather
        check_judge(cfg)  # a wrong key, base URL or missing local model fails before minutes of gathering
        if cfg.sample_judge is not None:
            check_judge(sample_config(cfg))
    wall: dict[str, float] = {}  # stage → seconds, printed last: where the time went

    def timed(name: str, stage: Callable[[], T]) -> T:
        started = time.perf_counter()
        out = stage()
        wall[name] = time.perf_counter() - started
        return out

    gathered = timed("gather", lambda: gather(cfg, reuse=reuse_gather, sae=sae))
    if gathered is None:
        return
    echo("\n".join(gathered.lines()))
    explained, scored = label_and_score(cfg, gathered.run_id)
    wall |= {"explain": explained.seconds, "score": scored.seconds}
    echo("\n".join(explained.lines() + scored.lines()))
    if gathered.causal and cfg.intervention_sample > 0:
        intervened = replace(
            cfg,
            explainer=explained.explainer,
            score=replace(cfg.score, scorers=("intervention",), sample=cfg.intervention_sample, features=None),
        )
        _, by_intervention = timed(
            "intervention", lambda: label_and_score(intervened, gathered.run_id, explain_stage=False)
        )
        echo("\n".join(by_intervention.lines()[1:]))
    echo("\n".join(timed("saturate", lambda: saturate_labels(cfg, gathered.run_id)).lines()))
    if cfg.random_baseline:
        echo("\n".join(timed("random baseline", lambda: random_baseline(cfg, gathered, explained.explainer))))
    if cfg.sample_judge is not None:
        sampled = sample_config(cfg)
        rounds = []
        for size in sample_sizes(cfg, gathered.run_id, rounds):
            sampled = replace(sampled, explain=replace(sampled.explain, sample=size))
            rounds.append(label_sample(cfg, sampled, gathered.run_id))
            echo("\n".join(rounds[-1][0].lines() + rounds[-1][1].lines()))
        s_explained = rounds[-1][0]
        wall["sample explain"] = sum(e.seconds for e, _ in rounds)
        wall["sample score"] = sum(sc.seconds for _, sc in rounds)
        echo(sample_size_line(cfg, rounds))
        if sample_read_offline(cfg):
            echo(
                f"LLM sample's labels scored by the offline judge, which reads the words each label names, at the main "
                f"run's sizes (--sample-scorer {cfg.sample_scorer}: {cfg.sample_judge.provider}'s own answers do not "
                "follow a label, reports/local_detection.md; --sample-scorer judge scores with it anyway)"
            )
        echo("\n".join(timed("sample saturate", lambda: saturate_labels(sampled, gathered.run_id)).lines()))
        with Store(cfg.project, read_only=True) as store:
            echo("\n".join(sample_lines(store, gathered.run_id, s_explained.explainer, explained.explainer)))
    if gathered.causal and cfg.steering.candidates:
        llm_first = ([s_explained.explainer] if cfg.sample_judge is not None else []) + [explained.explainer]
        describer = (s_explained.explainer, describe_with(sampled, gathered.run_id)) if cfg.sample_judge else None
        example = timed(
            "steering", lambda: steering_example(cfg.project, gathered.run_id, llm_first, cfg.steering, describer)
        )
        echo("\n".join(example.lines()))
    report = ReportConfig(explainer=explained.explainer)
    files = timed("report", lambda: write_report(cfg.project, gathered.run_id, cfg=report))
    echo(f"report: {files.html}\nsummary: {files.markdown}")
    echo(wall_time_line(wall))


def random_baseline(cfg: RunConfig, gathered: GatherSummary, explainer: str) -> list[str]:
    """The pipeline once more, on an SAE of the run's shape whose directions are random (run RUN-random,
    its SAE saved under PROJECT/saes/ beside a trained one): gathered (kept when already stored), labelled
    and scored by the same judge. Returns its gather's summary and the lines setting each score beside the
    baseline's."""
    from autointerp.subject.autoencoder import random_like
    from autointerp.views.compare import RANDOM_SUFFIX, baseline_lines

    run_id = gathered.run_id + RANDOM_SUFFIX
    real = load_configured_sae(cfg) or load_sae(Path(cfg.project) / "saes" / gathered.run_id)
    k = real.k or max(1, round(gathered.sae_metrics.get("l0", 1)))
    baseline = random_like(real, k, seed=cfg.train.seed)
    path = Path(cfg.project) / "saes" / run_id
    save_saelens(baseline, path, hook_name=cfg.model.hookpoint, model_name=cfg.model.name)
    b_cfg = replace(cfg, run_id=run_id, sae=str(path), sae_id=None, sae_norm_scale=None, sample_judge=None)
    random_gather = gather(b_cfg, sae=baseline)
    if random_gather is None:
        return []
    label_and_score(b_cfg, run_id)
    with Store(cfg.project, read_only=True) as store:
        return random_gather.lines() + baseline_lines(store, gathered.run_id, explainer)


def sample_sizes(cfg: RunConfig, run_id: str, rounds: list) -> Iterator[int]:
    """The sample judge's sample, in rounds: cfg.sample_size features, then (with cfg.llm_minutes) as many
    more as fit in the budget at the pace the first round measured, explain and score together. The
    samples are nested, so the second round labels only the features it adds. A re-run whose first
    round found every label stored has no pace to measure: it takes the sample the stored labels show."""
    yield cfg.sample_size
    if not cfg.llm_minutes:
        return
    (explained, scored), budget = rounds[0], cfg.llm_minutes * 60
    with Store(cfg.project, read_only=True) as store:
        alive = len(store.alive_features(run_id, include_dense=True))
        stored = len(store.explanations(run_id, explained.explainer))
    if pace := sample_pace(rounds[0]):
        more = int((budget - explained.seconds - scored.seconds) // pace)
        size = min(alive, cfg.sample_size + max(more, 0))
    else:
        size = min(alive, stored)
    if size > cfg.sample_size:
        yield size


def sample_pace(first_round: tuple) -> float | None:
    """Seconds a feature the sample judge took to explain and score in its first round; None when that
    round found every label stored."""
    explained, scored = first_round
    return (explained.seconds + scored.seconds) / explained.n_features if explained.n_features else None


def sample_size_line(cfg: RunConfig, rounds: list) -> str:
    """Which sample the LLM labelled and why: the size the budget chose, from the pace measured."""
    size = rounds[-1][0].n_features + rounds[-1][0].skipped
    if not cfg.llm_minutes:
        return f"LLM sample: {size:,} features (--sample-size {cfg.sample_size}; --llm-minutes 0 fixes it)"
    if (pace := sample_pace(rounds[0])) is None:
        return f"LLM sample: {size:,} features, as stored by an earlier run (nothing new to time the judge on)"
    why = f"the judge took {pace:.0f} s a feature (explain and score) on the first {cfg.sample_size}"
    if len(rounds) == 1:
        return (
            f"LLM sample: {size:,} features, the floor: {why}, so --llm-minutes {cfg.llm_minutes:g} fits no more "
            "(a faster machine or a larger budget labels more)"
        )
    more = size - cfg.sample_size
    return f"LLM sample: {size:,} features: {why}, so --llm-minutes {cfg.llm_minutes:g} fits {more:,} more"


def wall_time_line(wall: dict[str, float]) -> str:
    """'wall time: gather 5m 12s, explain 3s, ...; total 9m 40s'."""

    def clock(seconds: float) -> str:
        m, s = divmod(round(seconds), 60)
        return f"{m}m {s:02d}s" if m else f"{s}s"

    return (
        "wall time: " + ", ".join(f"{k} {clock(v)}" for k, v in wall.items()) + f"; total {clock(sum(wall.values()))}"
    )
