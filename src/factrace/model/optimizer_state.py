"""Optimizer state: the second moment V (docs/design.md § "Optimizer correction"), read from
what training left behind.

Accepted files:
- a Hugging Face Trainer ``optimizer.pt`` (a torch ``state_dict`` whose param ids follow the
  Trainer's two groups: decayed parameters, then the others, each in ``named_parameters`` order);
- a plain torch ``AdamW``/``Adam`` ``state_dict`` whose ids follow ``model.parameters()``;
- the same from Adafactor (``exp_avg_sq_row/col`` as in transformers, ``row_var/col_var`` as in
  torch), factored state used directly;
- a safetensors file mapping parameter names (optionally suffixed ``.exp_avg_sq``) to ``exp_avg_sq``
  (and ``.exp_avg_sq_row``/``.exp_avg_sq_col`` to Adafactor's factored state), with Adam's
  ``step`` and ``beta2`` in its metadata when known: what :mod:`factrace.integrations` writes;
- a checkpoint directory holding one of these.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from factrace.errors import FactraceError


@dataclass
class ParamMoment:
    """Second-moment state of one parameter, in the parameter's own layout.

    Either ``exp_avg_sq`` (same shape as the parameter) or the factored ``row``/``col`` pair of
    Adafactor (means over the last and the second-to-last dimension). ``step`` and ``beta2`` allow
    Adam's bias correction ``V / (1 − β2^step)`` when known.
    """

    exp_avg_sq: torch.Tensor | None = None
    row: torch.Tensor | None = None
    col: torch.Tensor | None = None
    step: float | None = None
    beta2: float | None = None

    def bias_corrected(self) -> torch.Tensor:
        """``exp_avg_sq / (1 − β2^step)`` (unchanged when step or β2 is unknown)."""
        v = self.exp_avg_sq.float()
        if self.step and self.beta2 is not None and 0 < self.beta2 < 1:
            v = v / (1.0 - self.beta2 ** float(self.step))
        return v


@dataclass
class OptimizerState:
    """Second moments by parameter name, plus the hyper-parameters of the saved groups."""

    moments: dict[str, ParamMoment]
    source: str
    groups: list[dict] = field(default_factory=list)

    def __getitem__(self, param_name: str) -> ParamMoment:
        if param_name not in self.moments:
            raise FactraceError(
                f"{self.source}: no optimizer state for parameter {param_name!r}"
            )
        return self.moments[param_name]


def _trainer_order(model: nn.Module) -> list[str]:
    from transformers import Trainer

    decay = set(Trainer.get_decay_parameter_names(None, model))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [n for n, _ in named if n in decay] + [n for n, _ in named if n not in decay]


def _factored(row: torch.Tensor, col: torch.Tensor,
              torch_layout: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Adafactor's row/column means as ``[.., R]``/``[.., C]`` (the leading dimensions of a
    parameter of more than two, e.g. experts, kept): torch keeps them as ``[.., R, 1]``/
    ``[.., 1, C]``, transformers as ``[.., R]``/``[.., C]``."""
    if torch_layout:
        return row.squeeze(-1), col.squeeze(-2)
    return row, col


def _names_by_id(groups: list[dict], model: nn.Module, source: str) -> tuple[dict, str]:
    """Saved param id → parameter name, and the convention used to read the ids.

    Two groups with the second undecayed are the Hugging Face Trainer's layout; anything else is
    read in ``model.parameters()`` order.
    """
    if len(groups) == 2 and groups[1].get("weight_decay", None) == 0.0:
        order, convention = _trainer_order(model), "Hugging Face Trainer groups"
    else:
        order, convention = [n for n, _ in model.named_parameters()], "model.parameters() order"
    ids = [i for g in groups for i in g["params"]]
    if len(ids) != len(order):
        raise FactraceError(
            f"{source}: optimizer state has {len(ids)} parameters but the model has {len(order)} "
            f"(read in {convention}); is this the optimizer of this model?"
        )
    return dict(zip(ids, order, strict=True)), convention


def _param_shape(moment_state: dict) -> tuple[int, ...] | None:
    if "exp_avg_sq" in moment_state:
        return tuple(moment_state["exp_avg_sq"].shape)
    for r, c in (("exp_avg_sq_row", "exp_avg_sq_col"), ("row_var", "col_var")):
        if r in moment_state and c in moment_state:
            row, col = _factored(moment_state[r], moment_state[c], r == "row_var")
            return (*row.shape, col.shape[-1])
    if "exp_avg_sq" not in moment_state and "exp_avg" in moment_state:
        return tuple(moment_state["exp_avg"].shape)
    return None


def _to_moment(s: dict, beta2: float | None) -> ParamMoment:
    step = s.get("step")
    step = float(step.item() if isinstance(step, torch.Tensor) else step) if step is not None else None
    if "exp_avg_sq" in s:
        return ParamMoment(exp_avg_sq=s["exp_avg_sq"], step=step, beta2=beta2)
    for r, c in (("exp_avg_sq_row", "exp_avg_sq_col"), ("row_var", "col_var")):
        if r in s and c in s:
            row, col = _factored(s[r], s[c], r == "row_var")
            return ParamMoment(row=row, col=col, step=step, beta2=beta2)
    return ParamMoment(step=step, beta2=beta2)


