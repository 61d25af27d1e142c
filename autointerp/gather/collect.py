"""Gather stage: one streaming pass from contexts to per-feature examples and statistics.

Memory is bounded by features × examples kept, never by corpus size. Per
feature and per split the pass keeps three fixed-size banks:

- top: the `n_top` contexts with the highest peak activation (one window per
  context, centred on its peak, so windows never overlap);
- quantile: a uniform random sample of `n_bins × per_bin` activating contexts
  (bottom-k sampling: every candidate draws a random key, the largest keys
  stay), later cut into equal-count activation-quantile bins;
- negative: a uniform random sample of windows whose every token's activation
  is exactly 0 for that feature.

Statistics (firing count, sum, max, a log-spaced histogram) are running sums.
Every context is assigned to the explain or the score split by a seeded hash of
its index, so the two splits can never share a token.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from autointerp.config import GatherConfig
from autointerp.errors import AutointerpError
from autointerp.gather.corpus import ContextBatch

SPLITS = ("explain", "score")
KINDS = ("top", "quantile", "negative")
HIST_EDGES = np.logspace(-4, 4, 65)  # 8 decades, 8 bins each; below/above fall into the end bins


@dataclass
class GatherResult:
    features: pd.DataFrame  # one row per feature: statistics and flags
    examples: pa.Table  # one row per kept window (schema: store.examples minus run_id)
    contexts: pd.DataFrame  # context_id → split
    n_tokens: int  # valid (non-special) tokens seen
    n_contexts: int
    seconds: float
    config: dict = field(default_factory=dict)


def split_of(context_ids: np.ndarray, explain_fraction: float, seed: int) -> np.ndarray:
    """0 (explain) or 1 (score) per context: a splitmix64 hash of (seed, index), so it is stable and stateless."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        z = context_ids.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(11)).astype(np.float64) / 2.0**53 >= explain_fraction).astype(np.int64)


_M32 = 0xFFFFFFFF


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser on int64 tensors holding values below 2**32 (products wrap; the low
    32 bits, which are all that is kept, are right either way)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def _context_hash(seed: int, stream: int, context_ids: torch.Tensor) -> torch.Tensor:
    c = context_ids.long()
    return _mix32(
        _mix32((c & _M32) ^ _mix32(c >> 32))
        ^ _mix32(torch.tensor((seed * 0x9E3779B1 + stream) & _M32, device=c.device))
    )


def sample_keys(seed: int, stream: int, features: torch.Tensor, context_ids: torch.Tensor) -> torch.Tensor:
    """[F, C] uniform keys in [0, 1) from (seed, stream, feature, context) alone: a feature's sample
    does not depend on which other features or contexts share its pass, its shard or its rank."""
    h = _mix32(_context_hash(seed, stream, context_ids)[None, :] ^ _mix32(features.long() & _M32)[:, None])
    return (h >> 8).float() / 2.0**24


_TIE_BITS = 29


def tie_broken(keys: torch.Tensor, context_ids: torch.Tensor) -> torch.Tensor:
    """[F, C] float32 keys made unique as float64: equal keys order by context id (the smaller
    first), each staying below the next float32, so unequal keys keep their order. A bank's
    content then depends on no arrival order (batching, shards, ranks). Exact below 2**29 contexts."""
    up = torch.nextafter(keys, torch.full_like(keys, math.inf)).double()
    base = keys.double()
    frac = 1.0 - (context_ids.double() + 1) / 2**_TIE_BITS
    return torch.where(torch.isfinite(keys), base + (up - base) * frac[None, :], base)


