//! Engine API tests: real eBPF engine, no filesystem.

use bpfdb::{Db, NewMeta, Options, SetFlags};

fn small_db() -> Db {
    let opts = Options {
        max_keys: 4096,
        value_mem_bytes: 16 << 20,
        slots: 4,
        ..Options::default()
    };
    Db::open(&opts).unwrap_or_else(|e| panic!("open engine: {e}"))
}

fn meta() -> NewMeta {
    NewMeta {
        mode: 0o100644,
        uid: 0,
        gid: 0,
        mtime_ns: 1,
    }
}

#[test]
fn set_get_delete_roundtrip() {
    let db = small_db();
    let mut s = db.session();
    let mut out = Vec::new();
    s.set(b"greeting", b"hello\n", meta(), SetFlags::default())
        .unwrap();
    let st = s.get(b"greeting", &mut out).unwrap();
    assert_eq!(out, b"hello\n");
    assert_eq!(st.meta.len, 6);
    s.delete(b"greeting").unwrap();
    assert_eq!(
        s.get(b"greeting", &mut out).unwrap_err().errno,
        libc::ENOENT
    );
}
