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
- the update runs on the rank's own rows through `wrap` (`train.data_parallel`): DDP by default
  (`Replicated`; PPO's value head in the same DDP module), or FSDP2 `fully_shard` (`Sharded`);
  gradients are averaged over ranks, the loss divisors are the global counts / N
  (`global_counts`), PPO whitens its advantages over every rank's tokens (`sum_tensor`), and every
  rank runs the same number of micro-batches (the trainer pads) so no collective waits for a rank
  that has none;
- DDP: weights and optimizer state stay identical on every rank, so rank 0 alone writes metrics,
  samples, plots and checkpoints (the single-process format), and the emergency checkpoint needs
  no collective: a rank whose peer died can still save (no rank hangs). FSDP2: checkpoints gather
  the full state to rank 0 (the same single-process format); there is no emergency checkpoint
  (the gather would hang on a dead peer), the last periodic one stands.

Backend by device: NCCL on CUDA (each rank on `cuda:LOCAL_RANK`, so "cuda" in the config is the
rank's own GPU), gloo on CPU. Without torchrun (no WORLD_SIZE, or 1) nothing is initialised and
every helper is the identity: a single-process run is exactly what it was.
"""

from __future__ import annotations

import copy
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

__all__ = ["DistContext", "NullLog", "Terminated", "init", "rank_seed", "rollout_seed"]

T = TypeVar("T")
# Rank 0 may run the SFT warm-up or the teacher's references alone while the others wait at a
# barrier: collectives get a long timeout (a dead peer is reported at once by gloo/NCCL anyway).
TIMEOUT = datetime.timedelta(hours=2)


class Terminated(KeyboardInterrupt):
    """SIGTERM from the launcher (torchrun stops every rank when one fails; a scheduler cancels
    the job): raised in the main thread like Ctrl-C, so that the run stops through its emergency
    checkpoint instead of dying mid-write, and rlkd-train exits 130 ("interrupted")."""


def rollout_seed(seed: int, step: int, index: int) -> int:
    """The torch seed of one prompt's group: a function of the run's seed, the step and the
    prompt's global index alone, never of the number of ranks."""
    return int(np.random.SeedSequence([seed, step, index]).generate_state(1, np.uint64)[0] % (2**63))


def rank_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one rank's whole share (`rollout.seed_per_prompt = false`): its own
    stream (spawn key 1), so it never equals a prompt's `rollout_seed`."""
    entropy = np.random.SeedSequence([seed, step, rank], spawn_key=(1,))
    return int(entropy.generate_state(1, np.uint64)[0] % (2**63))


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

    def wrap(self, policy: torch.nn.Module, value_head: torch.nn.Module | None = None, *, mode: str = "ddp",
             param_dtype: torch.dtype = torch.float32) -> Replicated | Sharded:
        """The policy (and PPO's value head) made data-parallel, `mode` = `train.data_parallel`:
        `ddp` -> `Replicated` (DDP), `fsdp2` -> `Sharded` (fully_shard, in place: build the
        optimizer after this). In one process: `Replicated` around the plain modules."""
        if not self.enabled:
            return Replicated(policy, policy, value_head)
        if mode == "fsdp2":
            return Sharded(policy, value_head, param_dtype)
        from torch.nn.parallel import DistributedDataParallel

        device = next(policy.parameters()).device
        ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
        # PPO's value head joins the same DDP module: DDP's hooks sit on every parameter of the
        # module, so the head's gradients are averaged with the policy's although the update calls
        # the head outside the wrapper's forward (on the policy's hidden states).
        module = policy if value_head is None else PolicyAndValueHead(policy, value_head)
        return Replicated(DistributedDataParallel(module, device_ids=ids), policy, value_head)

    def sum_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over ranks (in float64, returned in t's dtype); `t` itself in one process.
        PPO's advantage whitening takes its mean and std over every rank's tokens through it
        (`rlkd.algorithms.masked_whiten`'s `reduce`)."""
        if not self.enabled:
            return t
        total = t.detach().to(device=self._device(), dtype=torch.float64)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.to(device=t.device, dtype=t.dtype)

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
            elif key.endswith(("clip_frac", "approx_kl", "ratio_mean", "entropy", "/kl", "returns_mean", "reward_kl")):
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
                torch.manual_seed(rank_seed(seed, step, self.rank))
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


@dataclass
class FullState:
    """What `rlkd.checkpoint.save_checkpoint` writes: a policy, an optimizer (anything with the
    single-process `state_dict()`) and PPO's value head, each holding the full state."""

    policy: torch.nn.Module
    optimizer: Any
    value_head: torch.nn.Module | None


class Replicated:
    """DDP (or one process): every rank holds the whole policy and optimizer state, so rank 0's
    own objects are the full state and nothing needs gathering."""

    sharded = False

    def __init__(self, module: torch.nn.Module, policy: torch.nn.Module, value_head: torch.nn.Module | None) -> None:
        self.module = module  # what the update runs through
        self.policy, self.value_head = policy, value_head

    @contextmanager
    def full_policy(self):
        """The policy with its full weights, for the rollout sync (every rank)."""
        yield self.policy

    @contextmanager
    def full_state(self, optimizer):
        """The `FullState` to checkpoint on rank 0; None on the other ranks."""
        yield FullState(self.policy, optimizer, self.value_head) if _rank() == 0 else None

    def loadable(self, optimizer):
        """What `rlkd.checkpoint.load_training_state` loads the single-process optimizer state into."""
        return optimizer


class Sharded:
    """FSDP2: every decoder layer (the model's `_no_split_modules` classes), then the whole policy,
    sharded over the ranks with `fully_shard` (in place; parameters become DTensors) under a
    `MixedPrecisionPolicy(param_dtype = the compute dtype, reduce_dtype = float32)`; PPO's value
    head is its own fp32 unit. Checkpoints and the rollout sync gather the full state with
    `torch.distributed.checkpoint.state_dict` into a copy of the module tree whose parameters live
    on the meta device between uses (`_mirror`), so `save_checkpoint`, `hf_state_items` and the
    peft merge see a plain model and the checkpoint is the single-process one. Every method is a
    collective: every rank calls it, in the same order."""

    sharded = True

    def __init__(self, policy: torch.nn.Module, value_head: torch.nn.Module | None, param_dtype: torch.dtype) -> None:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        self.root = policy if value_head is None else PolicyAndValueHead(policy, value_head)
        self._mirror = _meta_copy(self.root)  # before sharding: the plain module tree
        base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy  # peft: the HF model inside
        layer_types = set(getattr(base, "_no_split_modules", None) or ())
        layers = [m for m in policy.modules() if type(m).__name__ in layer_types]
        if not layers:
            raise RuntimeError(f"train.data_parallel = fsdp2: {type(base).__name__} names no decoder layer classes "
                               "(_no_split_modules) to shard")
        unit = type(layers[0]).__name__  # before fully_shard renames the class (FSDP<name>)
        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        for layer in layers:
            fully_shard(layer, mp_policy=mp)
        fully_shard(policy, mp_policy=mp)
        if value_head is not None:  # called on the policy's hidden states, outside its forward: its own unit
            fully_shard(value_head, mp_policy=MixedPrecisionPolicy(reduce_dtype=torch.float32))
        self.module = policy
        self.summary = (f"the policy sharded over {dist.get_world_size()} ranks ({len(layers)} "
                        f"{unit} units + the root, compute in {param_dtype}, gradients reduced in "
                        f"float32){' and the value head' if value_head is not None else ''}")

    def _parts(self, mirror: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module | None]:
        return (mirror.policy, mirror.value_head) if isinstance(mirror, PolicyAndValueHead) else (mirror, None)

    @contextmanager
    def _filled(self, state: dict[str, torch.Tensor]):
        self._mirror.load_state_dict(state, strict=True, assign=True)
        policy, _ = self._parts(self._mirror)
        if hasattr(policy, "tie_weights"):  # assign=True loads tied weights as two tensors
            policy.tie_weights()
        try:
            yield self._mirror
        finally:
            for module in self._mirror.modules():  # drop the gathered tensors (buffers are small: kept)
                for name, p in module._parameters.items():
                    if p is not None:
                        module._parameters[name] = torch.nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad)

    @contextmanager
    def full_policy(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(self.root, options=StateDictOptions(full_state_dict=True))  # on every rank
        with self._filled(state) as mirror:
            yield self._parts(mirror)[0]

    @contextmanager
    def full_state(self, optimizer):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # on rank 0 only, in CPU memory
        model_state = get_model_state_dict(self.root, options=options)
        optim_state = get_optimizer_state_dict(self.root, optimizer, options=options)
        if _rank() != 0:
            yield None
            return
        with self._filled(model_state) as mirror:
            policy, value_head = self._parts(mirror)
            yield FullState(policy, _SavedState(_by_index(optim_state, optimizer, self.root)), value_head)

    def loadable(self, optimizer):
        return _ShardedOptimizerLoader(self.root, optimizer)


class _SavedState:
    def __init__(self, state: dict[str, Any]) -> None:
        self._state = state

    def state_dict(self) -> dict[str, Any]:
        return self._state


class _ShardedOptimizerLoader:
    """`load_state_dict(single-process optimizer state)` for a sharded optimizer: keyed by
    parameter name and scattered to the shards by `set_optimizer_state_dict`."""

    def __init__(self, root: torch.nn.Module, optimizer) -> None:
        self.root, self.optimizer = root, optimizer

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = _param_names(self.root)
        fqns = [names[id(p)][0] for g in self.optimizer.param_groups for p in g["params"]]
        by_name = {"state": {fqns[int(i)]: v for i, v in state["state"].items()},
                   "param_groups": [{**g, "params": [fqns[int(i)] for i in g["params"]]} for g in state["param_groups"]]}
        set_optimizer_state_dict(self.root, self.optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def _param_names(root: torch.nn.Module) -> dict[int, list[str]]:
    """id(parameter) -> its names (a tied parameter has several)."""
    names: dict[int, list[str]] = {}
    for name, p in root.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return names


def _by_index(state: dict[str, Any], optimizer, root: torch.nn.Module) -> dict[str, Any]:
    """A name-keyed optimizer state (`get_optimizer_state_dict`) in `optimizer.state_dict()`'s own
    form: parameters numbered in param-group order, as one process saves it."""
    names = _param_names(root)
    out: dict[str, Any] = {"state": {}, "param_groups": []}
    index = 0
    for group, saved in zip(optimizer.param_groups, state["param_groups"]):
        numbers = []
        for p in group["params"]:
            name = next((n for n in names[id(p)] if n in state["state"]), None)
            if name is not None:
                out["state"][index] = state["state"][name]
            numbers.append(index)
            index += 1
        out["param_groups"].append({**saved, "params": numbers})
    return out


def _meta_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of `module` whose parameters are on the meta device (no memory; ties kept);
    buffers are copied."""
    memo: dict[int, Any] = {id(p): torch.nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad)
                            for p in module.parameters()}
    return copy.deepcopy(module, memo)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class PolicyAndValueHead(torch.nn.Module):
    """PPO's two trainable modules as one, for DDP: the forward is the policy's; the value head
    is a submodule only so that DDP all-reduces its gradients too."""

    def __init__(self, policy: torch.nn.Module, value_head: torch.nn.Module) -> None:
        super().__init__()
        self.policy = policy
        self.value_head = value_head

    def forward(self, *args, **kwargs):
        return self.policy(*args, **kwargs)


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
