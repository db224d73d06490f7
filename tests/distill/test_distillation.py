"""DistillObjective with tiny stand-in networks that follow the Segmentor interface."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.errors import SegkdError
from distill.distillation import DistillConfig, DistillObjective, position_information
from distill.losses import PositionReadout

K = 4


class TinySegmentor(nn.Module):
    """Segmentor interface in miniature: extract(x, with_aux) -> logits/aux/feat at 1/8."""

    def __init__(self, feat_channels: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.feat_channels = feat_channels
        self.pool = nn.AvgPool2d(8)
        self.body = nn.Conv2d(3, feat_channels, 3, padding=1)
        self.classifier = nn.Conv2d(feat_channels, K, 1)
        self.aux_head = nn.Conv2d(3, K, 1)
        self.calls = 0
        self.aux_calls = 0

    def extract(self, x: torch.Tensor, with_aux: bool = True) -> dict[str, torch.Tensor]:
        self.calls += 1
        small = self.pool(x)
        feat = torch.relu(self.body(small))
        out = {"logits": self.classifier(feat), "feat": feat}
        if with_aux:
            self.aux_calls += 1
            out["aux"] = self.aux_head(small)
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.extract(x)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, 32, 32, generator=g)
    labels = torch.randint(0, K, (2, 32, 32), generator=g)
    labels[:, :, :4] = 255
    return images, labels


def make(losses=("kd", "idd", "pid", "cwd"), **cfg) -> tuple[DistillObjective, TinySegmentor]:
    teacher = TinySegmentor(8, seed=1)
    student = TinySegmentor(4, seed=2)
    readout = PositionReadout(8, 2, hidden=4)
    cfg.setdefault("idd_scale", "adapter")  # these tests exercise the shared IDD/PID adapter
    config = DistillConfig(losses=losses, **cfg)
    return DistillObjective(teacher, 4, K, config, readout), student


def test_all_terms_are_reported_and_summed_with_their_weights() -> None:
    objective, student = make()
    images, labels = batch()
    out = objective(images, labels, student(images))
    assert set(out) == {"loss", "ce", "aux", "kd", "idd", "pid", "cwd"}
    c = objective.config
    want = out["ce"] + c.aux_weight * out["aux"]
    want = want + c.w_kd * out["kd"] + c.w_idd * out["idd"] + c.w_pid * out["pid"]
    want = want + c.w_cwd * out["cwd"]
    torch.testing.assert_close(out["loss"], want)
    assert all(torch.isfinite(v) and v.dim() == 0 for v in out.values())


def test_weight_zero_and_unlisted_terms_are_not_computed() -> None:
    objective, student = make(losses=("kd", "idd", "cwd"), w_cwd=0.0)
    assert objective.cwd is None and objective.pid is None
    assert objective.active_terms == ("kd", "idd")
    images, labels = batch()
    out = objective(images, labels, student(images))
    assert set(out) == {"loss", "ce", "aux", "kd", "idd"}
    # One teacher pass per step, never through its aux head.
    assert objective.teacher.calls == 1 and objective.teacher.aux_calls == 0


def test_no_teacher_pass_without_a_distillation_term() -> None:
    objective, student = make(losses=(), aux_weight=0.0)
    images, labels = batch()
    out = objective(images, labels, student(images))
    assert set(out) == {"loss", "ce"} and objective.teacher.calls == 0
    assert list(objective.parameters()) == []


def test_teacher_and_readout_stay_out_of_parameters_and_state_dict() -> None:
    objective, _ = make()
    teacher, readout = objective.teacher, objective.position_readout
    own = {id(p) for p in objective.parameters()}
    assert not own & {id(p) for p in teacher.parameters()}
    assert not own & {id(p) for p in readout.parameters()}
    keys = list(objective.state_dict())
    assert keys and all(k.startswith(("idd.adapter.", "pid.adapter.")) for k in keys)
    adapter = {id(p) for p in objective.idd.adapter.parameters()}
    assert adapter and adapter == own  # exactly the shared IDD/PID adapter trains
    assert objective.pid.adapter is objective.idd.adapter
    objective.train()
    assert not teacher.training and not readout.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_state_dict_round_trip_for_resume() -> None:
    objective, _ = make()
    with torch.no_grad():
        for p in objective.parameters():
            p.add_(0.5)
    again, _ = make()
    again.load_state_dict(objective.state_dict())
    for a, b in zip(again.parameters(), objective.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_to_moves_the_unregistered_teacher_and_readout() -> None:
    objective, _ = make()
    objective.to(torch.float64)
    assert objective.teacher.body.weight.dtype == torch.float64
    assert objective.position_readout.body[0].weight.dtype == torch.float64
    assert objective.idd.adapter[0].weight.dtype == torch.float64


def test_one_step_lowers_the_loss_and_never_touches_the_teacher() -> None:
    objective, student = make()
    images, labels = batch()
    params = list(student.parameters()) + [p for p in objective.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3)
    terms = objective.active_terms

    def distill_part(out):
        return sum(objective.config.weight(t) * out[t] for t in terms)

    before = objective(images, labels, student(images))
    opt.zero_grad()
    before["loss"].backward()
    assert all(p.grad is None for p in objective.teacher.parameters())
    assert all(p.grad is None for p in objective.position_readout.parameters())
    assert all(p.grad is not None for p in objective.idd.adapter.parameters())
    opt.step()
    after = objective(images, labels, student(images))
    assert after["loss"].item() < before["loss"].item()
    assert distill_part(after).item() < distill_part(before).item()


def test_student_readout_mode_trains_its_own_readout() -> None:
    objective, student = make(losses=("pid",), pid_mode="student_readout")
    assert objective.pid.student_readout is not None and objective.pid.adapter is None
    trainable = {id(p) for p in objective.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in objective.pid.student_readout.parameters()}
    images, labels = batch()
    out = objective(images, labels, student(images))
    out["loss"].backward()
    assert all(p.grad is not None for p in objective.pid.student_readout.parameters())


def test_pid_without_idd_owns_its_adapter() -> None:
    objective, _ = make(losses=("pid",))
    assert objective.idd is None and objective.pid.adapter is not None
    assert {id(p) for p in objective.parameters()} == {
        id(p) for p in objective.pid.adapter.parameters()
    }


def test_runs_under_autocast() -> None:
    objective, student = make()
    images, labels = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = objective(images, labels, student(images))
    assert out["idd"].dtype == torch.float32 and torch.isfinite(out["loss"])


def test_position_information_reports_teacher_and_student() -> None:
    objective, student = make()
    images, _ = batch()
    s_feat = student(images)["feat"]
    objective.train()
    running = objective.idd.adapter[1].running_mean.clone()
    report = objective.position_information(images, s_feat)
    assert {"teacher_mse", "teacher_corr", "student_mse", "student_corr"} <= set(report)
    assert objective.training  # restored
    torch.testing.assert_close(objective.idd.adapter[1].running_mean, running)  # untouched
    direct = position_information(objective.position_readout, s_feat, objective.idd.adapter)
    assert direct["mse"] == pytest.approx(report["student_mse"])


def test_bad_configuration_is_one_clear_error() -> None:
    with pytest.raises(SegkdError, match="valid names are kd, idd, pid, cwd"):
        DistillConfig(losses=("kd", "fitnet"))
    with pytest.raises(SegkdError, match="w_idd"):
        DistillConfig(w_idd=-1)
    with pytest.raises(SegkdError, match="unknown key"):
        DistillConfig.from_dict({"w_kd": 1.0, "wkd": 2.0})
    teacher = TinySegmentor(8, seed=1)
    with pytest.raises(SegkdError, match="position readout"):
        DistillObjective(teacher, 4, K, DistillConfig(losses=("pid",)), None)


def test_config_parses_strings_and_round_trips() -> None:
    config = DistillConfig(losses="KD, idd,kd", w_idd=2.5, idd_scale="both")
    assert config.losses == ("kd", "idd")
    assert DistillConfig.from_dict(config.to_dict()) == config
    assert config.active("kd") and not config.active("pid")
    assert not DistillConfig(losses=("kd",), w_kd=0).active("kd")


def test_cli_distill_options_take_the_library_defaults() -> None:
    # Every DistillConfig setting is a `segkd distill` option whose default is None, i.e.
    # the dataclass's own default; the help shows that default (core/schema/distill.py).
    import dataclasses
    import inspect
    import typing

    import cli

    params = inspect.signature(cli.distill).parameters
    defaults = DistillConfig()
    not_options = {"aux_weight", "ignore_index"}  # fixed by the method (METHOD.md)
    for f in dataclasses.fields(DistillConfig):
        if f.name not in not_options:
            assert f.name in params and params[f.name].default is None, f.name
    for f in dataclasses.fields(DistillConfig):
        if f.name not in not_options:
            help_text = typing.get_args(params[f.name].annotation)[1].help
            value = getattr(defaults, f.name)
            value = ",".join(value) if isinstance(value, tuple) else value
            assert help_text.endswith(f"(default: {value})"), (f.name, help_text)


def test_cli_training_options_default_to_the_train_config() -> None:
    # cli.py builds the TrainConfig options of `segkd train` and `segkd distill` from the
    # dataclass, read without torch (cli.py must start without it on a Jetson).
    import subprocess
    import sys

    probe = "import sys, cli; assert 'torch' not in sys.modules, 'cli imported torch'"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    import dataclasses
    import inspect

    import cli
    from distill.training.config import TrainConfig

    defaults = TrainConfig()
    own = {"out", "role"}  # each command has its own output folder; distill is a student
    for command, renamed in ((cli.train, {}), (cli.distill, {"model": "student"})):
        params = inspect.signature(command).parameters
        checked = 0
        for f in dataclasses.fields(TrainConfig):
            name = renamed.get(f.name, f.name)
            if name in params and f.name not in own:
                default = params[name].default
                assert default == getattr(defaults, f.name), (command.__name__, f.name)
                checked += 1
        assert checked >= 17, command.__name__


def test_distillation_trains_the_student_with_the_supervised_loss_it_is_given() -> None:
    """`--loss ohem` reaches the distilled student: its "ce" term is the OHEM term."""
    from distill.losses.authors import OhemSegmentationLoss
    from distill.losses.ohem import ohem_cross_entropy

    teacher, student = TinySegmentor(8, seed=1), TinySegmentor(4, seed=2)
    config = DistillConfig(losses=("cwd",))
    seg = OhemSegmentationLoss(min_kept=50)
    objective = DistillObjective(teacher, 4, K, config, None, seg_loss=seg)
    images, labels = batch()
    out = student(images)
    terms = objective(images, labels, out)
    assert objective.seg is seg
    want = ohem_cross_entropy(out["logits"], labels, min_kept=50)
    torch.testing.assert_close(terms["ce"], want)
