"""Independent functional forwards of the zoo networks, written from each source's definition.

A `Params` both defines a state dict's layout (in "make" mode it creates a random tensor of
the shape the source gives each key it asks for) and reads it (in "use" mode), so the key
names and shapes the tests save come from these functions, not from distill.zoo.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class Params:
    def __init__(self, seed: int = 0, state: dict[str, torch.Tensor] | None = None) -> None:
        self.make = state is None
        self.state: dict[str, torch.Tensor] = {} if state is None else state
        self.gen = torch.Generator().manual_seed(seed)

    def get(self, key: str, shape: tuple[int, ...], kind: str = "w") -> torch.Tensor:
        if not self.make:
            t = self.state[key]
            assert tuple(t.shape) == shape, (key, tuple(t.shape), shape)
            return t
        g = self.gen
        if kind == "w":  # conv weight, He-scaled so 100 layers neither explode nor vanish
            fan_in = math.prod(shape[1:])
            t = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
        elif kind == "gamma":
            t = 0.5 + 0.5 * torch.rand(shape, generator=g)
        elif kind == "var":
            t = 0.5 + torch.rand(shape, generator=g)
        else:  # biases, BN beta and running mean
            t = 0.1 * torch.randn(shape, generator=g)
        self.state[key] = t
        return t

    # -- layers ------------------------------------------------------------------------
    def conv(self, x, key, cout, k, stride=1, pad=0, dil=1, groups=1, bias=False):
        w = self.get(f"{key}.weight", (cout, x.shape[1] // groups, k, k))
        b = self.get(f"{key}.bias", (cout,), "b") if bias else None
        return F.conv2d(x, w, b, stride, pad, dil, groups)

    def bn(self, x, key, eps=1e-5):
        c = x.shape[1]
        w = self.get(f"{key}.weight", (c,), "gamma")
        b = self.get(f"{key}.bias", (c,), "b")
        m = self.get(f"{key}.running_mean", (c,), "b")
        v = self.get(f"{key}.running_var", (c,), "var")
        if self.make:
            self.state[f"{key}.num_batches_tracked"] = torch.tensor(100, dtype=torch.long)
        return F.batch_norm(x, m, v, w, b, training=False, eps=eps)

    def cbr(self, x, conv_key, bn_key, cout, k=1, stride=1, dil=1, relu=True, eps=1e-5):
        pad = 0 if k == 1 else dil * (k // 2)
        y = self.bn(self.conv(x, conv_key, cout, k, stride, pad, dil), bn_key, eps)
        return F.relu(y) if relu else y


def up(x, size, align):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align)


# -- ResNets -------------------------------------------------------------------------------
STAGES = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def bottleneck(P, x, key, planes, stride, dil):
    out = P.cbr(x, f"{key}.conv1", f"{key}.bn1", planes)
    out = P.cbr(out, f"{key}.conv2", f"{key}.bn2", planes, 3, stride, dil)
    out = P.cbr(out, f"{key}.conv3", f"{key}.bn3", planes * 4, relu=False)
    if stride != 1 or x.shape[1] != planes * 4:
        x = P.cbr(
            x, f"{key}.downsample.0", f"{key}.downsample.1", planes * 4, 1, stride, relu=False
        )
    return F.relu(out + x)


def basic_v1b(P, x, key, planes, stride, dil, prev):
    """CIRKD's BasicBlockV1b: conv1 at `dil` (with the stride), conv2 at `prev`."""
    out = P.cbr(x, f"{key}.conv1", f"{key}.bn1", planes, 3, stride, dil)
    out = P.cbr(out, f"{key}.conv2", f"{key}.bn2", planes, 3, 1, prev, relu=False)
    if stride != 1 or x.shape[1] != planes:
        x = P.cbr(x, f"{key}.downsample.0", f"{key}.downsample.1", planes, 1, stride, relu=False)
    return F.relu(out + x)


def basic_mmseg(P, x, key, planes, stride, dil):
    """mmseg's BasicBlock: conv1 carries stride and dilation, conv2 is a plain 3x3."""
    out = P.cbr(x, f"{key}.conv1", f"{key}.bn1", planes, 3, stride, dil)
    out = P.cbr(out, f"{key}.conv2", f"{key}.bn2", planes, 3, 1, 1, relu=False)
    if stride != 1 or x.shape[1] != planes:
        x = P.cbr(x, f"{key}.downsample.0", f"{key}.downsample.1", planes, 1, stride, relu=False)
    return F.relu(out + x)


def dilated_stages(P, x, prefix, depth, first_dilation, basic=None):
    """layer1..4, strides (1, 2, 1, 1), dilations (1, 1, 2, 4); returns (c3, c4).

    first_dilation(d): the first block's dilation in a stage of dilation d (mmseg's
    contract_dilation d // 2, torchvision's previous dilation, CIRKD's 1 or 2)."""
    outs = []
    for i, (n, stride, dil) in enumerate(
        zip(STAGES[depth], (1, 2, 1, 1), (1, 1, 2, 4), strict=False)
    ):
        planes = 64 * 2**i
        for j in range(n):
            key = f"{prefix}layer{i + 1}.{j}"
            d = first_dilation(dil) if j == 0 else dil
            s = stride if j == 0 else 1
            if depth == 18 and basic is not None:
                x = basic(P, x, key, planes, s, d)
            elif depth == 18:
                prev = dil  # CIRKD: previous_dilation is the stage's dilation
                x = basic_v1b(P, x, key, planes, s, d, prev)
            else:
                x = bottleneck(P, x, key, planes, s, d)
        outs.append(x)
    return outs[2], outs[3]


