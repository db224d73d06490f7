"""One declared option: its name, type, default, range or choices and help.

Each stage lists its options once (core/schema/<stage>.py); the `segkd` commands, the
pipeline's config sections and the stage's dataclass take names, types and defaults from
there, so a default cannot differ between the command line, a config file and the library.
Plain data: the runtime's own stages (eval, bench, demo) import it on a Jetson without torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any


def cli_flag(name: str) -> str:
    """How the command line spells a library name: lr_scale -> --lr-scale."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Option:
    """One setting. `name` is the library's (dataclass field, config key); a command may
    spell it differently (OptionSet.renamed). A tuple default is a list option: the command
    line takes it comma-separated, a config file as a list."""

    name: str
    type: Any  # as a command line or config file gives it: "HxW" sizes are str
    default: Any
    help: str = ""
    min: float | None = None
    max: float | None = None
    flag: str | None = None  # the command line's spelling when not --name (e.g. --json)
    aliases: tuple[str, ...] = ()  # hidden older spellings (--name), still accepted
    finite: bool = False  # range checked by core.numbers.finite (nan, inf refused), not the parser
    cli: bool = True  # a command-line option of the stage's command
    config: bool = True  # a key of the stage's pipeline config section
    field: str = ""  # the library's name once a command renamed it; "": name

    @property
    def key(self) -> str:
        """The library's name (dataclass field, config key), whatever a command calls it."""
        return self.field or self.name

    @property
    def is_list(self) -> bool:
        return isinstance(self.default, tuple)

    def cli_default(self) -> Any:
        return ",".join(self.default) if self.is_list else self.default

    def config_default(self) -> Any:
        return list(self.default) if self.is_list else self.default


class OptionSet(Mapping[str, Option]):
    """A stage's options in declaration order, looked up by name."""

    def __init__(self, options: Iterable[Option]) -> None:
        self._options = {o.name: o for o in options}

    def __getitem__(self, name: str) -> Option:
        return self._options[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._options)

    def __len__(self) -> int:
        return len(self._options)

    def default(self, name: str) -> Any:
        return self._options[name].default

    def defaults(self) -> dict[str, Any]:
        """{name: default}: what a stage's dataclass takes its field defaults from."""
        return {o.name: o.default for o in self.values()}

    def only(self, *names: str) -> OptionSet:
        return OptionSet(self._options[n] for n in names)

    def on_cli(self) -> OptionSet:
        return OptionSet(o for o in self.values() if o.cli)

    def renamed(self, names: Mapping[str, str]) -> OptionSet:
        """The same options under a command's spellings ({library name: command name})."""
        return OptionSet(
            replace(o, name=names.get(o.name, o.name), field=o.key) for o in self.values()
        )

    def to_library(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A command's parsed values ({command name: value}) under the library's names."""
        return {o.key: values[o.name] for o in self.values()}

    def config_section(self) -> dict[str, Any]:
        """The pipeline config keys of this stage and their defaults."""
        return {o.name: o.config_default() for o in self.values() if o.config}
