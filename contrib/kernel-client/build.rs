//! Compiles peek.bpf.c against bpfdb's kernel-side API header and generates
//! its skeleton, as bpf/build.rs does for the engine.
use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "src/peek.bpf.c";
/// bpfdb_kernel.h and bpfdb.h: the interface this client is written to.
const API_DIR: &str = "../../bpf/src/bpf";

fn main() {
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR set by cargo")).join("peek.skel.rs");
    let clang = env::var("BPF_CLANG").unwrap_or_else(|_| "clang-19".to_string());
    SkeletonBuilder::new()
        .source(SRC)
        .clang(&clang)
        .clang_args([
            "-Wall",
            "-Werror",
            "-mcpu=v3",
            "-I/usr/include/x86_64-linux-gnu",
            &format!("-I{API_DIR}"),
        ])
        .build_and_generate(&out)
        .unwrap_or_else(|e| panic!("building {SRC} with {clang}: {e:#}"));
    for f in [
        SRC,
        &format!("{API_DIR}/bpfdb_kernel.h"),
        &format!("{API_DIR}/bpfdb.h"),
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
}