class ExampleBank:
    """Per feature, the `k` candidates with the largest keys, with their windows.

    Slots are updated in place: each batch only touches the features with a candidate that beats
    their current floor, and only writes the windows of candidates that enter.
    """

    FIELDS = ("keys", "peak_value", "context", "doc", "doc_offset", "peak", "tokens", "acts")

    def __init__(self, n_features: int, k: int, window: int, device: torch.device, with_acts: bool):
        self.k = k
        self.keys = torch.full((n_features, k), -torch.inf, dtype=torch.float64, device=device)
        self.peak_value = torch.zeros(n_features, k, device=device)
        self.context = torch.full((n_features, k), -1, dtype=torch.long, device=device)
        self.doc = torch.full((n_features, k), -1, dtype=torch.long, device=device)
        self.doc_offset = torch.full((n_features, k), -1, dtype=torch.long, device=device)
        self.peak = torch.full((n_features, k), -1, dtype=torch.long, device=device)
        self.tokens = torch.full((n_features, k, window), -1, dtype=torch.int32, device=device)
        self.acts = torch.zeros(n_features, k, window, device=device) if with_acts else None

    def offer(self, keys: torch.Tensor, fill: Callable[[torch.Tensor, torch.Tensor], dict]) -> None:
        """keys: [F, C], -inf where a candidate is not eligible. fill(features, candidates) → window fields."""
        k = self.k
        beats = keys > self.keys.min(dim=1, keepdim=True).values
        rows = beats.any(1).nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        m = int(beats[rows].sum(1).max())  # at most this many candidates can enter any row
        cand_keys, cand_idx = keys[rows].topk(m, dim=1)
        # Dropping the m smallest of bank + candidates frees exactly as many slots per row as enter.
        merged = torch.cat([self.keys[rows], cand_keys], dim=1)
        dropped = torch.zeros_like(merged, dtype=torch.bool)
        dropped.scatter_(1, merged.topk(m, dim=1, largest=False).indices, True)
        free = dropped[:, :k]
        entering = ~dropped[:, k:] & torch.isfinite(cand_keys)
        # The r-th entering candidate of a row takes that row's r-th free slot.
        slot_of_rank = torch.full(free.shape, -1, dtype=torch.long, device=keys.device)
        free_r, free_slot = free.nonzero(as_tuple=True)
        slot_of_rank[free_r, (free.cumsum(1) - 1)[free_r, free_slot]] = free_slot
        new_r, new_j = entering.nonzero(as_tuple=True)
        if new_r.numel() == 0:
            return
        slot = slot_of_rank[new_r, (entering.cumsum(1) - 1)[new_r, new_j]]
        new_f = rows[new_r]
        self.keys[new_f, slot] = cand_keys[new_r, new_j]
        for name, value in fill(new_f, cand_idx[new_r, new_j]).items():
            getattr(self, name)[new_f, slot] = value

    def absorb(self, other: ExampleBank) -> None:
        """Keep the k best of both banks (another rank's, over other contexts): with unique keys this
        is exactly the bank one pass over all their contexts fills."""
        best = torch.cat([self.keys, other.keys], dim=1).topk(self.k, dim=1).indices
        for name in self.FIELDS:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is None:
                continue
            index = best if mine.dim() == 2 else best[:, :, None].expand(-1, -1, mine.shape[2])
            setattr(self, name, torch.cat([mine, theirs], dim=1).gather(1, index))

    def columns(
        self, alive: torch.Tensor, n_bins: int | None = None, exclude: torch.Tensor | None = None
    ) -> dict[str, np.ndarray]:
        """Flat columns of the filled slots of alive features, copied out slot by slot (never the
        whole bank). rank orders a feature's slots by key, best first; with n_bins it orders them by
        activation, lowest first, and cuts them into that many equal-count bins. `exclude` [F, k]
        drops slots after ranks and bins are set, so the bins still cut the whole sample."""
        filled = (self.context >= 0) & alive[:, None]
        # Ties (equal peaks in repeated text) are broken by context id, so the order does not depend
        # on which slot a window happened to land in: the same for any batching, shard or rank.
        by_context = self.context.argsort(dim=1, stable=True)
        if n_bins is None:
            value = self.keys.gather(1, by_context)  # unfilled slots (key −inf) sort last
            order = by_context.gather(1, value.argsort(dim=1, descending=True, stable=True))
        else:
            value = torch.where(filled, self.peak_value, torch.inf).gather(1, by_context)
            order = by_context.gather(1, value.argsort(dim=1, stable=True))
        keep = filled if exclude is None else filled & ~exclude
        f, rank = keep.gather(1, order).nonzero(as_tuple=True)
        slot = order[f, rank]
        quantile = torch.full_like(rank, -1) if n_bins is None else rank * n_bins // filled.sum(1)[f]
        out = {"feature": f, "rank": rank, "quantile": quantile}
        for name, column in (
            ("context_id", "context"),
            ("doc_id", "doc"),
            ("doc_offset", "doc_offset"),
            ("peak", "peak"),
            ("max_activation", "peak_value"),
            ("tokens", "tokens"),
            ("acts", "acts"),
        ):
            t = getattr(self, column)
            out[name] = None if t is None else t[f, slot]
        return {name: None if t is None else t.cpu().numpy() for name, t in out.items()}


