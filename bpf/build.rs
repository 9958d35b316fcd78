//! Compiles the C engine with clang-19 and generates its libbpf skeleton.
use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "src/engine.bpf.c";

fn main() {
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
            "-Isrc",
        ])
        .build_and_generate(&out)
        .unwrap_or_else(|e| panic!("building {SRC} with {clang}: {e:#}"));
    // Every C source and header of the engine, so a change in any rebuilds it.
    let dir = std::fs::read_dir("src").expect("read bpf/src");
    for entry in dir.flatten() {
        let path = entry.path();
        if matches!(path.extension().and_then(|e| e.to_str()), Some("c" | "h")) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
}