def maxpool(x):
    return F.max_pool2d(x, 3, 2, 1)


# -- mmsegmentation ------------------------------------------------------------------------
def mmseg_cm(P, x, key, cout, k=1, dil=1):
    return P.cbr(x, f"{key}.conv", f"{key}.bn", cout, k, 1, dil)


def mmseg_forward(P, x, depth, head, num_classes):
    s = "backbone.stem"
    x = P.cbr(x, f"{s}.0", f"{s}.1", 32, 3, 2)
    x = P.cbr(x, f"{s}.3", f"{s}.4", 32, 3)
    x = P.cbr(x, f"{s}.6", f"{s}.7", 64, 3)
    c3, c4 = dilated_stages(
        P, maxpool(x), "backbone.", depth, lambda d: d // 2 if d > 1 else d, basic_mmseg
    )
    ch, aux_ch = (128, 64) if depth == 18 else (512, 256)  # the r18-d8 configs' widths
    h = "decode_head"
    if head == "psp":
        outs = [c4] + [
            up(
                mmseg_cm(P, F.adaptive_avg_pool2d(c4, s), f"{h}.psp_modules.{i}.1", ch),
                c4.shape[-2:],
                False,
            )
            for i, s in enumerate((1, 2, 3, 6))
        ]
        feat = mmseg_cm(P, torch.cat(outs, 1), f"{h}.bottleneck", ch, 3)
    elif head == "aspp":
        outs = [
            up(
                mmseg_cm(P, F.adaptive_avg_pool2d(c4, 1), f"{h}.image_pool.1", ch),
                c4.shape[-2:],
                False,
            )
        ]
        for i, d in enumerate((1, 12, 24, 36)):
            outs.append(mmseg_cm(P, c4, f"{h}.aspp_modules.{i}", ch, 1 if d == 1 else 3, d))
        feat = mmseg_cm(P, torch.cat(outs, 1), f"{h}.bottleneck", ch, 3)
    else:  # fcn_r50-d8: num_convs 2, concat_input
        y = mmseg_cm(P, mmseg_cm(P, c4, f"{h}.convs.0", ch, 3), f"{h}.convs.1", ch, 3)
        feat = mmseg_cm(P, torch.cat([c4, y], 1), f"{h}.conv_cat", ch, 3)
    logits = P.conv(feat, f"{h}.conv_seg", num_classes, 1, bias=True)
    a = mmseg_cm(P, c3, "auxiliary_head.convs.0", aux_ch, 3)
    aux = P.conv(a, "auxiliary_head.conv_seg", num_classes, 1, bias=True)
    return logits, feat, aux


