//! Compiles the C engine with clang-19 and generates its libbpf skeleton.
use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

/// The one eBPF object; the other C files are its headers and included
/// stage files, all in `BPF_DIR`.
const BPF_DIR: &str = "src/bpf";
const SRC: &str = "src/bpf/engine.bpf.c";

fn main() {
    // The trigger's first instruction is x86's 5-byte NOP (the optimised
    // uprobe needs it) and the C headers come from the x86_64 multiarch path.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    assert!(
        arch == "x86_64",
        "bpfdb builds for x86_64 only (target arch {arch:?}): its trigger is a 5-byte x86 NOP \
         and its eBPF build uses /usr/include/x86_64-linux-gnu"
    );
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR set by cargo")).join("engine.skel.rs");
    let clang = env::var("BPF_CLANG").unwrap_or_else(|_| "clang-19".to_string());
    SkeletonBuilder::new()
        .source(SRC)
        .clang(&clang)
        .clang_args([
            "-Wall",
            "-Werror",
            "-mcpu=v3",
            "-I/usr/include/x86_64-linux-gnu",
            "-Isrc/bpf",
        ])
        .build_and_generate(&out)
        .unwrap_or_else(|e| panic!("building {SRC} with {clang}: {e:#}"));
    // Every C source and header of the engine, so a change in any rebuilds it.
    let dir = std::fs::read_dir(BPF_DIR).expect("read bpf/src/bpf");
    for entry in dir.flatten() {
        let path = entry.path();
        if matches!(path.extension().and_then(|e| e.to_str()), Some("c" | "h")) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
}
