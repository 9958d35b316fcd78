//! Rust mirror of `bpfdb.h`. Every struct shared with the engine is `repr(C)`
//! and its size and field offsets are asserted at compile time against the C
//! layout, so a change on one side that is not made on the other fails the
//! build instead of corrupting requests.

use std::mem::{offset_of, size_of};

pub const KEY_MAX: usize = 255;
pub const KEY_SIZE: usize = 256;
pub const VALUE_LIMIT: usize = 1 << 20;
pub const SMALL_CHUNK: usize = 128;
pub const PAGE_SIZE: usize = 4096;
pub const MAX_VERSIONS: usize = 4;
pub const MAX_SLOTS: u32 = 64;
pub const SLOT_HEADER: usize = 2048;
pub const OP_COUNT: usize = 9;
/// Transaction table entries (DB_MAX_TXNS): the last one is reserved for
/// checkpoints, so users can never starve them.
pub const MAX_TXNS: u32 = 65;
/// Entries users can have: transactions and snapshots open at once.
pub const MAX_USER_TXNS: u32 = MAX_TXNS - 1;
pub const CHECKPOINT_TXN: u32 = MAX_TXNS - 1;
pub const TXN_MAX_LOCKS: usize = 128;
/// CAS attempts on a contended lock word (DB_LOCK_CAS_TRIES).
pub const LOCK_CAS_TRIES: u32 = 8;

pub const OWNER_AUTOCOMMIT: u32 = 1 << 31;
/// enum db_txn_state: DB_TXN_ACTIVE.
pub const TXN_ACTIVE: u32 = 1;

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Nop = 0,
    Get = 1,
    Set = 2,
    Delete = 3,
    Rename = 4,
    Scan = 5,
    Begin = 6,
    Commit = 7,
    Abort = 8,
}

/// Stage programs in prog-array order (enum db_stage).
pub const STAGE_COUNT: usize = 12;

pub const F_META_ONLY: u32 = 1 << 0;
pub const F_NOREPLACE: u32 = 1 << 1;
pub const F_MUST_EXIST: u32 = 1 << 2;
pub const F_READ_ONLY: u32 = 1 << 3;
pub const F_NUDGE: u32 = 1 << 4;
pub const F_CHECK_LOCK: u32 = 1 << 5;

/// `enum db_detail`: why an op failed, for error messages and retry decisions.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    None = 0,
    LockedTxn = 1,
    LockedAutocommit = 2,
    NoKeys = 3,
    NoSmall = 4,
    NoPages = 5,
    VersionsFull = 6,
    TooBig = 7,
    BadRequest = 8,
    Race = 9,
    Collision = 10,
    TxnTooBig = 11,
    TxnInactive = 12,
    ReadOnly = 13,
    CommitBusy = 14,
    WalFull = 15,
    WalTooBig = 16,
}

impl Detail {
    pub fn from_raw(raw: u32) -> Detail {
        match raw {
            1 => Detail::LockedTxn,
            2 => Detail::LockedAutocommit,
            3 => Detail::NoKeys,
            4 => Detail::NoSmall,
            5 => Detail::NoPages,
            6 => Detail::VersionsFull,
            7 => Detail::TooBig,
            8 => Detail::BadRequest,
            9 => Detail::Race,
            10 => Detail::Collision,
            11 => Detail::TxnTooBig,
            12 => Detail::TxnInactive,
            13 => Detail::ReadOnly,
            14 => Detail::CommitBusy,
            15 => Detail::WalFull,
            16 => Detail::WalTooBig,
            _ => Detail::None,
        }
    }

    /// Conflicts with a short-lived autocommit op or a reclaimed read: the
    /// engine never waits, so the binding retries these itself.
    pub fn transient(self) -> bool {
        matches!(
            self,
            Detail::LockedAutocommit | Detail::Race | Detail::CommitBusy
        )
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub mtime_ns: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub len: u32,
    pub ctime_ns: u64,
}

/// Map key of a record: seeded xxh3-128 of the name (struct db_hkey).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HKey {
    pub lo: u64,
    pub hi: u64,
}

