//! memcached's UDP protocol over the root keys, without the socket: one
//! datagram in, its reply's datagrams out (`serve`). `proto` has the bytes
//! (frames, commands, replies); this file runs the commands on `Fs`, the
//! same core the mount uses, so every write keeps the mount exact, and a
//! write's reply waits until the write is durable (`Fs::durably`), without
//! holding the thread that served it.
//!
//! What the commands mean here (docs/SEMANTICS.md, "memcached over UDP"):
//! `get k` is one autocommit read; `get k1 k2 ...` reads every key from one
//! snapshot; `gets` adds the version's commit timestamp as cas unique; `set`
//! commits the whole value (flags and exptime must be 0); `delete` removes
//! the key. Keys beginning with '.' are refused: the root's control names
//! (`.stats`, `.txn`, `.snap`, `.ctl`) are not keys.

use bpfdb::{Error, Result};
use log::{debug, info, warn};

use crate::core::fs::Fs;
use crate::core::inodes::ROOT_INO;
use proto::Command;

pub mod proto;

#[cfg(test)]
mod tests;

/// Names of the threads that serve the protocol begin with this.
pub use crate::core::keyuse::MEMCACHED_THREAD_PREFIX as THREAD_PREFIX;

/// What `version` answers.
pub const VERSION: &str = concat!("bpfdb-", env!("CARGO_PKG_VERSION"));

/// Answers the request in `datagram`: `send` gets the datagrams of its
/// reply once every write the request made is durable (per the daemon's
/// sync mode), from whichever thread sees that. A datagram that carries no
/// whole request is dropped: `send` is not called. A reply may be no
/// datagram at all (noreply).
pub fn serve(fs: &Fs, datagram: &[u8], send: impl FnOnce(Vec<Vec<u8>>) + Send + 'static) {
    let (request_id, commands) = match proto::request(datagram) {
        Ok(r) => r,
        Err(dropped) => {
            // Debug only: a flood of junk must not fill the log.
            debug!("memcached: dropped {dropped}");
            return;
        }
    };
    fs.durably(
        |fs| Ok(run(fs, commands)),
        move |done: Result<Vec<u8>>| {
            let reply = done.unwrap_or_else(|e| {
                warn!("memcached request {request_id}: its writes are not durable: {e}");
                let mut out = Vec::new();
                proto::server_error(&mut out, &format!("not durable: {e}"));
                out
            });
            send(proto::datagrams(request_id, &reply));
        },
    );
}

/// Runs the commands of one request in order, up to `MAX_COMMANDS`, and
/// returns their replies. A refused command ends the request: what follows
/// it cannot be told apart from its data.
fn run(fs: &Fs, mut input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..proto::MAX_COMMANDS {
        if input.is_empty() {
            return out;
        }
        match proto::next_command(input) {
            Ok((command, rest)) => {
                execute(fs, command, &mut out);
                input = rest;
            }
            Err(refusal) => {
                debug!("memcached: refused a command: {refusal:?}");
                refusal.reply(&mut out);
                return out;
            }
        }
    }
    if !input.is_empty() {
        proto::client_error(
            &mut out,
            &format!("more than {} commands in one datagram", proto::MAX_COMMANDS),
        );
    }
    out
}

fn execute(fs: &Fs, command: Command<'_>, out: &mut Vec<u8>) {
    match command {
        Command::Get { keys, cas } => get(fs, &keys, cas, out),
        Command::Set {
            key,
            value,
            noreply,
        } => match fs.store_key(key, value) {
            Ok(_) => reply_unless(noreply, proto::STORED, out),
            Err(e) => engine_error(&e, out),
        },
        Command::Delete { key, noreply } => match fs.unlink(ROOT_INO, key) {
            Ok(()) => reply_unless(noreply, proto::DELETED, out),
            Err(e) if e.errno == libc::ENOENT => reply_unless(noreply, proto::NOT_FOUND, out),
            Err(e) => engine_error(&e, out),
        },
        Command::Version => proto::version(out, VERSION),
    }
}

fn reply_unless(noreply: bool, reply: &[u8], out: &mut Vec<u8>) {
    if !noreply {
        out.extend_from_slice(reply);
    }
}

/// `VALUE` lines for the keys present, then `END`. Reading stops once the
/// reply outgrows what UDP may carry, which is then a SERVER_ERROR.
fn get(fs: &Fs, keys: &[&[u8]], cas: bool, out: &mut Vec<u8>) {
    let start = out.len();
    let mut too_long = false;
    let read = fs.read_keys(keys, |key, value, st| {
        proto::value(out, key, value, cas.then_some(st.ts));
        too_long = out.len() - start > proto::MAX_REPLY_BYTES;
        !too_long
    });
    match read {
        Ok(()) if too_long => {
            out.truncate(start);
            proto::server_error(
                out,
                &format!(
                    "the values of these {} keys exceed the UDP reply limit of {} bytes; ask for fewer keys",
                    keys.len(),
                    proto::MAX_REPLY_BYTES
                ),
            );
        }
        Ok(()) => out.extend_from_slice(proto::END),
        Err(e) => {
            out.truncate(start);
            engine_error(&e, out);
        }
    }
}

/// An error of the engine or the log: logged, and replied as SERVER_ERROR
/// with its message and errno.
fn engine_error(e: &Error, out: &mut Vec<u8>) {
    match e.errno {
        libc::EBUSY | libc::EFBIG | libc::ENOSPC | libc::EAGAIN => info!("memcached: {e}"),
        _ => warn!("memcached: {e}"),
    }
    proto::server_error(out, &e.to_string());
}
