"""CPU description recorded with every timing and INT8 verification."""

from __future__ import annotations

from pathlib import Path

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
    assert model is None and {"asimd", "asimddp"} <= flags  # no CPU part line: unnamed
    assert parse_cpuinfo("") == (None, set())


def test_cpu_info_of_this_machine_is_complete() -> None:
    c = cpu_info()
    assert set(c) == {"model", "arch", "cores", "flags", "int8_dot"}
    assert c["model"] and c["cores"] >= 1 and isinstance(c["flags"], list)
    assert c["arch"] in describe_cpu()


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cpuinfo"


def test_cpuinfo_files_of_a_jetson_orin_and_an_x86_server() -> None:
    model, flags = parse_cpuinfo((FIXTURES / "orin_arm64.txt").read_text())
    assert model == "Arm Cortex-A78AE"  # from CPU implementer 0x41, CPU part 0xd42
    assert {"asimd", "asimddp"} <= flags and "i8mm" not in flags
    model, flags = parse_cpuinfo((FIXTURES / "xeon_x86_64.txt").read_text())
    assert model == "Intel(R) Xeon(R) Processor" and {"avx512_vnni", "amx_int8"} <= flags


def test_an_unknown_arm_core_is_named_by_its_ids() -> None:
    text = "Features\t: fp asimd\nCPU implementer\t: 0x61\nCPU part\t: 0x022\n"
    assert parse_cpuinfo(text)[0] == "Arm core 0x61/0x022"
