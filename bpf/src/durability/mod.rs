//! What makes a commit survive: the on-disk formats (`format`), the file a
//! log segment is written through (`segment_file`, with its fault hook), the
//! rebuilding of commits from the engine's ringbuf fragments (`assembler`),
//! the log writer that writes them into segments with group commit
//! (`writer`), the callbacks of commits nobody blocks for (`acks`),
//! checkpoints, streamed in bounded memory (`checkpoint`), and recovery
//! (`recovery`). It knows
//! the engine only through the ABI; replay and checkpoints reach the keys
//! through closures the `Db` passes in.

pub mod acks;
pub mod assembler;
pub mod checkpoint;
pub mod format;
pub mod recovery;
pub mod segment_file;
pub mod writer;
