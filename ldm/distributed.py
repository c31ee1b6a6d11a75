"""Sharding work over several processes and gathering the results, with no item lost or repeated.

Used by ``scripts/evaluate.py`` and ``scripts/generate.py``. A process learns its place from, in order:

* ``--shard i/n`` on the command line (plain multi-process use, SLURM job arrays, several machines);
* torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``);
* SLURM's (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``) under ``srun``;
* else it is the only process (rank 0 of 1).

**Split.** :func:`shard_range` gives rank ``r`` of ``n`` the contiguous block ``[N·r//n, N·(r+1)//n)`` of
``N`` work units (batches or condition pairs): the blocks tile ``0..N-1`` exactly, in order, and differ
in size by at most one.

**Gather through files.** No process group is needed: each rank writes its results atomically to
``OUT/shards/rank{r}.json`` (plus optional tensors in ``rank{r}.safetensors``), tagged with a *run
signature* (a hash of the settings that define the results) and the world size. After writing, a rank
calls :func:`try_gather`: when the shards of all ``n`` ranks with the same signature are present it checks
that their units tile ``0..N-1`` exactly once and returns them merged in unit order (else ``None``: another
rank will merge later). Whichever rank finishes last therefore writes the merged result; if two finish
together both write the same merged file (atomic renames), which is harmless. Shards of another run
(another signature or world size) are never mixed in. Across several machines ``OUT`` must be on a shared
file system (or copy the shard files together and re-run the merge, e.g. ``evaluate.py --merge-only``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from ldm.fileio import atomic_write_bytes
from ldm.errors import UserError

logger = logging.getLogger(__name__)

SHARD_DIR = "shards"
_SHARD_FLAG = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """This process's place: ``rank`` of ``world_size`` (``local_rank``: its index on this machine)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise UserError(f"shard {self.rank}/{self.world_size} is invalid; the rank must be in 0..world_size-1 (e.g. --shard 0/4)")

    @property
    def is_sharded(self) -> bool:
        return self.world_size > 1

    def __str__(self) -> str:
        return f"{self.rank}/{self.world_size}"


def parse_shard(text: str) -> Shard:
    """``"i/n"`` -> Shard(i, n). Raises UserError for anything else."""
    m = _SHARD_FLAG.match(text or "")
    if m is None:
        raise UserError(f"--shard {text!r}: expected RANK/WORLD_SIZE, e.g. --shard 0/4 (ranks 0 to 3)")
    return Shard(int(m.group(1)), int(m.group(2)))


def _env_int(env: Mapping[str, str], key: str) -> Optional[int]:
    value = env.get(key)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {key}={value!r} is not an integer; unset it or fix the launcher") from None


