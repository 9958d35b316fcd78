//! The key-value and transaction API over the engine's slots: `session`
//! (one slot, autocommit ops), `txn` (a transaction or snapshot entry) and
//! `room` (value memory promised to writers that commit later).

pub mod room;
pub mod session;
pub mod txn;