# -- CIRKD -----------------------------------------------------------------------------------
def cirkd_forward(P, x, depth, head, num_classes, width=512):
    p = "pretrained"
    x = P.cbr(x, f"{p}.conv1", f"{p}.bn1", 64, 3, 2)
    x = P.cbr(x, f"{p}.conv2", f"{p}.bn2", 64, 3)
    x = P.cbr(x, f"{p}.conv3", f"{p}.bn3", 128, 3)
    # ResNetV1b._make_layer: dilation 2 -> first block 1; dilation 4 -> first block 2
    c3, c4 = dilated_stages(P, maxpool(x), f"{p}.", depth, lambda d: {1: 1, 2: 1, 4: 2}[d])
    cin = c4.shape[1]
    size = c4.shape[-2:]
    if head == "psp":
        outs = [c4] + [
            up(
                P.cbr(
                    F.adaptive_avg_pool2d(c4, s),
                    f"head.psp.conv{i + 1}.0",
                    f"head.psp.conv{i + 1}.1",
                    cin // 4,
                ),
                size,
                True,
            )
            for i, s in enumerate((1, 2, 3, 6))
        ]
        ch = 256 if cin == 2048 else 128
        feat = P.cbr(torch.cat(outs, 1), "head.block.0", "head.block.1", ch, 3)
        logits = P.conv(feat, "head.classifier", num_classes, 1, bias=True)
    else:
        a = "head.aspp"
        outs = [P.cbr(c4, f"{a}.b0.0", f"{a}.b0.1", width)]
        for i, r in enumerate((12, 24, 36)):
            outs.append(P.cbr(c4, f"{a}.b{i + 1}.block.0", f"{a}.b{i + 1}.block.1", width, 3, 1, r))
        g = P.cbr(F.adaptive_avg_pool2d(c4, 1), f"{a}.b4.gap.1", f"{a}.b4.gap.2", width)
        outs.append(up(g, size, True))
        y = P.cbr(torch.cat(outs, 1), f"{a}.project.0", f"{a}.project.1", width)
        feat = P.cbr(y, "head.block.0", "head.block.1", width, 3)
        logits = P.conv(feat, "head.block.4", num_classes, 1, bias=True)
    h = P.cbr(c3, "auxlayer.block.0", "auxlayer.block.1", c3.shape[1] // 4, 3)
    aux = P.conv(h, "auxlayer.block.4", num_classes, 1, bias=True)
    return logits, feat, aux


# -- torchvision -----------------------------------------------------------------------------
def tv_fcn_head(P, x, key, num_classes):
    feat = P.cbr(x, f"{key}.0", f"{key}.1", x.shape[1] // 4, 3)
    return P.conv(feat, f"{key}.4", num_classes, 1, bias=True), feat


def tv_deeplab_head(P, x, num_classes):
    c = "classifier.0"
    size = x.shape[-2:]
    outs = [P.cbr(x, f"{c}.convs.0.0", f"{c}.convs.0.1", 256)]
    for i, r in enumerate((12, 24, 36)):
        outs.append(P.cbr(x, f"{c}.convs.{i + 1}.0", f"{c}.convs.{i + 1}.1", 256, 3, 1, r))
    g = P.cbr(F.adaptive_avg_pool2d(x, 1), f"{c}.convs.4.1", f"{c}.convs.4.2", 256)
    outs.append(up(g, size, False))
    y = P.cbr(torch.cat(outs, 1), f"{c}.project.0", f"{c}.project.1", 256)
    feat = P.cbr(y, "classifier.1", "classifier.2", 256, 3)
    return P.conv(feat, "classifier.4", num_classes, 1, bias=True), feat


# mobilenet_v3_large (kernel, expanded, out, SE, activation, stride), dilated C4 (last three)
MBV3 = [
    (3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2), (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2), (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1), (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1), (5, 960, 160, True, "HS", 1),
]  # fmt: skip


def _div8(v):
    n = max(8, int(v + 4) // 8 * 8)
    return n + 8 if n < 0.9 * v else n


def mbv3_features(P, x):
    """Returns (features[4], features[16])."""
    eps = 1e-3
    hs = F.hardswish
    x = hs(P.cbr(x, "backbone.0.0", "backbone.0.1", 16, 3, 2, relu=False, eps=eps))
    low = None
    cin = 16
    for i, (k, e, cout, se, act, stride) in enumerate(MBV3):
        key = f"backbone.{i + 1}.block"
        f = hs if act == "HS" else F.relu
        dil = 2 if i >= 12 else 1
        s = 1 if dil > 1 else stride
        y, j = x, 0
        if e != cin:
            y = f(P.cbr(y, f"{key}.0.0", f"{key}.0.1", e, relu=False, eps=eps))
            j = 1
        w = P.get(f"{key}.{j}.0.weight", (e, 1, k, k))
        y = F.conv2d(y, w, None, s, (k - 1) // 2 * dil, dil, e)
        y = f(P.bn(y, f"{key}.{j}.1", eps))
        j += 1
        if se:
            sq = _div8(e // 4)
            z = F.adaptive_avg_pool2d(y, 1)
            z = F.relu(P.conv(z, f"{key}.{j}.fc1", sq, 1, bias=True))
            z = F.hardsigmoid(P.conv(z, f"{key}.{j}.fc2", e, 1, bias=True))
            y = y * z
            j += 1
        y = P.cbr(y, f"{key}.{j}.0", f"{key}.{j}.1", cout, relu=False, eps=eps)
        x = y + x if stride == 1 and cin == cout else y
        cin = cout
        if i + 1 == 4:
            low = x
    x = hs(P.cbr(x, "backbone.16.0", "backbone.16.1", 960, relu=False, eps=eps))
    return low, x


def torchvision_forward(P, x, name, num_classes):
    head, _, backbone = name.partition("_")
    if backbone.startswith("resnet"):
        z = F.relu(P.bn(P.conv(x, "backbone.conv1", 64, 7, 2, 3), "backbone.bn1"))
        low, high = dilated_stages(
            P, maxpool(z), "backbone.", int(backbone[6:]), lambda d: max(1, d // 2)
        )
    else:
        low, high = mbv3_features(P, x)
    if head == "lraspp":
        h = F.relu(P.bn(P.conv(high, "classifier.cbr.0", 128, 1), "classifier.cbr.1"))
        s = torch.sigmoid(P.conv(F.adaptive_avg_pool2d(high, 1), "classifier.scale.1", 128, 1))
        feat = up(h * s, low.shape[-2:], False)
        logits = P.conv(low, "classifier.low_classifier", num_classes, 1, bias=True) + P.conv(
            feat, "classifier.high_classifier", num_classes, 1, bias=True
        )
        return logits, feat, None
    if head == "deeplabv3":
        logits, feat = tv_deeplab_head(P, high, num_classes)
    else:
        logits, feat = tv_fcn_head(P, high, "classifier", num_classes)
    aux = tv_fcn_head(P, low, "aux_classifier", num_classes)[0]
    return logits, feat, aux