def _from_state_dict(sd: dict, model: nn.Module, source: str) -> OptimizerState:
    groups = sd.get("param_groups", [])
    states = sd["state"]
    named = dict(model.named_parameters())
    by_id, convention = _names_by_id(groups, model, source)
    moments = {}
    for pid, name in by_id.items():
        if pid not in states:
            continue
        group = next(g for g in groups if pid in g["params"])
        shape = _param_shape(states[pid])
        want = tuple(named[name].shape)
        if shape is not None and shape != want:
            raise FactraceError(
                f"{source}: optimizer state does not fit the model: parameter {name!r} has shape "
                f"{want} in the model but {shape} in the optimizer state (read in {convention})"
            )
        betas = group.get("betas")
        beta2 = betas[1] if betas else group.get("beta2")
        moments[name] = _to_moment(states[pid], beta2)
    return OptimizerState(moments, source, [{k: v for k, v in g.items() if k != "params"}
                                            for g in groups])


#: The second moment a checkpoint marked for factrace keeps (:mod:`factrace.integrations`).
SECOND_MOMENT_FILE = "factrace_optimizer.safetensors"
_SUFFIXES = (".exp_avg_sq_row", ".exp_avg_sq_col", ".exp_avg_sq")


def _from_safetensors(path: Path, model: nn.Module) -> OptimizerState:
    """Parameter names (optionally suffixed ``.exp_avg_sq``, or ``.exp_avg_sq_row``/
    ``.exp_avg_sq_col`` for Adafactor's factored state) to second moments; the file's metadata
    may give Adam's ``step`` and ``beta2`` (for the bias correction)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    step = float(meta["step"]) if meta.get("step") not in (None, "", "None") else None
    beta2 = float(meta["beta2"]) if meta.get("beta2") not in (None, "", "None") else None
    named = dict(model.named_parameters())
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        suffix = next((x for x in _SUFFIXES if key.endswith(x)), "")
        name = key[: len(key) - len(suffix)]
        if name not in named:
            raise FactraceError(f"{path}: tensor {key!r} names no parameter of the model")
        parts.setdefault(name, {})[suffix or ".exp_avg_sq"] = value
    moments = {}
    for name, got in parts.items():
        want = tuple(named[name].shape)
        if ".exp_avg_sq" in got:
            shape, moment = tuple(got[".exp_avg_sq"].shape), ParamMoment(
                exp_avg_sq=got[".exp_avg_sq"], step=step, beta2=beta2)
        elif ".exp_avg_sq_row" in got and ".exp_avg_sq_col" in got:
            row, col = got[".exp_avg_sq_row"], got[".exp_avg_sq_col"]
            shape, moment = (*row.shape, col.shape[-1]), ParamMoment(row=row, col=col, step=step)
        else:
            raise FactraceError(f"{path}: parameter {name!r} has half of a factored state")
        if shape != want:
            raise FactraceError(
                f"{path}: optimizer state does not fit the model: parameter {name!r} has shape "
                f"{want} in the model but {shape} in the file"
            )
        moments[name] = moment
    return OptimizerState(moments, str(path), [{"beta2": beta2}] if beta2 is not None else [])


def optimizer_file(path: str | os.PathLike) -> Path:
    """``path``, or in a checkpoint directory its :data:`SECOND_MOMENT_FILE` (else the
    Trainer's ``optimizer.pt``)."""
    path = Path(path)
    if path.is_dir():
        for name in (SECOND_MOMENT_FILE, "optimizer.pt"):
            if (path / name).is_file():
                return path / name
        raise FactraceError(f"{path}: a checkpoint directory without {SECOND_MOMENT_FILE} or "
                            "optimizer.pt")
    return path


def load_optimizer_state(path: str | os.PathLike, model: nn.Module) -> OptimizerState:
    """Read an optimizer state file and map it onto ``model``'s parameter names. A directory
    is a checkpoint: its :data:`SECOND_MOMENT_FILE` (written by
    :class:`factrace.integrations.FactraceCallback`), else the Trainer's ``optimizer.pt``."""
    path = optimizer_file(path)
    if not path.is_file():
        raise FactraceError(f"{path}: optimizer state file not found")
    if path.suffix == ".safetensors":
        return _from_safetensors(path, model)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling problem is the user's file
        raise FactraceError(f"{path}: not a torch optimizer state_dict ({e})".splitlines()[0]) from e
    if not isinstance(sd, dict) or "state" not in sd or "param_groups" not in sd:
        raise FactraceError(f"{path}: expected a torch optimizer state_dict with 'state' and "
                            "'param_groups'")
    return _from_state_dict(sd, model, str(path))


def restore_adamw(model: nn.Module, path: str | os.PathLike) -> torch.optim.AdamW:
    """An ``AdamW`` over ``model`` with the saved groups' hyper-parameters and state loaded,
    ready to take the next step exactly where training stopped."""
    path = Path(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    groups = sd["param_groups"]
    named = dict(model.named_parameters())
    by_id, _ = _names_by_id(groups, model, str(path))
    param_groups = []
    for g in groups:
        hp = {k: v for k, v in g.items() if k != "params"}
        param_groups.append({**hp, "params": [named[by_id[i]] for i in g["params"]]})
    optimizer = torch.optim.AdamW(param_groups)
    optimizer.load_state_dict(sd)
    return optimizer
