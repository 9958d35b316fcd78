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
    for f in [
        "src/engine.bpf.c",
        "src/engine.bpf.h",
        "src/storage.bpf.h",
        "src/bpfdb.h",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
}