def shard_from_env(flag: Optional[str] = None, env: Optional[Mapping[str, str]] = None) -> Shard:
    """This process's shard: ``--shard`` (``flag``) first, then torchrun's, then SLURM's environment."""
    if flag:
        return parse_shard(flag)
    env = os.environ if env is None else env
    for rank_key, world_key, local_key in (("RANK", "WORLD_SIZE", "LOCAL_RANK"), ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")):
        world = _env_int(env, world_key)
        rank = _env_int(env, rank_key)
        if world is not None and rank is not None:
            return Shard(rank, world, _env_int(env, local_key) or 0)
    return Shard()


def device_for(shard: Shard, requested: str, num_gpus: Optional[int] = None) -> str:
    """``cuda`` -> ``cuda:<local_rank>`` when several processes share a machine; other devices unchanged.

    With more processes than GPUs (``num_gpus``, default ``torch.cuda.device_count()``) the ranks take the
    GPUs in turn (``local_rank % num_gpus``), so ``torchrun --nproc-per-node 2`` also runs on one GPU."""
    if requested == "cuda" and shard.is_sharded:
        if num_gpus is None:
            num_gpus = torch.cuda.device_count()
        if num_gpus < 1:
            raise UserError("--device cuda, but PyTorch sees no GPU; use --device cpu or check CUDA_VISIBLE_DEVICES")
        if shard.local_rank >= num_gpus:
            logger.info("local rank %d shares cuda:%d (%d GPUs for more processes)", shard.local_rank,
                        shard.local_rank % num_gpus, num_gpus)
        return f"cuda:{shard.local_rank % num_gpus}"
    return requested


def shard_range(num_units: int, shard: Shard) -> range:
    """The contiguous block of ``range(num_units)`` that ``shard`` owns (possibly empty)."""
    if num_units < 0:
        raise ValueError(f"num_units must be >= 0, got {num_units}")
    start = num_units * shard.rank // shard.world_size
    stop = num_units * (shard.rank + 1) // shard.world_size
    return range(start, stop)


def run_signature(settings: Mapping[str, Any]) -> str:
    """A short hash of the settings that define a run's results (JSON-serialisable values)."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def shard_path(out: str | os.PathLike, rank: int, suffix: str = ".json") -> Path:
    return Path(out) / SHARD_DIR / f"rank{rank}{suffix}"


# --------------------------------------------------------------------------------------------------
# Writing and gathering


def write_shard(
    out: str | os.PathLike,
    shard: Shard,
    signature: str,
    num_units: int,
    units: Sequence[int],
    records: Sequence[Mapping[str, Any]],
    tensors: Optional[Mapping[str, torch.Tensor]] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write this rank's results: ``records`` (JSON objects, each with a ``"unit"`` key naming its work unit)
    for the ``units`` it owns, optional ``tensors`` (rows in record order) and ``extra`` metadata.

    The tensors are written first and the JSON last, so a present JSON means a complete shard."""
    bad = sorted({r["unit"] for r in records} - set(units))
    if bad:
        raise ValueError(f"records of units {bad[:5]} that rank {shard.rank} does not own")
    if tensors:
        from safetensors.torch import save

        blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={"signature": signature})
        atomic_write_bytes(shard_path(out, shard.rank, ".safetensors"), blob)
    doc = {
        "signature": signature,
        "rank": shard.rank,
        "world_size": shard.world_size,
        "num_units": num_units,
        "units": list(units),
        "records": list(records),
        "has_tensors": bool(tensors),
        "extra": dict(extra or {}),
    }
    path = shard_path(out, shard.rank)
    atomic_write_bytes(path, json.dumps(doc).encode())
    return path


@dataclass
class Gathered:
    """All ranks' results merged in unit order."""

    records: list[dict]  # sorted by (unit, position within the unit)
    tensors: dict[str, torch.Tensor]  # each rank's rows concatenated in rank (= unit) order
    extras: list[dict]  # per rank


def _read_shard(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def try_gather(out: str | os.PathLike, signature: str, world_size: int, num_units: int) -> Optional[Gathered]:
    """Merge the shards of this run if all ``world_size`` are present, else ``None``.

    Raises UserError if the present shards overlap or leave units out (a bug or mixed runs)."""
    docs = []
    for rank in range(world_size):
        doc = _read_shard(shard_path(out, rank))
        if doc is None or doc.get("signature") != signature or doc.get("world_size") != world_size:
            return None
        docs.append(doc)
    seen: dict[int, int] = {}
    for doc in docs:
        for unit in doc["units"]:
            if unit in seen:
                raise UserError(f"{out}/{SHARD_DIR}: unit {unit} is claimed by ranks {seen[unit]} and {doc['rank']}; delete the folder and run again")
            seen[unit] = doc["rank"]
    if sorted(seen) != list(range(num_units)):
        missing = sorted(set(range(num_units)) - set(seen))
        raise UserError(f"{out}/{SHARD_DIR}: units {missing[:10]} are in no shard; delete the folder and run again")
    records: list[dict] = []
    for doc in docs:
        records += doc["records"]
    order = sorted(range(len(records)), key=lambda i: (records[i]["unit"], i))
    records = [records[i] for i in order]
    tensors: dict[str, list[torch.Tensor]] = {}
    for doc in docs:
        if doc.get("has_tensors"):
            from safetensors.torch import load_file

            for key, value in load_file(str(shard_path(out, doc["rank"], ".safetensors"))).items():
                tensors.setdefault(key, []).append(value)
    return Gathered(records=records, tensors={k: torch.cat(v) for k, v in tensors.items()}, extras=[d["extra"] for d in docs])
