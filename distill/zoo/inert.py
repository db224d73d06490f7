"""Inert stand-ins for the training state zoo checkpoints carry beside their weights.

mmengine-era checkpoints (mmseg 1.x) save `message_hub` = MessageHub.state_dict(), whose
`log_scalars` are mmengine.logging.history_buffer.HistoryBuffer objects (a class pickled
by name: NEWOBJ, then BUILD with its attribute dict). torch's weights-only unpickler refuses
any class it was not given, so such a file would never load although its weights are plain
tensors. Here each known training-state class name is mapped (torch.serialization's
`(object, "module.name")` alias) to a fresh subclass of InertState: object.__new__ plus a
dict update, never the upstream class, so nothing from the file runs. The weights do not
depend on this state; segkd only keeps it to show what the file held.
"""

from __future__ import annotations

import pickle
from typing import Any

# Classes that hold logging/training bookkeeping, by the name their pickles carry.
# Only names seen in real files (tests/distill/zoo/fixtures/training_state_*.pt).
TRAINING_STATE_CLASSES = ("mmengine.logging.history_buffer.HistoryBuffer",)


class InertState:
    """Holds whatever data the pickle gave it, as attributes; defines no behaviour.

    The weights-only unpickler only calls object.__new__ (NEWOBJ) or this __init__ (REDUCE,
    arguments kept as data) and __setstate__ (BUILD, plain attributes).
    """

    upstream = ""  # the class name written in the file

    def __new__(cls, *args: Any, **kwargs: Any) -> InertState:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["args"] = args  # a REDUCE call's arguments, kept as data

    def __setstate__(self, state: Any) -> None:
        """pickle's BUILD: the attribute dict as data; no dunder names (a stored
        `__setstate__` or `__class__` must not change what this object is)."""
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.upstream}: state of type {type(state)}")
        for key, value in state.items():
            if isinstance(key, str) and not key.startswith("__"):
                self.__dict__[key] = value

    def __repr__(self) -> str:
        return f"<inert {self.upstream} {sorted(k for k in self.__dict__ if k != 'args')}>"


def _stand_in(name: str) -> type[InertState]:
    short = name.rsplit(".", 1)[-1]
    return type(f"Inert{short}", (InertState,), {"upstream": name, "__module__": __name__})


_STAND_INS = {name: _stand_in(name) for name in TRAINING_STATE_CLASSES}


class InertAttribute:
    """What `getattr(stand-in, name)` gives: the name, nothing callable. HistoryBuffer's
    state holds its statistics methods (min, max, ...), pickled as getattr(class, name)."""

    def __init__(self, owner: type[InertState], name: str) -> None:
        self.owner, self.name = owner.upstream, name

    def __repr__(self) -> str:
        return f"<inert {self.owner}.{self.name}>"


def inert_getattr(obj: Any, name: Any) -> InertAttribute:
    """Stands in for builtins.getattr in these files: only on a stand-in class, and it looks
    nothing up (the real getattr would reach any attribute of any allowed object)."""
    if isinstance(obj, type) and issubclass(obj, InertState) and isinstance(name, str):
        return InertAttribute(obj, name)
    raise pickle.UnpicklingError(f"getattr({obj!r}, {name!r}) is not training state")


def training_state_globals() -> list[tuple[Any, str]]:
    """(stand-in, name in the file) pairs for torch.serialization.safe_globals."""
    pairs: list[tuple[Any, str]] = [(cls, name) for name, cls in _STAND_INS.items()]
    # protocol 2 writes builtins as __builtin__
    pairs += [(inert_getattr, "__builtin__.getattr"), (inert_getattr, "builtins.getattr")]
    return pairs
