//! `bpfdb-peek PIN_DIR KEY`: prints KEY's value from a running bpfdb daemon
//! started with `--pin-dir PIN_DIR`, read in the kernel by an eBPF program
//! over the daemon's pinned maps, without the mount or the daemon.
//!
//! A standalone example of bpfdb's kernel-side API (docs/KERNEL-CLIENTS.md):
//! open the client object, make its copies of the engine's maps the pinned
//! ones, load, run. Exit status: 0 found, 1 no such key, 2 usage or error.

use std::io::Write;
use std::mem::MaybeUninit;
use std::path::Path;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, OpenObject, ProgramInput};

mod skel {
    #![allow(
        clippy::all,
        non_camel_case_types,
        non_snake_case,
        dead_code,
        unused_imports
    )]
    include!(concat!(env!("OUT_DIR"), "/peek.skel.rs"));
}
use skel::PeekSkelBuilder;

/// struct peek_args (peek.bpf.c).
#[repr(C)]
struct PeekArgs {
    name: [u8; KEY_SIZE],
    name_len: u32,
    err: i32,
    meta: [u8; META_BYTES],
    ts: u64,
}
const KEY_SIZE: usize = 256;
const KEY_MAX: usize = 255;
const META_BYTES: usize = 32;
/// Offset of the value length in struct db_meta.
const META_LEN_AT: usize = 20;
const _: () = assert!(size_of::<PeekArgs>() == 256 + 8 + 32 + 8);

fn fail(msg: String) -> ! {
    eprintln!("bpfdb-peek: {msg}");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, pin_dir, key] = &args[..] else {
        fail("usage: bpfdb-peek PIN_DIR KEY".into());
    };
    let name = key.as_bytes();
    if name.is_empty() || name.len() > KEY_MAX || name.contains(&b'/') {
        fail(format!("{key:?} is not a key name"));
    }
    let mut object = MaybeUninit::<OpenObject>::uninit();
    let mut open = PeekSkelBuilder::default()
        .open(&mut object)
        .unwrap_or_else(|e| fail(format!("open: {e}")));
    // The data maps the snapshot read uses are the daemon's pinned ones;
    // the maps for engine requests are unused by a snapshot reader.
    let pin = Path::new(pin_dir);
    let m = &mut open.maps;
    for (name, map) in [
        ("records", &mut m.records),
        ("records_top", &mut m.records_top),
        ("records_below", &mut m.records_below),
        ("long_names", &mut m.long_names),
        ("small_pool", &mut m.small_pool),
        ("page_pool", &mut m.page_pool),
        ("layout", &mut m.layout),
        ("clock", &mut m.clock),
    ] {
        map.reuse_pinned_map(pin.join(name)).unwrap_or_else(|e| {
            fail(format!(
                "{}: {e} (is bpfdb running with --pin-dir {pin_dir}?)",
                pin.join(name).display()
            ))
        });
    }
    for map in [
        &mut m.slots,
        &mut m.stages,
        &mut m.conts,
        &mut m.client_owner,
        &mut m.client_slots,
    ] {
        map.set_autocreate(false)
            .unwrap_or_else(|e| fail(format!("autocreate: {e}")));
    }
    let skel = open.load().unwrap_or_else(|e| fail(format!("load: {e}")));

    let mut a = Box::new(PeekArgs {
        name: [0; KEY_SIZE],
        name_len: name.len() as u32,
        err: 0,
        meta: [0; META_BYTES],
        ts: 0,
    });
    a.name[..name.len()].copy_from_slice(name);
    // SAFETY: PeekArgs is repr(C) plain data; the kernel reads and writes
    // exactly its bytes as the program's context.
    let ctx = unsafe {
        std::slice::from_raw_parts_mut(
            (&mut *a as *mut PeekArgs).cast::<u8>(),
            size_of::<PeekArgs>(),
        )
    };
    let input = ProgramInput {
        context_in: Some(ctx),
        ..Default::default()
    };
    skel.progs
        .peek
        .test_run(input)
        .unwrap_or_else(|e| fail(format!("run: {e}")));
    let len = u32::from_ne_bytes(
        a.meta[META_LEN_AT..META_LEN_AT + 4]
            .try_into()
            .unwrap_or_default(),
    );
    match -a.err {
        0 => {
            let value = skel
                .maps
                .peek_out
                .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
                .unwrap_or_else(|e| fail(format!("reading the value: {e}")))
                .unwrap_or_default();
            let n = (len as usize).min(value.len());
            let _ = std::io::stdout().write_all(&value[..n]);
        }
        libc::ENOENT => {
            eprintln!("bpfdb-peek: {key}: no such key");
            std::process::exit(1);
        }
        libc::E2BIG => fail(format!(
            "{key}: a value of {len} bytes is over one page; read it through the mount"
        )),
        e => fail(format!("{key}: {}", std::io::Error::from_raw_os_error(e))),
    }
}
