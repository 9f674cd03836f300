"""Data parallelism under `torchrun`: one process per device, PyTorch's own stack throughout.

    torchrun --nproc_per_node N -m rlkd.cli train CONFIG          (docs/distributed.md)

What a data-parallel step does (rlkd.train calls into this module and nothing else does):

- every rank draws the same global batch of P prompts (the sampler's state is the same on every
  rank, so any rank's checkpoint resumes on any N) and takes its share: a contiguous slice of whole
  prompts, so a group of G responses never straddles ranks and group advantages stay local;
- each rank samples its share (`generate`), verifies it and scores it with its own judge replica;
- `gather` puts every rank's per-sample results together in rank order, so the monitor, the
  calibrator, the reward mix, the metrics and samples.jsonl see the whole step exactly as one
  process would;
- the update runs on the rank's own rows through DDP (`wrap`): gradients are averaged by DDP's
  all-reduce, the loss divisors are the global counts / N (`global_counts`), and every rank runs
  the same number of micro-batches (`pad_count`) so no collective waits for a rank that has none;
- weights and optimizer state stay identical on every rank, so rank 0 alone writes metrics,
  samples, plots and checkpoints (the single-process format), and the emergency checkpoint needs no
  collective: a rank whose peer died can still save (no rank hangs).

Backend by device: NCCL on CUDA (each rank on `cuda:LOCAL_RANK`, so "cuda" in the config is the
rank's own GPU), gloo on CPU. Without torchrun (no WORLD_SIZE, or 1) nothing is initialised and
every helper is the identity: a single-process run is exactly what it was.
"""

from __future__ import annotations

import datetime
import os
import signal
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from rlkd.data import share_of

__all__ = ["DistContext", "NullLog", "Terminated", "init", "rollout_seed"]

T = TypeVar("T")
# Rank 0 may run the SFT warm-up or the teacher's references alone while the others wait at a
# barrier: collectives get a long timeout (a dead peer is reported at once by gloo/NCCL anyway).
TIMEOUT = datetime.timedelta(hours=2)


class Terminated(KeyboardInterrupt):
    """SIGTERM from the launcher (torchrun stops every rank when one fails; a scheduler cancels
    the job): raised in the main thread like Ctrl-C, so that the run stops through its emergency
    checkpoint instead of dying mid-write, and rlkd-train exits 130 ("interrupted")."""