#[repr(C)]
pub struct Req {
    pub op: u32,
    pub flags: u32,
    pub hkey: HKey,
    pub hkey2: HKey,
    /// SCAN: keys at the start of the data area.
    pub count: u32,
    pub key_len: u32,
    pub key2_len: u32,
    pub txn: u32,
    pub txn_id: u64,
    pub meta: Meta,
    pub key: [u8; KEY_SIZE],
    pub key2: [u8; KEY_SIZE],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Resp {
    pub err: i32,
    pub detail: u32,
    pub ts: u64,
    pub meta: Meta,
    pub count: u32,
    pub pad: [u32; 3],
    pub txn_id: u64,
}

#[repr(C)]
pub struct Cont {
    pub loc: u32,
    pub reuse: u32,
    pub version: u32,
    pub lock_index: u32,
}

#[repr(C)]
pub struct Slot {
    pub req: Req,
    pub resp: Resp,
    pub cont: Cont,
    /// Engine scratch space (struct db_record); user space never reads it.
    pub scratch: [u8; RECORD_SIZE],
    pub header_pad:
        [u8; SLOT_HEADER - size_of::<Req>() - size_of::<Resp>() - size_of::<Cont>() - RECORD_SIZE],
    pub data: [u8; VALUE_LIMIT],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub ops: [u64; OP_COUNT],
    pub keys: u64,
    pub records: u64,
    pub value_bytes: u64,
    pub small_used: u64,
    pub pages_used: u64,
    pub commits: u64,
    pub conflicts: u64,
    pub versions_reclaimed: u64,
    pub read_retries: u64,
    pub errors: u64,
    pub txn_commits: u64,
    pub txn_aborts: u64,
    pub txn_aborts_conflict: u64,
    pub txn_active: u64,
}

pub const LAYOUT_MAGIC: u64 = 0x5344504644504221;
pub const LAYOUT_VERSION: u32 = 2;

/// struct db_layout: the sizes pinned maps were created with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PinnedLayout {
    pub magic: u64,
    pub version: u32,
    pub max_keys: u32,
    pub small_chunks: u32,
    pub pages: u32,
    pub wal_buffer: u32,
    pub pad: u32,
    pub hash_seed: u64,
}

/// enum db_wal_kind: what a header fragment in the wal ringbuf carries.
pub const WAL_BEGIN: u32 = 1;
pub const WAL_PUT: u32 = 2;
pub const WAL_DEL: u32 = 3;
pub const WAL_COMMIT: u32 = 4;
pub const WAL_NUDGE: u32 = 5;

/// struct db_wal_frag: a header fragment of the wal ringbuf. The log
/// writer parses it from the bytes the ringbuf hands over, at these offsets.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WalFrag {
    pub kind: u32,
    pub key_len: u32,
    pub ts: u64,
    pub meta: Meta,
    pub key: [u8; KEY_SIZE],
}

/// Size of struct db_record, the value of one hash-map element.
pub const RECORD_SIZE: usize = 16 + MAX_VERSIONS * (8 + 8 + 8 + 32 + 4 + 4) + 8 + KEY_SIZE;
/// Offsets in struct db_record of the name's length and of the name.
pub const RECORD_KEY_LEN_OFF: usize = RECORD_SIZE - KEY_SIZE - 8;
pub const RECORD_NAME_OFF: usize = RECORD_SIZE - KEY_SIZE;
/// Keys one SCAN checks (DB_SCAN_BATCH), and where its flags start.
pub const SCAN_BATCH: usize = 2048;
pub const SCAN_FLAGS: usize = SCAN_BATCH * size_of::<HKey>();

const _: () = {
    assert!(size_of::<Meta>() == 32);
    assert!(offset_of!(Meta, len) == 20);
    assert!(RECORD_SIZE == 536);
    assert!(RECORD_KEY_LEN_OFF == 272 && RECORD_NAME_OFF == 280);
    assert!(SCAN_FLAGS + SCAN_BATCH <= VALUE_LIMIT);
    assert!(size_of::<Req>() == 608);
    assert!(offset_of!(Req, hkey) == 8);
    assert!(offset_of!(Req, count) == 40);
    assert!(offset_of!(Req, txn) == 52);
    assert!(offset_of!(Req, txn_id) == 56);
    assert!(offset_of!(Req, meta) == 64);
    assert!(offset_of!(Req, key) == 96);
    assert!(offset_of!(Req, key2) == 352);
    assert!(size_of::<Resp>() == 72);
    assert!(offset_of!(Resp, txn_id) == 64);
    assert!(offset_of!(Resp, ts) == 8);
    assert!(offset_of!(Resp, meta) == 16);
    assert!(offset_of!(Resp, count) == 48);
    assert!(size_of::<Cont>() == 16);
    assert!(offset_of!(Slot, resp) == 608);
    assert!(offset_of!(Slot, cont) == 680);
    assert!(offset_of!(Slot, scratch) == 696);
    assert!(offset_of!(Slot, data) == SLOT_HEADER);
    assert!(size_of::<Slot>() == SLOT_HEADER + VALUE_LIMIT);
    assert!(size_of::<Stats>() == 23 * 8);
    assert!(size_of::<PinnedLayout>() == 40);
    assert!(size_of::<WalFrag>() == 304);
    assert!(offset_of!(WalFrag, key_len) == 4);
    assert!(offset_of!(WalFrag, ts) == 8);
    assert!(offset_of!(WalFrag, meta) == 16);
    assert!(offset_of!(WalFrag, key) == 48);
};