def free_memory(device: torch.device) -> int:
    """Bytes that can be allocated now: free GPU memory, or the kernel's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_bank_memory(cfg: GatherConfig, n_features: int, device: torch.device) -> None:
    """Refuse banks that cannot fit, before anything is allocated (with room left for the model)."""
    need, free = cfg.bank_bytes(n_features), free_memory(device)
    if need > 0.8 * free:
        slots = cfg.n_top + cfg.n_bins * cfg.per_bin + cfg.n_negative
        raise AutointerpError(
            f"the example banks need {need / 2**30:,.1f} GiB ({n_features:,} features × 2 splits × {slots:,} windows "
            "of "
            f"{cfg.window} tokens), but {free / 2**30:,.1f} GiB is free on {device}",
            "pass a smaller --n-top, --per-bin, --n-negative or --window",
        )


class Gatherer:
    """Streaming state for one gather pass over a fixed SAE."""

    def __init__(self, n_features: int, cfg: GatherConfig, device: torch.device, causal: bool, first_feature: int = 0):
        """first_feature: the SAE index of this gatherer's feature 0 (a shard of the dictionary)."""
        check_bank_memory(cfg, n_features, device)
        self.cfg = cfg
        self.device = device
        self.n_features = n_features
        self.first_feature = first_feature
        self.feature_ids = torch.arange(first_feature, first_feature + n_features, device=device)
        self.before = (
            cfg.tokens_before_peak
            if cfg.tokens_before_peak is not None
            else (cfg.window * 3 // 4 if causal else cfg.window // 2)
        )
        n_quant = cfg.n_bins * cfg.per_bin
        self.banks = {
            (s, kind): ExampleBank(n_features, k, cfg.window, device, with_acts=kind != "negative")
            for s in range(2)
            for kind, k in (("top", cfg.n_top), ("quantile", n_quant), ("negative", cfg.n_negative))
        }
        self.count = torch.zeros(n_features, dtype=torch.long, device=device)
        self.total = torch.zeros(n_features, dtype=torch.float64, device=device)
        self.max = torch.zeros(n_features, device=device)
        self.hist = torch.zeros(n_features * (len(HIST_EDGES) + 1), dtype=torch.long, device=device)
        self.edges = torch.tensor(HIST_EDGES, dtype=torch.float32, device=device)
        self.n_tokens = 0
        self.splits: list[np.ndarray] = []
        self.context_ids: list[np.ndarray] = []

    def update(self, batch: ContextBatch, sparse: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        """sparse: the batch's nonzero SAE activations as (row, feature, value), row = b·T + t over
        its [B, T] tokens, as SAE.encode_sparse gives them. Only nonzeros are ever touched, so the
        cost follows L0, not the dictionary size."""
        B, T = batch.input_ids.shape
        F, W = self.n_features, self.cfg.window
        dev = self.device
        valid = torch.from_numpy(batch.valid).to(dev).view(-1)
        row, col, val = sparse
        keep = valid[row]  # special and padding tokens never count
        row, col, val = row[keep], col[keep], val[keep].float()
        if not bool(torch.isfinite(val.sum())):
            bad = torch.unique(row[~torch.isfinite(val)] // T).cpu().numpy()
            raise AutointerpError(
                f"NaN or inf SAE activations in contexts {batch.context_ids[bad][:5].tolist()}",
                "run the model in float32 (--dtype float32) and check the SAE weights for NaN/inf; "
                "a d_in that matches but a wrong hookpoint or normalisation can also blow up",
            )
        self.n_tokens += int(batch.valid.sum())
        self.count += torch.bincount(col, minlength=F)
        self.total += torch.bincount(col, weights=val.double(), minlength=F)
        bins = torch.bucketize(val, self.edges)
        self.hist += torch.bincount(col * (len(HIST_EDGES) + 1) + bins, minlength=self.hist.numel())

        nz = _Nonzeros(row // T, row % T, col, val, B, T, F)
        ctx_max, peak_pos = nz.context_peaks()
        self.max = torch.maximum(self.max, ctx_max.amax(1))
        n_grid = T // W  # negative candidates are whole grid windows
        fires = nz.fires_in_window(W)[:, :, :n_grid]  # [F, B, n_grid]

        seg_lo, seg_hi = _segments(batch.doc_ids)
        ctx = _BatchView(
            batch,
            nz,
            ctx_max,
            peak_pos,
            torch.from_numpy(seg_lo).to(dev),
            torch.from_numpy(seg_hi).to(dev),
            W,
            self.before,
        )
        split = split_of(batch.context_ids, self.cfg.explain_fraction, self.cfg.seed)
        self.splits.append(split)
        self.context_ids.append(batch.context_ids)
        # Negative candidates: grid windows, trimmed to the document of their first real token.
        neg_start, neg_len = _negative_windows(batch.doc_ids, seg_hi, W)
        neg_start_t = torch.from_numpy(neg_start).to(dev)
        neg_len_t = torch.from_numpy(neg_len).to(dev)
        for s in range(2):
            rows_s = torch.from_numpy(np.flatnonzero(split == s)).to(dev)
            if rows_s.numel() == 0:
                continue
            peaks = ctx_max[:, rows_s]  # [F, C]
            firing = peaks > 0
            ids_s = torch.from_numpy(batch.context_ids).to(dev)[rows_s]
            self.banks[s, "top"].offer(
                tie_broken(torch.where(firing, peaks, -torch.inf), ids_s),
                lambda f, c, rows_s=rows_s: ctx.peak_window(f, rows_s[c]),
            )
            rand = sample_keys(self.cfg.seed, 0, self.feature_ids, ids_s)
            self.banks[s, "quantile"].offer(
                tie_broken(torch.where(firing, rand, -torch.inf), ids_s),
                lambda f, c, rows_s=rows_s: ctx.peak_window(f, rows_s[c]),
            )
            if n_grid == 0:
                continue
            # One grid window per context is a candidate, chosen without looking at activations, so each
            # feature's bank stays a uniform sample of its quiet windows at a fraction of the work.
            w = _context_hash(self.cfg.seed, 1, ids_s) % n_grid
            quiet = ~fires[:, rows_s, w] & (neg_len_t[rows_s, w] >= W // 2)  # [F, C]
            rand = sample_keys(self.cfg.seed, 2, self.feature_ids, ids_s)
            self.banks[s, "negative"].offer(
                tie_broken(torch.where(quiet, rand, -torch.inf), ids_s),
                lambda f, c, rows_s=rows_s, w=w: ctx.fixed_window(
                    rows_s[c], neg_start_t[rows_s[c], w[c]], neg_len_t[rows_s[c], w[c]]
                ),
            )

    def absorb(self, other: Gatherer) -> None:
        """Add the state of a gatherer of the same features over other contexts (another rank's
        share): counts, sums and histograms add, maxima take the larger, banks keep their best keys.
        The result is the one-pass gather of all their contexts (sums up to float64 rounding)."""
        if (other.first_feature, other.n_features) != (self.first_feature, self.n_features):
            raise ValueError("absorb needs a gatherer of the same features")
        self.count += other.count
        self.total += other.total
        self.hist += other.hist
        self.max = torch.maximum(self.max, other.max)
        self.n_tokens += other.n_tokens
        self.splits += other.splits
        self.context_ids += other.context_ids
        for key, bank in self.banks.items():
            bank.absorb(other.banks[key])

    def state_tensors(self) -> list[torch.Tensor]:
        """Every tensor of the state, in a fixed order: what another rank sends to be absorbed."""
        banks = [getattr(bank, name) for _, bank in sorted(self.banks.items()) for name in ExampleBank.FIELDS]
        return [self.count, self.total, self.max, self.hist] + [t for t in banks if t is not None]

    def state_objects(self) -> tuple:
        return self.n_tokens, self.splits, self.context_ids

    def load_state_objects(self, state: tuple) -> None:
        self.n_tokens, self.splits, self.context_ids = state

    def finish(self) -> tuple[pd.DataFrame, pa.Table, pd.DataFrame]:
        cfg = self.cfg
        count = self.count.cpu().numpy()
        density = count / max(self.n_tokens, 1)
        hist = self.hist.view(self.n_features, -1).cpu().numpy()
        features = pd.DataFrame(
            {
                "feature": np.arange(self.first_feature, self.first_feature + self.n_features),
                "n_firing": count,
                "density": density,
                "max_activation": self.max.cpu().numpy().astype(np.float64),
                "mean_activation": np.where(count > 0, self.total.cpu().numpy() / np.maximum(count, 1), 0.0),
                "dead": count == 0,
                "dense": density > cfg.dense_threshold,
                "histogram": list(hist.astype(np.int64)),
            }
        )
        alive = self.count > 0  # dead features keep nothing: their negatives would say nothing
        parts = []
        for (s, kind), bank in self.banks.items():
            if kind == "quantile":  # a sample that is also a top example of its split would only repeat that window
                top = self.banks[s, "top"].context
                repeats = (bank.context[:, :, None] == top[:, None, :]).any(2)
                part = bank.columns(alive, n_bins=cfg.n_bins, exclude=repeats)
            else:
                part = bank.columns(alive)
            part["feature"] = part["feature"] + self.first_feature
            n = len(part["feature"])
            part.update(split=np.full(n, s, dtype=np.int8), kind=np.full(n, KINDS.index(kind), dtype=np.int8))
            parts.append(part)
        examples = _examples_table(parts)
        contexts = pd.DataFrame(
            {"context_id": np.concatenate(self.context_ids), "split": np.array(SPLITS)[np.concatenate(self.splits)]}
        ).sort_values("context_id", ignore_index=True)  # absorbed shares arrive in rank order
        return features, examples, contexts


@dataclass
class _Nonzeros:
    """One batch's nonzero activations, flat: context b, position t, feature, value; [B, T] tokens, F features."""

    b: torch.Tensor
    t: torch.Tensor
    feature: torch.Tensor
    value: torch.Tensor
    B: int
    T: int
    F: int

    def context_peaks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[F, B] peak activation per context and its first position, in one reduction: the bits of
        a positive float32 order like the float, so (bits << 32 | T−1−t) has its max at the peak."""
        key = (self.value.view(torch.int32).long() << 32) | (self.T - 1 - self.t)
        best = torch.zeros(self.F * self.B, dtype=torch.long, device=key.device)
        best.scatter_reduce_(0, self.feature * self.B + self.b, key, "amax")
        peak = (best >> 32).int().view(torch.float32).view(self.F, self.B)
        return peak, (self.T - 1 - (best & 0xFFFFFFFF)).view(self.F, self.B)

    def fires_in_window(self, W: int) -> torch.Tensor:
        """[F, B, ⌈T/W⌉] whether the feature fires anywhere in each W-token window of each context."""
        n_win = -(-self.T // W)
        fires = torch.zeros(self.F * self.B * n_win, dtype=torch.bool, device=self.value.device)
        fires[(self.feature * self.B + self.b) * n_win + self.t // W] = True
        return fires.view(self.F, self.B, n_win)

    def windows(
        self, f: torch.Tensor, c: torch.Tensor, start: torch.Tensor, length: torch.Tensor, W: int
    ) -> torch.Tensor:
        """[n, W] activations of feature f[i] in context c[i] from start[i], zero past length[i];
        the (f, c) pairs are distinct. One pass over the nonzeros, whatever n is."""
        owner = torch.full((self.F * self.B,), -1, dtype=torch.long, device=f.device)
        owner[f * self.B + c] = torch.arange(len(f), device=f.device)
        i = owner[self.feature * self.B + self.b]
        hit = i >= 0
        i, t, v = i[hit], self.t[hit], self.value[hit]
        off = t - start[i]
        inside = (off >= 0) & (off < length[i])
        out = torch.zeros(len(f), W, device=f.device)
        out[i[inside], off[inside]] = v[inside]
        return out


@dataclass
class _BatchView:
    """The current batch, for cutting windows out of it on the device."""

    batch: ContextBatch
    nz: _Nonzeros
    ctx_max: torch.Tensor  # [F, B] peak activation per context
    peak_pos: torch.Tensor  # [F, B] its first position
    seg_lo: torch.Tensor  # [B, T] first position of each token's document in the context
    seg_hi: torch.Tensor  # [B, T] one past its last position
    window: int
    before: int

    def __post_init__(self):
        dev = self.ctx_max.device
        self.input_ids = torch.from_numpy(self.batch.input_ids).to(dev)
        self.doc_ids = torch.from_numpy(self.batch.doc_ids).to(dev)
        self.doc_offsets = torch.from_numpy(self.batch.doc_offsets).to(dev)
        self.context_ids = torch.from_numpy(self.batch.context_ids).to(dev)
        self.steps = torch.arange(self.window, device=dev)
        # Every W-token window of every context, as a view: cutting one copies a row, not W lookups.
        B, T = self.input_ids.shape
        padded = torch.full((B, T + self.window), -1, dtype=torch.int32, device=dev)
        padded[:, :T] = self.input_ids
        self.windows = padded.unfold(1, self.window, 1)  # [B, T + 1, W]

    def peak_window(self, f: torch.Tensor, c: torch.Tensor) -> dict:
        p = self.peak_pos[f, c]
        lo, hi = self.seg_lo[c, p], self.seg_hi[c, p]
        start = torch.minimum(torch.clamp(p - self.before, min=0), torch.clamp(hi - self.window, min=0))
        start = torch.maximum(start, lo)
        length = torch.minimum(hi - start, torch.full_like(start, self.window))
        out = self.fixed_window(c, start, length)
        out["acts"] = self.nz.windows(f, c, start, length, self.window)
        out["peak"] = p - start
        out["peak_value"] = self.ctx_max[f, c]
        return out

    def fixed_window(self, c: torch.Tensor, start: torch.Tensor, length: torch.Tensor) -> dict:
        return {
            "context": self.context_ids[c],
            "doc": self.doc_ids[c, start],
            "doc_offset": self.doc_offsets[c, start],
            "tokens": torch.where(self.steps < length[:, None], self.windows[c, start], -1),
        }


def _segments(doc_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every position, the [lo, hi) span of the run of equal doc ids it sits in."""
    B, T = doc_ids.shape
    change = np.ones((B, T), dtype=bool)
    change[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    idx = np.where(change, np.arange(T)[None, :], 0)
    lo = np.maximum.accumulate(idx, axis=1)
    end = np.ones((B, T), dtype=bool)
    end[:, :-1] = change[:, 1:]
    idx_hi = np.where(end, np.arange(T)[None, :] + 1, T)
    hi = np.minimum.accumulate(idx_hi[:, ::-1], axis=1)[:, ::-1]
    return lo.astype(np.int64), hi.astype(np.int64).copy()


def _negative_windows(doc_ids: np.ndarray, seg_hi: np.ndarray, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Per grid window [w·W, (w+1)·W): start at its first real token, end at that document's end or the grid edge."""
    B, T = doc_ids.shape
    n_win = T // W
    grid = doc_ids[:, : n_win * W].reshape(B, n_win, W) >= 0
    has = grid.any(2)
    first = grid.argmax(2) + np.arange(n_win)[None, :] * W
    grid_end = (np.arange(n_win)[None, :] + 1) * W
    end = np.minimum(np.take_along_axis(seg_hi, first, axis=1), grid_end)
    length = np.where(has, end - first, 0)
    return first.astype(np.int64), length.astype(np.int64)


def _examples_table(parts: list[dict[str, np.ndarray]]) -> pa.Table:
    """One Arrow table of examples."""
    col = {name: np.concatenate([p[name] for p in parts]) for name in parts[0] if name not in ("tokens", "acts")}
    token_lists, act_lists = zip(*(_window_lists(p["tokens"], p["acts"]) for p in parts))
    return pa.table(
        {
            "feature": pa.array(col["feature"], pa.int32()),
            "split": pa.DictionaryArray.from_arrays(col["split"], SPLITS).cast(pa.string()),
            "kind": pa.DictionaryArray.from_arrays(col["kind"], KINDS).cast(pa.string()),
            "rank": pa.array(col["rank"], pa.int32()),
            "quantile": pa.array(col["quantile"], pa.int32(), mask=col["quantile"] < 0),
            "context_id": pa.array(col["context_id"], pa.int64()),
            "doc_id": pa.array(col["doc_id"], pa.int64()),
            "doc_offset": pa.array(col["doc_offset"], pa.int64()),
            "peak": pa.array(col["peak"], pa.int32()),
            "max_activation": pa.array(col["max_activation"], pa.float64()),
            "token_ids": pa.chunked_array(token_lists),
            "activations": pa.chunked_array(act_lists),
        }
    )


def _window_lists(tokens: np.ndarray, acts: np.ndarray | None) -> tuple[pa.Array, pa.Array]:
    """Padded [n, W] windows → list arrays; real tokens form a prefix of each window."""
    real = tokens >= 0
    offsets = pa.array(np.concatenate([[0], np.cumsum(np.count_nonzero(real, axis=1))]).astype(np.int32))
    token_list = pa.ListArray.from_arrays(offsets, pa.array(tokens[real], pa.int32()))
    if acts is None:  # negatives: every activation is 0 by construction, so none are stored
        return token_list, pa.nulls(len(tokens), pa.list_(pa.float32()))
    return token_list, pa.ListArray.from_arrays(offsets, pa.array(acts[real], pa.float32()))


def auto_batch_size(context_length: int, n_features: int, device: torch.device) -> int:
    """Contexts per batch so the [B, T, F] activation tensor stays near 128 MiB (a quarter of free memory on a GPU)."""
    budget = 128 << 20
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free // 4
    return int(np.clip(budget // (context_length * n_features * 4), 1, 1024))


def fit_sae(model, sae) -> None:
    """Pair an SAE with the subject model: it must read vectors as wide as the hookpoint gives, and
    fields whose meaning depends on the model are applied here (idempotent: every load path calls it)."""
    if sae.metadata.get("transcode"):
        raise AutointerpError(
            f"{sae.metadata.get('source')} is a transcoder (transcode: true): it encodes the input of "
            f"'{sae.hook_name}' and predicts its output, while autointerp encodes and splices one hookpoint",
            "label an SAE of the same place (transcode false); transcoders are not supported yet",
        )
    if sae.d_in != model.width:
        raise AutointerpError(
            f"the SAE reads vectors of width {sae.d_in}, but hookpoint '{model.hook.name}' has width {model.width}",
            "choose the hookpoint the SAE was trained on (its config says "
            f"'{sae.hook_name or 'unknown'}'), or the SAE trained for this model and layer",
        )
    # TransformerLens' center_writing_weights makes every write to the residual stream mean-zero, so
    # its residual is the Hugging Face one minus its mean over d_model. It does so only for LayerNorm
    # models (RMSNorm ones are left alone) and it leaves attention's z untouched.
    if (
        sae.metadata.get("center_writing_weights")
        and model.uses_layer_norm
        and not model.reads_attention_z
        and sae.normalization != "center"
    ):
        if sae.normalization != "none":
            raise AutointerpError(
                f"the SAE both normalises its input ({sae.normalization}) and expects centred writing weights",
                "check its cfg.json: SAELens writes at most one of the two",
            )
        sae.normalization = "center"


def feature_shards(cfg: GatherConfig, n_features: int, device: torch.device, group=None) -> list[tuple[int, int]]:
    """[lo, hi) ranges of the dictionary whose banks fit the memory budget of each rank (cfg.memory_gib,
    else half the free memory, shared by the ranks of a node on CPUs), one corpus pass each: time grows
    with the passes, memory stays bounded. Ranks agree on the smallest budget; in a distributed
    gather a merging rank holds a second gatherer, received from its partner."""
    local = 1 if group is None or device.type == "cuda" else group.world.local_size
    budget = cfg.memory_gib * 2**30 if cfg.memory_gib is not None else 0.5 * free_memory(device) / local
    if group is not None:
        budget = group.min(budget)
    per_feature = cfg.bank_bytes(1) * (1 if group is None else 2)
    size = int(budget // per_feature)
    if size < 1:
        raise AutointerpError(
            f"the memory budget of {budget / 2**30:.2f} GiB holds the banks of no feature "
            f"({per_feature / 2**20:.2f} MiB each)",
            "raise --memory-gib, or pass a smaller --n-top, --per-bin, --n-negative or --window",
        )
    size = min(size, n_features)
    n_passes = -(-n_features // size)
    size = -(-n_features // n_passes)  # equal shards
    return [(lo, min(lo + size, n_features)) for lo in range(0, n_features, size)]


def run_gather(
    model,
    sae,
    batches: Callable[[], Iterable[ContextBatch]],
    cfg: GatherConfig,
    progress: bool = True,
    group=None,
    expected_tokens: int | None = None,
) -> GatherResult | None:
    """Stream batches through model → SAE → Gatherer. `model` is a SubjectModel, `sae` an SAE on the
    same device, `batches` makes a fresh stream of the corpus for each pass (one per feature shard).
    expected_tokens (the corpus's token cap, if any) gives the progress bar its total, hence an ETA.
    With a distributed.Group, this rank gathers its share of the contexts and the shares are merged
    into rank 0's result; the other ranks return None."""
    from tqdm.auto import tqdm

    from autointerp.gather.corpus import rank_share

    fit_sae(model, sae)
    shards = feature_shards(cfg, sae.d_sae, model.device, group)
    root = group is None or group.world.is_root
    start = time.perf_counter()
    results = []
    for k, (lo, hi) in enumerate(shards):

        def fresh(lo=lo, hi=hi):
            return Gatherer(hi - lo, cfg, model.device, model.is_causal, first_feature=lo)

        gatherer = fresh()
        label = "gather" if len(shards) == 1 else f"gather, features {lo:,}–{hi - 1:,} (pass {k + 1} of {len(shards)})"
        if group is not None:
            label += f", rank 0 of {group.world.size}"
        total = expected_tokens and -(-expected_tokens // (1 if group is None else group.world.size))
        bar = tqdm(total=total, desc=label, unit="tok", unit_scale=True, disable=not (progress and root))
        stream = batches() if group is None else rank_share(batches(), group.world.rank, group.world.size)
        with torch.inference_mode():
            for batch in stream:
                x = model.activations(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
                row, col, val = sae.encode_sparse(x)
                if len(shards) > 1:
                    mine = (col >= lo) & (col < hi)
                    row, col, val = row[mine], col[mine] - lo, val[mine]
                gatherer.update(batch, (row, col, val))
                bar.update(int(batch.valid.sum()))
        bar.close()
        if group is not None:
            gatherer = group.merge(gatherer, fresh)
        if gatherer is not None:
            results.append((gatherer.finish(), gatherer.n_tokens))
        del gatherer
    if not root:
        return None
    (_, _, contexts), n_tokens = results[0]
    return GatherResult(
        features=pd.concat([r[0][0] for r in results], ignore_index=True),
        examples=pa.concat_tables([r[0][1] for r in results]),
        contexts=contexts,
        n_tokens=n_tokens,
        n_contexts=len(contexts),
        seconds=time.perf_counter() - start,
        config=asdict(cfg) | {"feature_shards": len(shards)},
    )
