//! The interface to the kernel: the Rust mirror of `bpfdb.h` (`abi`), the
//! loader that sizes, loads and attaches the engine (`engine`), the trigger
//! function its uprobe sits on (`trigger`), and the bpffs pins a hot
//! restart reuses (`pin`). Nothing here knows keys, logs or transactions.

pub mod abi;
pub mod engine;
pub mod layout;
pub mod pin;
pub mod pools;
pub mod trigger;
