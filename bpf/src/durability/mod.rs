//! What makes a commit survive: the on-disk formats (`format`), the file a
//! log segment is written through (`segment_file`, with its fault hook), the
//! log writer that drains the engine's ringbuf into segments with group
//! commit (`writer`), and recovery and checkpoints (`recovery`). It knows
//! the engine only through the ABI; replay and checkpoints reach the keys
//! through closures the `Db` passes in.

pub mod format;
pub mod recovery;
pub mod segment_file;
pub mod writer;
