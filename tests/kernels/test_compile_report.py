"""compile_report: parsing ptxas's report out of a real NVRTC log and rewriting the README table."""

from __future__ import annotations

import pytest
from bpedge.kernels import (
    PASTE_ENTRY_POINTS,
    PREPROCESS_ENTRY_POINTS,
    NvrtcUnavailableError,
    compile_kernel,
    compile_report,
    nvrtc_version,
)
from bpedge.kernels._paths import KERNEL_DIR

ALL_ENTRIES = sorted([*PREPROCESS_ENTRY_POINTS.values(), *PASTE_ENTRY_POINTS.values()])


@pytest.fixture(scope="module", autouse=True)
def _nvrtc_loads():
    try:
        nvrtc_version()
    except NvrtcUnavailableError as exc:
        pytest.skip(f"NVRTC cannot be loaded here: {exc}")


def test_parse_real_log():
    kernel = compile_kernel("preprocess.cu", 80)
    infos = compile_report.parse_ptxas_log(kernel.log)
    assert sorted(i.entry for i in infos) == sorted(PREPROCESS_ENTRY_POINTS.values())
    for info in infos:
        assert info.arch == 80
        assert 0 < info.registers <= 255
        assert info.shared > 0  # the tap tables and reduction buffers are static shared memory
        assert f"Used {info.registers} registers" in kernel.log


def test_parse_handles_no_smem_and_spills():
    log = ("ptxas info    : Compiling entry function 'k' for 'sm_75'\n"
           "ptxas         .     16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 0 barriers, 368 bytes cmem[0]\n")
    (info,) = compile_report.parse_ptxas_log(log)
    assert (info.entry, info.arch, info.registers) == ("k", 75, 255)
    assert (info.stack, info.spill_stores, info.spill_loads, info.shared) == (16, 8, 4, 0)


def test_main_rewrites_only_the_marked_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\nbefore\n{compile_report.BEGIN_MARKER}\nold table\n"
                      f"{compile_report.END_MARKER}\nafter\n")
    assert compile_report.main(["--arch", "80", "87", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# title\nbefore\n") and text.endswith("after\n")
    assert "old table" not in text
    section = text.split(compile_report.BEGIN_MARKER)[1].split(compile_report.END_MARKER)[0]
    assert "| sm_80 | sm_87 |" in section
    for entry in ALL_ENTRIES:
        assert f"`{entry}`" in section


def test_missing_markers_raise(tmp_path):
    with pytest.raises(ValueError, match="section to replace"):
        compile_report.replace_section("no markers here", "table")


def test_committed_readme_holds_a_generated_table_for_every_entry_point():
    text = (KERNEL_DIR / "README.md").read_text()
    section = text.split(compile_report.BEGIN_MARKER)[1].split(compile_report.END_MARKER)[0]
    for entry in ALL_ENTRIES:
        assert f"`{entry}`" in section
    for arch in (75, 80, 86, 87, 89, 90):
        assert f"sm_{arch}" in section
