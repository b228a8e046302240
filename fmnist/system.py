"""What machine and software a job ran on: host, CPU model, ISA flags, library versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import socket
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The ISA extensions that decide which kernels oneDNN and OpenVINO can use.
ISA_FLAGS = (
    "avx2",
    "avx_vnni",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
)
# Flags of an int8 dot-product instruction (VNNI's vpdpbusd, AMX's tiles): these add
# u8 x s8 products straight into 32 bits. Without them, AVX2's vpmaddubsw adds pairs of
# products into 16 bits, which saturate when both bytes use their whole range.
INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# Flags of native bf16 arithmetic (AVX-512's vdpbf16ps, AMX's bf16 tiles). Without them
# oneDNN emulates bf16, which is slower than f32.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
LIBRARIES = (
    "tensorflow",
    "tensorflow-cpu",
    "keras",
    "openvino",
    "nncf",
    "numpy",
    "pandas",
    "pyarrow",
    "click",
    "joblib",
)


@dataclass(frozen=True)
class MachineInfo:
    """The host a job ran on, recorded in manifests and timings."""

    host: str
    cpu_model: str
    isa_flags: list[str]
    logical_cpus: int
    usable_cpus: int
    python: str
    libraries: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """CPU model name and the set of flags from the text of ``/proc/cpuinfo``."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def read_cpuinfo() -> tuple[str, set[str]]:
    """This machine's CPU model name and flags, as Linux reports them (empty where it cannot)."""
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return "", set()


def cpu_flags() -> set[str]:
    """The flags of this machine's CPU (empty where Linux does not report them)."""
    return read_cpuinfo()[1]


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below every int8 dot-product ISA. OpenVINO's CPU
# plugin honours the cap: under AVX2 it runs int8 convolutions with jit_avx2_I8 kernels
# even on a CPU with VNNI.
ISA_CAPS_WITHOUT_INT8_DOT_PRODUCT = ("SSE41", "AVX", "AVX2", "AVX512_CORE")


def has_int8_dot_product(flags: set[str] | None = None, isa_cap: str | None = None) -> bool:
    """Whether int8 kernels here use VNNI or AMX dot products.

    ``flags``: the CPU's (default: this one's); ``isa_cap``: oneDNN's ISA cap (default:
    ``ONEDNN_MAX_CPU_ISA``, or its older name ``DNNL_MAX_CPU_ISA``).
    """
    flags = cpu_flags() if flags is None else flags
    cap = onednn_isa_cap() if isa_cap is None else isa_cap.strip().upper()
    if cap in ISA_CAPS_WITHOUT_INT8_DOT_PRODUCT:
        return False
    return any(flag in flags for flag in INT8_DOT_PRODUCT_FLAGS)


# oneDNN ISA caps below every native bf16 ISA (AVX512_CORE_BF16 and up).
ISA_CAPS_WITHOUT_BF16 = ISA_CAPS_WITHOUT_INT8_DOT_PRODUCT + ("AVX512_CORE_VNNI", "AVX2_VNNI")


def onednn_isa_cap() -> str:
    """oneDNN's ISA cap (``ONEDNN_MAX_CPU_ISA``, or its older name), upper case; "" if none."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA", "")
    return cap.strip().upper()


def has_native_bf16(flags: set[str] | None = None, isa_cap: str | None = None) -> bool:
    """Whether oneDNN runs bf16 natively here (AVX512_BF16 or AMX, not capped below them).

    ``flags``: the CPU's (default: this one's); ``isa_cap``: oneDNN's ISA cap (default:
    ``ONEDNN_MAX_CPU_ISA``).
    """
    flags = cpu_flags() if flags is None else flags
    cap = onednn_isa_cap() if isa_cap is None else isa_cap.strip().upper()
    if cap in ISA_CAPS_WITHOUT_BF16:
        return False
    return any(flag in flags for flag in BF16_FLAGS)


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    """Installed versions of the libraries that decide results and speed."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def machine_info() -> MachineInfo:
    """Describe this machine: host, CPU model, relevant ISA flags, CPU counts, versions."""
    model, flags = read_cpuinfo()
    return MachineInfo(
        host=socket.gethostname(),
        cpu_model=model or platform.processor() or "unknown",
        isa_flags=sorted(flag for flag in ISA_FLAGS if flag in flags),
        logical_cpus=os.cpu_count() or 1,
        usable_cpus=len(os.sched_getaffinity(0)),
        python=platform.python_version(),
        libraries=library_versions(),
    )


def git_revision(directory: Path | None = None) -> str | None:
    """The git commit of the project checkout, when there is one."""
    directory = directory or Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def rss_bytes() -> int:
    """Resident memory of this process now."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far.

    psutil has no peak figure on Linux, so it is Linux's VmHWM, which belongs to this
    program alone; ``ru_maxrss`` (the fallback elsewhere) also keeps the peak of the
    parent the process was forked from before it started this program.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
