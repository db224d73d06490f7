"""One declaration per option (core/schema): the dataclasses, the `segkd` commands and the
pipeline's config sections all take their defaults from it."""

from __future__ import annotations

import dataclasses

import pytest
import typer

from cli import app
from core.options import Option, OptionSet
from core.schema.bench import BENCH
from core.schema.demo import DEMO
from core.schema.distill import DISTILL
from core.schema.evaluate import EVAL
from core.schema.export import EXPORT, EXPORT_CLI_NAMES
from core.schema.qat import QAT
from core.schema.tensorrt import BUILD_TRT, EXPORT_TRT, TENSORRT, TrtOptions
from core.schema.tolerances import TOLERANCE_NAMES, TOLERANCES, Tolerances
from core.schema.train import TRAIN
from distill.training.config import TrainConfig
from pipeline.config import DEFAULTS

COMMAND = typer.main.get_command(app)


@pytest.mark.parametrize(
    ("cls", "options"),
    [(TrainConfig, TRAIN), (TrtOptions, TENSORRT), (Tolerances, TOLERANCES)],
)
def test_each_dataclass_field_is_a_declared_option_with_its_default(cls, options) -> None:
    fields = {f.name: f.default for f in dataclasses.fields(cls) if f.name != "extra"}
    assert set(fields) == set(options)
    assert fields == options.defaults()


def test_distill_config_takes_the_declared_defaults() -> None:
    from distill.distillation import DistillConfig

    fields = {f.name: f.default for f in dataclasses.fields(DistillConfig)}
    fields.pop("ignore_index")  # follows the dataset, not an option
    assert fields == DISTILL.defaults()


def test_qat_options_take_the_declared_defaults() -> None:
    from distill.qat.train import QatOptions

    fields = {f.name: f.default for f in dataclasses.fields(QatOptions)}
    assert fields == {name: QAT.default(name) for name in fields}


def _params(command: str) -> dict[str, object]:
    return {p.name: p for p in COMMAND.commands[command].params}  # type: ignore[attr-defined]


# Each command's declared options, under the command's own spellings.
COMMANDS = {
    "export": (EXPORT.renamed(EXPORT_CLI_NAMES), TOLERANCES.on_cli().renamed(TOLERANCE_NAMES),
               EXPORT_TRT),
    "build": (BUILD_TRT,),
    "eval": (EVAL,),
    "bench": (BENCH,),
    "demo": (DEMO,),
    "qat": (QAT,),
    "train": (TRAIN.on_cli(),),
}  # fmt: skip


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_command_options_are_the_declared_ones(command: str) -> None:
    params = _params(command)
    for options in COMMANDS[command]:
        for o in options.values():
            p = params[o.name]
            assert p.default == o.cli_default(), (command, o.name)
            assert p.help == o.help, (command, o.name)
            if o.flag:
                assert p.opts == [o.flag]
            for alias in o.aliases:
                assert params[alias].hidden and params[alias].default is None


def test_list_options_are_comma_separated_on_the_command_line_and_lists_in_a_config() -> None:
    precisions = EXPORT["precisions"]
    assert precisions.cli_default() == "fp32,fp16,int8"
    assert DEFAULTS["export"]["precisions"] == ["fp32", "fp16", "int8"]
    assert _params("export")["precision"].default == "fp32,fp16,int8"


# The pipeline's synthetic profile: the values it sets on purpose (pipeline/config.py says
# why); every other key of a stage's section is that stage's declared default.
PROFILE = {
    "teacher": {"model", "iters", "batch_size", "crop_size", "lr", "val_images"},
    "student": {"model", "iters", "batch_size", "crop_size", "lr", "val_images",
                "eval_interval"},
    "qat": {"steps"},
    "eval": {"max_images"},
    "bench": {"iters", "warmup"},
}  # fmt: skip
SECTIONS = {
    "teacher": TRAIN,
    "student": TRAIN,
    "distill": DISTILL,
    "export": OptionSet([*EXPORT.values(),
                         *TOLERANCES.only(*TOLERANCE_NAMES).renamed(TOLERANCE_NAMES).values()]),
    "qat": QAT,
    "eval": EVAL,
    "bench": BENCH,
}  # fmt: skip


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_pipeline_sections_take_the_declared_defaults(section: str) -> None:
    options = SECTIONS[section]
    own = {"checkpoint", "readout_iters"} if section == "teacher" else set()
    values = DEFAULTS[section]
    assert set(values) - own == {o.name for o in options.values() if o.config}
    for name in set(values) - own - PROFILE.get(section, set()):
        assert values[name] == options[name].config_default(), (section, name)


def test_calibration_and_verification_have_one_default() -> None:
    # The command line had 32/16 and the pipeline 16/8; both now take the export's.
    assert DEFAULTS["export"]["calib_images"] == _params("export")["calib_images"].default == 32
    assert DEFAULTS["export"]["verify_images"] == _params("export")["verify_images"].default == 16


def test_renamed_options_map_back_to_the_library_names() -> None:
    values = {o.name: o.default for o in BUILD_TRT.values()} | {"cache": False, "opt_level": 5}
    opts = TrtOptions(**BUILD_TRT.to_library(values))
    assert (opts.use_cache, opts.optimization_level) == (False, 5)
    gate = Option("a", float, 0.5, aliases=("b",))
    assert gate.cli_default() == 0.5 and not gate.is_list
