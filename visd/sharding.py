"""FSDP2 sharding for ``visd train``: policy, EMA teacher and reference sharded the same way.

``train.sharding: fsdp`` (or ``auto`` under ``accelerate launch --config_file config/accelerate/fsdp.yaml``)
makes every process hold 1/N of each parameter, gradient and AdamW moment instead of a full copy (DDP).
The trainer applies ``torch.distributed.fsdp.fully_shard`` itself rather than through accelerate's FSDP
plugin, for three reasons: the EMA teacher must be sharded exactly like the policy so that the update
θ_T ← d·θ_T + (1−d)·θ runs on each process's local shards with no communication; the same code path runs
on CPU (gloo), where accelerate does not enable FSDP, so it is tested without a GPU; and the trainer's
checkpoints (resumable state, HF folders) need both models' state, not only the prepared one.

Layout: every ``Qwen2_5_VLDecoderLayer`` and ``Qwen2_5_VLVisionBlock`` is one FSDP unit (all-gathered for
its forward / backward, resharded after), the rest (embeddings, merger, norm, LM head) is the root unit.
``FSDP_TRANSFORMER_CLS_TO_WRAP`` / ``FSDP_RESHARD_AFTER_FORWARD`` (set by ``accelerate launch`` from
``fsdp_config``) override the classes and the reshard flag. Under bf16 the units compute in bf16 and
reduce gradients in float32 (``MixedPrecisionPolicy``); master weights stay float32.

Checkpoints: resumable state goes through ``torch.distributed.checkpoint`` (one file per process plus
metadata; model, optimizer and teacher as sharded tensors, reloadable at another world size); the HF
folders are written from the full state dict gathered onto process 0 (CPU), so ``policy/`` and
``teacher/`` are ordinary checkpoints whatever the sharding.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch

WRAP_CLASSES = ("Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock")
SHARDED_DIR = "sharded"  # torch.distributed.checkpoint folder inside a trainer-state step dir


def wanted(setting: str, world: int) -> bool:
    """Whether to shard: ``fsdp`` always with more than one process, ``auto`` when accelerate was launched
    with an FSDP config (``ACCELERATE_USE_FSDP``), ``none`` never. One process has nothing to shard."""
    if world < 2:
        return False
    if setting == "fsdp":
        return True
    return setting == "auto" and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def wrap_classes() -> tuple[str, ...]:
    env = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")
    return tuple(c.strip() for c in env.split(",") if c.strip()) or WRAP_CLASSES


def reshard_after_forward() -> bool:
    return os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() not in ("false", "0", "no")


def shard(model: torch.nn.Module, device: torch.device, bf16: bool = False) -> torch.nn.Module:
    """``fully_shard`` every wrap-class submodule, then the root, on a 1-D mesh over all processes.
    Deterministic in the module order, so two models of one architecture get identical shards."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    names = set(wrap_classes())
    model.to(device)
    units = [m for m in model.modules() if type(m).__name__ in names]
    if not units:
        raise SystemExit(f"visd train: train.sharding = fsdp, but the model has none of the layer classes {sorted(names)} "
                         "to shard (set FSDP_TRANSFORMER_CLS_TO_WRAP / fsdp_transformer_layer_cls_to_wrap)")
    for m in units:
        fully_shard(m, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward())
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward())
    return model


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The whole model's state dict on process 0 (CPU tensors), {} on the others. Collective."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def to_float(x) -> float:
    """A scalar that may be a DTensor (clip_grad_norm_ over sharded gradients)."""
    from torch.distributed.tensor import DTensor

    return float(x.full_tensor() if isinstance(x, DTensor) else x)


def _rng_path(step_dir: Path, rank: int) -> Path:
    return step_dir / f"random_states_{rank}.pkl"


def save_state(step_dir: Path, model, optimizer, teacher, rank: int) -> None:
    """Sharded model + optimizer (+ EMA teacher) into ``step_dir/sharded`` and this process's RNG states.
    Collective; ``step_dir`` must exist."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
    )

    msd, osd = get_state_dict(model, optimizer)
    state = {"model": msd, "optimizer": osd}
    if teacher is not None:
        state["teacher"] = get_model_state_dict(teacher)
    dcp.save(state, checkpoint_id=str(step_dir / SHARDED_DIR))
    with open(_rng_path(step_dir, rank), "wb") as f:
        pickle.dump({"random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                     "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}, f)


def load_state(step_dir: Path, model, optimizer, teacher, rank: int) -> None:
    """Inverse of :func:`save_state` (any world size for the tensors; the RNG file of this rank)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    msd, osd = get_state_dict(model, optimizer)
    state = {"model": msd, "optimizer": osd}
    if teacher is not None:
        state["teacher"] = get_model_state_dict(teacher)
    dcp.load(state, checkpoint_id=str(step_dir / SHARDED_DIR))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    if teacher is not None:
        set_model_state_dict(teacher, state["teacher"])
    path = _rng_path(step_dir, rank)
    if not path.exists():
        raise SystemExit(f"visd train: {path} is missing: the trainer state in {step_dir} was saved by fewer "
                         "processes; rerun with the same number of processes or delete the trainer_state folder")
    with open(path, "rb") as f:
        rng = pickle.load(f)  # our own file, written by save_state
    random.setstate(rng["random"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def load_optimizer(step_dir: Path, model, optimizer) -> None:
    """Only the AdamW state of a previous phase's final trainer state (the moments carry across phases)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    osd = get_optimizer_state_dict(model, optimizer)
    state = {"optimizer": osd}
    dcp.load(state, checkpoint_id=str(step_dir / SHARDED_DIR))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
