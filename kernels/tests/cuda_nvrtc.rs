//! Every `kernels/cuda/*.cu` compiles with NVRTC for sm_90 and sm_80 and defines the kernels the launchers
//! use. Needs no GPU and no driver, only NVRTC: `scripts/setup.sh` installs the `nvidia-cuda-nvrtc` wheel into
//! `.cache/cudaenv` (or point `MEDGEN_NVRTC_DIR` at a folder with `libnvrtc.so.13`). A missing NVRTC fails
//! these tests (it does not skip them).
#![cfg(feature = "cuda")]

use std::collections::BTreeSet;
use std::sync::OnceLock;

use medgen_kernels::Error;
use medgen_kernels::cuda::{self, KERNEL_FILES, KernelFile};

const FIX: &str = "run scripts/setup.sh (it installs the pinned nvidia-cuda-nvrtc wheel into .cache/cudaenv) or set \
                   MEDGEN_NVRTC_DIR to a folder holding libnvrtc.so.13 and libnvrtc-builtins.so.13.*";

#[path = "support/cuda_emulation.rs"]
mod support;
use support::{nvrtc_dir, repo_root};

/// Loads NVRTC once for all tests of this binary, or fails with the fix.
fn setup() -> (i32, i32) {
    static V: OnceLock<Result<(i32, i32), String>> = OnceLock::new();
    V.get_or_init(|| {
        let dir = nvrtc_dir().ok_or_else(|| format!("NVRTC not found: {FIX}"))?;
        cuda::preload_nvrtc(&dir).map_err(|e| format!("{e}: {FIX}"))?;
        cuda::nvrtc_version().map_err(|e| format!("{e}: {FIX}"))
    })
    .clone()
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_kernel_file_is_listed() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(repo_root().join("kernels/cuda"))
        .expect("kernels/cuda exists")
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .filter(|n| n.ends_with(".cu"))
        .collect();
    let listed: BTreeSet<String> = KERNEL_FILES.iter().map(|f| f.name.to_string()).collect();
    assert_eq!(on_disk, listed, "kernels/cuda/*.cu and cuda::KERNEL_FILES differ");
}

#[test]
fn every_kernel_compiles_for_sm90_and_sm80() {
    let (major, minor) = setup();
    println!("NVRTC {major}.{minor}");
    let mut total = 0;
    for f in KERNEL_FILES {
        for arch in ["compute_90", "compute_80"] {
            let t = std::time::Instant::now();
            let ptx = cuda::compile_ptx(f, arch).unwrap_or_else(|e| panic!("{e}"));
            assert!(ptx.contains(&format!(".target sm_{}", &arch[8..])), "{}: PTX target for {arch}", f.name);
            if (major, minor) == (13, 0) {
                // The CUDA 13.0 driver (580) JIT-compiles PTX ISA up to 9.0.
                assert!(ptx.contains(".version 9.0"), "{}: NVRTC 13.0 should emit PTX ISA 9.0", f.name);
            }
            for k in f.kernels {
                assert!(ptx.contains(&format!(".entry {k}(")), "{}: kernel {k} missing from the {arch} PTX", f.name);
                total += 1;
            }
            println!("{} {arch}: {} kernels, {} bytes of PTX, {:?}", f.name, f.kernels.len(), ptx.len(), t.elapsed());
        }
    }
    assert!(total >= 2 * 34, "expected every kernel for two architectures, got {total}");
}

#[test]
fn compile_errors_are_typed_with_the_log() {
    setup();
    let bad = KernelFile {
        name: "broken.cu",
        source: "extern \"C\" __global__ void broken(float* x) { x[0] = undefined_symbol; }\n",
        kernels: &["broken"],
    };
    match cuda::compile_ptx(&bad, "compute_90") {
        Err(Error::CudaCompile { file, log, .. }) => {
            assert_eq!(file, "broken.cu");
            assert!(log.contains("undefined_symbol"), "log: {log}");
        }
        other => panic!("expected a CudaCompile error, got {other:?}"),
    }
}

/// Every kernel file goes through ptxas (NVRTC's, to sm_90 and sm_80 machine code): what a module load on
/// the GPU would reject fails here, and no kernel needs more than the 48 KB of static shared memory a block
/// may have without opting in. Prints each kernel's registers, shared memory, stack and spills.
#[test]
fn every_kernel_assembles_for_sm90_and_sm80_within_the_shared_memory_limit() {
    setup();
    let mut seen = 0;
    for sm in ["sm_90", "sm_80"] {
        for f in KERNEL_FILES {
            let res = cuda::kernel_resources(f, sm).unwrap_or_else(|e| panic!("{}: {e}", f.name));
            for k in f.kernels {
                assert!(res.iter().any(|r| r.kernel == *k), "{} {sm}: no ptxas report for {k}: {res:?}", f.name);
            }
            for r in &res {
                println!(
                    "{sm} {:<28} {:>3} regs {:>6} B smem {:>5} B stack {:>5} B spills",
                    r.kernel, r.registers, r.shared_bytes, r.stack_bytes, r.spill_store_bytes
                );
                assert!(
                    r.shared_bytes <= 48 * 1024,
                    "{sm} {}: {} bytes of static shared memory",
                    r.kernel,
                    r.shared_bytes
                );
                assert!(r.registers > 0, "{sm} {}: no register count parsed: {r:?}", r.kernel);
                seen += 1;
            }
        }
    }
    assert!(seen >= 2 * 34, "expected every kernel for two architectures, got {seen}");
}
