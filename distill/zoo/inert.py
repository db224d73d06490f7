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

from typing import Any

# Classes that hold logging/training bookkeeping, by the name their pickles carry.
# Only names seen in real files (tests/distill/zoo/fixtures/training_state_*.pt).
TRAINING_STATE_CLASSES = ("mmengine.logging.history_buffer.HistoryBuffer",)


class InertState:
    """Holds whatever data the pickle gave it, as attributes; defines no behaviour.

    No __setstate__ and no __reduce__: the weights-only unpickler then only calls
    object.__new__ and updates __dict__ (pickle's BUILD), or stores REDUCE arguments here.
    """

    upstream = ""  # the class name written in the file

    def __new__(cls, *args: Any, **kwargs: Any) -> InertState:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["args"] = args  # a REDUCE call's arguments, kept as data

    def __repr__(self) -> str:
        return f"<inert {self.upstream} {sorted(k for k in self.__dict__ if k != 'args')}>"


def _stand_in(name: str) -> type[InertState]:
    short = name.rsplit(".", 1)[-1]
    return type(f"Inert{short}", (InertState,), {"upstream": name, "__module__": __name__})


_STAND_INS = {name: _stand_in(name) for name in TRAINING_STATE_CLASSES}


def training_state_globals() -> list[tuple[type[InertState], str]]:
    """(stand-in class, name in the file) pairs for torch.serialization.safe_globals."""
    return [(cls, name) for name, cls in _STAND_INS.items()]