def rollout_seed(seed: int, step: int, index: int) -> int:
    """The torch seed of one prompt's group (or one rank's share): a function of the run's seed,
    the step and the index alone, never of the number of ranks."""
    return int(np.random.SeedSequence([seed, step, index]).generate_state(1, np.uint64)[0] % (2**63))


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: a single process, no process group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- set-up ---------------------------------------------------------------------------------

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the update runs through: DDP over the policy (gradient all-reduce in fp32
        over the fp32 master weights; autocast still computes in the config's dtype)."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    # -- collectives (each is the identity in a single process) ---------------------------------

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, value: T) -> list[T]:
        if not self.enabled:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def _reduce(self, values: Sequence[float], op) -> list[float]:
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._device())
        dist.all_reduce(t, op=op)
        return t.cpu().tolist()

    def sum(self, *values: float) -> list[float]:
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, *values: float) -> list[float]:
        return self._reduce(values, dist.ReduceOp.MAX)

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def gather(self, local: T) -> T:
        """Every rank's `local` joined in rank order: lists and numpy arrays are concatenated,
        dataclasses (rlkd.rollout.Rollouts, rlkd.judge.JudgeScores) field by field (ints summed),
        tuples element-wise; None stays None."""
        if not self.enabled:
            return local
        return _join(self.all_gather(local))

    def global_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """The loss divisors of one optimizer step (`rlkd.algorithms.update_policy`'s
        `count_reduce`): the count over all ranks / N, so that DDP's gradient average equals the
        gradient of the one-process loss over the whole batch."""
        if not self.enabled:
            return counts
        return torch.tensor(self.sum(*counts.tolist()), dtype=counts.dtype) / self.world_size

    def mean_stats(self, stats: dict[str, float], weight: float) -> dict[str, float]:
        """Update statistics over all ranks: per-step sums (loss terms) averaged, token-weighted
        means weighted by each rank's `weight` (its response tokens), maxima maxed; the rest
        (grad norm, lr, optimizer steps) are the same on every rank already."""
        if not self.enabled:
            return stats
        rows = self.all_gather((stats, float(weight)))
        total = sum(w for _, w in rows) or 1.0
        out = dict(stats)
        for key, value in stats.items():
            if not isinstance(value, (int, float)):
                continue
            vals = [float(s.get(key, float("nan"))) for s, _ in rows]
            if key.endswith("ratio_max"):
                out[key] = max(vals)
            elif key.endswith(("loss", "loss/total")):
                out[key] = float(np.mean(vals))
            elif key.endswith(("clip_frac", "approx_kl", "ratio_mean", "entropy", "/kl")):
                out[key] = float(sum(v * w for v, (_, w) in zip(vals, rows)) / total)
        return out

    # -- pieces of a step -----------------------------------------------------------------------

    def generate(self, rollout, prompts: list[list[int]], n: int, *, seed: int, step: int, first_index: int,
                 per_prompt: bool):
        """The rank's share of a step's rollouts. `per_prompt`: each prompt's group from its own seed
        (`rollout_seed(seed, step, global prompt index)`), so the samples are the same on any
        number of ranks (one generate call per prompt). Otherwise, with several ranks, the share
        from a seed of (seed, step, rank); in one process, from the global RNG as always. The
        global RNG state is left as it was in both seeded cases."""
        if not per_prompt and not self.enabled:
            return rollout.generate(prompts, n)
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        if not per_prompt:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(rollout_seed(seed, step, -1 - self.rank))
                return rollout.generate(prompts, n)
        parts = []
        for i, prompt in enumerate(prompts):
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(rollout_seed(seed, step, first_index + i))
                parts.append(rollout.generate([prompt], n))
        return _join(parts)

    @contextmanager
    def main_first(self):
        """Rank 0 runs the block first (filling a cache), the other ranks after it (reading it)."""
        if not self.enabled:
            yield
            return
        if self.is_main:
            yield
            dist.barrier()
        else:
            dist.barrier()
            yield

    @contextmanager
    def sheltered(self):
        """SIGTERM is ignored inside (the emergency checkpoint: torchrun's SIGTERM to the other
        ranks after one failed must not abort the save; torchrun's SIGKILL 30 s later still ends
        the process)."""
        if not self.enabled:
            yield
            return
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def decide(self, flag: bool) -> bool:
        """Rank 0's decision (e.g. the time budget's stop) for every rank: ranks that decided
        apart would wait for each other forever."""
        return bool(self.broadcast(bool(flag)))


def _join(parts: list[Any]) -> Any:
    first = parts[0]
    if first is None:
        return None
    if isinstance(first, np.ndarray):
        return np.concatenate(parts)
    if isinstance(first, list):
        return [x for p in parts for x in p]
    if isinstance(first, tuple):
        return tuple(_join([p[i] for p in parts]) for i in range(len(first)))
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return sum(parts)
    if is_dataclass(first):
        joined = {}
        for f in fields(first):
            values = [getattr(p, f.name) for p in parts]
            same = f.name == "n"  # Rollouts.n: samples per prompt, the same everywhere
            joined[f.name] = values[0] if same else _join(values)
        cls: Any = type(first)
        return cls(**joined)
    raise TypeError(f"cannot join {type(first).__name__} across ranks")


def init(device: str) -> DistContext:
    """Join the job torchrun started (WORLD_SIZE > 1 in the environment): NCCL for a CUDA device,
    gloo otherwise; on CUDA the rank's device is cuda:LOCAL_RANK. SIGTERM (torchrun stopping the
    job after a rank failed) becomes `Terminated`, so every rank leaves through its emergency
    checkpoint. Without torchrun: a single-process context, nothing initialised."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda"
    backend = "nccl" if cuda else "gloo"
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"rank {rank}: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=TIMEOUT, device_id=torch.device("cuda", local_rank) if cuda else None)
    signal.signal(signal.SIGTERM, _raise_terminated)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process
    raise Terminated("stopped by the launcher (SIGTERM): another rank failed or the job was cancelled")


class NullLog:
    """RunLog's interface, writing nothing (every rank but 0)."""

    def truncate_from(self, step: int) -> None:
        pass

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        pass

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        pass

    def close(self) -> None:
        pass
