//! Slots and the checkpoint gate are taken in one order everywhere (slot,
//! then gate). A checkpoint that took the gate first and then waited for a
//! slot hung forever once every slot was held by a writer waiting for the
//! gate; this test makes that happen on purpose: more writers than slots,
//! each writer's slot held across its wait for the gate, checkpoints in a
//! loop.

use std::sync::mpsc;
use std::time::Duration;

use bpfdb::{Db, NewMeta, Options, SetFlags};

const SLOTS: u32 = 2;
const WRITERS: usize = 4;
const WRITES_PER_WRITER: usize = 300;
const CHECKPOINTS: usize = 30;
/// Far longer than the whole run takes when nothing hangs (~2 s).
const HANG_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn checkpoints_and_writers_never_deadlock_on_slots() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let db = Db::open(&Options {
        max_keys: 4096,
        value_mem_bytes: 16 << 20,
        slots: SLOTS,
        data_dir: Some(dir.path().to_path_buf()),
        ..Options::default()
    })
    .unwrap_or_else(|e| panic!("open engine: {e}"));
    let (done_tx, done_rx) = mpsc::channel::<&'static str>();
    for w in 0..WRITERS {
        let (db, done) = (db.clone(), done_tx.clone());
        std::thread::spawn(move || {
            for i in 0..WRITES_PER_WRITER {
                let key = format!("w{w}-{}", i % 50).into_bytes();
                db.session()
                    .set(&key, b"v", NewMeta::default(), SetFlags::default())
                    .unwrap_or_else(|e| panic!("writer {w}: {e}"));
            }
            let _ = done.send("writer");
        });
    }
    {
        let (db, done) = (db.clone(), done_tx.clone());
        std::thread::spawn(move || {
            for round in 0..CHECKPOINTS {
                db.checkpoint()
                    .unwrap_or_else(|e| panic!("checkpoint {round}: {e}"));
            }
            let _ = done.send("checkpointer");
        });
    }
    drop(done_tx);
    for _ in 0..WRITERS + 1 {
        match done_rx.recv_timeout(HANG_TIMEOUT) {
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "no progress for {HANG_TIMEOUT:?}: checkpoint and writers deadlocked on slots and the gate"
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("a writer or the checkpointer panicked")
            }
        }
    }
}
