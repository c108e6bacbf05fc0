//! The CUDA attention kernels checked without a GPU: `kernels/cuda/emu/attention_check.cpp` compiles
//! `kernels/cuda/attention_tc.cu` (tensor cores, bf16) and `kernels/cuda/attention.cu` (general f32 kernels,
//! including the wide head dims of the VAE) with the host C++ compiler against the CUDA emulation of
//! `kernels/cuda/emu/emu.h` (a fiber per CUDA thread, warp shuffles and mma.sync fragments exchanged as
//! the PTX ISA lays them out) and compares forward, LSE and the three gradients with attention in double
//! precision on ragged shapes. A wrong fragment index, tile bound or mask fails here before any GPU run;
//! speed and hardware-only races still need `scripts/gpu/check.sh` on a device.
//!
//! Needs a C++20 compiler (`$CXX`, else `c++` or `g++`; scripts/setup.sh installs g++). A missing compiler
//! fails the test (it does not skip).

use std::path::Path;
use std::process::Command;

#[path = "support/cuda_emulation.rs"]
mod support;
use support::compiler;

#[test]
fn attention_kernels_match_double_precision_under_emulation() {
    let emu = Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda/emu");
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = dir.path().join("attention_check");
    let cxx = compiler();
    let out = Command::new(&cxx)
        .args(["-std=c++20", "-O2", "-pthread", "-fno-strict-aliasing", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(emu.join("attention_check.cpp"))
        .output()
        .unwrap_or_else(|e| panic!("running {cxx}: {e}"));
    assert!(out.status.success(), "{cxx} could not build the emulation:\n{}", String::from_utf8_lossy(&out.stderr));
    let run = Command::new(&exe).output().expect("run the emulated kernels");
    let report = String::from_utf8_lossy(&run.stdout);
    println!("{report}");
    assert!(run.status.success(), "emulated CUDA attention out of tolerance:\n{report}");
    assert_eq!(report.lines().filter(|l| l.ends_with(" ok")).count(), 7, "{report}");
}
