"""CPU description recorded with every timing and INT8 verification."""

from __future__ import annotations

from runtime.machine import cpu_info, describe_cpu, parse_cpuinfo

X86 = """processor\t: 0
model name\t: AMD EPYC 9654
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_vnni
processor\t: 1
model name\t: AMD EPYC 9654
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_vnni
"""
# Jetson Orin (Cortex-A78AE): no 'model name', features instead of flags.
ARM = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp
CPU implementer\t: 0x41
"""


def test_parse_x86_and_arm_cpuinfo() -> None:
    model, flags = parse_cpuinfo(X86)
    assert model == "AMD EPYC 9654" and {"avx2", "avx512_vnni"} <= flags
    model, flags = parse_cpuinfo(ARM)
    assert model is None and {"asimd", "asimddp"} <= flags
    assert parse_cpuinfo("") == (None, set())


def test_cpu_info_of_this_machine_is_complete() -> None:
    c = cpu_info()
    assert set(c) == {"model", "arch", "cores", "flags", "int8_dot"}
    assert c["model"] and c["cores"] >= 1 and isinstance(c["flags"], list)
    assert c["arch"] in describe_cpu()
