//! `.ctl` files. The one at the root takes daemon commands (`checkpoint`);
//! the one in each transaction directory takes `commit` and `abort` and
//! reads as the transaction's state.
//!
//! A command runs when its write(2) arrives, so the write returns its error:
//! `echo commit > .ctl` then fails visibly, where an error of the close that
//! follows would be ignored by the shell. A write may carry several
//! commands, one per line, and a line's trailing newline is optional.

use bpfdb::{Error, Result};
use log::info;

use super::{Attr, Fs, Kind, Opened, restate, show};
use crate::core::inodes::ROOT_SCOPE;
use crate::core::txns::Open;

use super::files::Handle;

/// What reading the root `.ctl` returns.
pub const ROOT_USAGE: &str = "\
bpfdb control file: write one of these commands to it
  checkpoint   write a checkpoint of every key now and truncate the log
";

/// Longest write a `.ctl` accepts; commands are single words.
const MAX_COMMAND_BYTES: usize = 4096;

pub(super) struct Ctl {
    pub(super) scope: u64,
    /// What reads return: the usage or the state, rendered at open.
    text: Vec<u8>,
    readable: bool,
}

impl Ctl {
    pub(super) fn readable_text(&self) -> Option<&[u8]> {
        self.readable.then_some(&self.text[..])
    }
}

impl Fs {
    /// Opens the root `.ctl` (`scope` 0) or a transaction's.
    pub(super) fn open_ctl(&self, scope: u64, flags: i32) -> Result<Opened> {
        let text = if scope == ROOT_SCOPE {
            ROOT_USAGE.to_string()
        } else {
            self.ctl_txn("open", scope)?.state_text()
        };
        let fh = self.handles.insert(Handle::Ctl(Ctl {
            scope,
            text: text.into_bytes(),
            readable: flags & libc::O_ACCMODE != libc::O_WRONLY,
        }))?;
        Ok(Opened {
            fh,
            direct_io: true,
        })
    }

    /// Runs the commands of one write; the first failure is the write's.
    pub(super) fn ctl_write(&self, ctl: &Ctl, data: &[u8]) -> Result<u32> {
        let name = if ctl.scope == ROOT_SCOPE {
            show(b".ctl").to_string()
        } else {
            let path = format!("{}/.ctl", self.ctl_txn("write", ctl.scope)?.path());
            show(path.as_bytes()).to_string()
        };
        let text = match std::str::from_utf8(data) {
            Ok(t) if data.len() <= MAX_COMMAND_BYTES => t,
            _ => {
                return Err(Error::new(
                    libc::EINVAL,
                    format!(
                        "write {name}: not a command ({} bytes; commands are short words)",
                        data.len()
                    ),
                ));
            }
        };
        for word in text.lines().map(str::trim).filter(|w| !w.is_empty()) {
            self.ctl_command(ctl.scope, &name, word)?;
        }
        Ok(u32::try_from(data.len()).unwrap_or(u32::MAX))
    }

    fn ctl_command(&self, scope: u64, name: &str, word: &str) -> Result<()> {
        if scope == ROOT_SCOPE {
            return match word {
                // The engine logs the checkpoint it took.
                "checkpoint" => {
                    self.db.checkpoint().map(drop).map_err(|e| {
                        Error::new(e.errno, format!("{word} (write {name}): {}", e.msg))
                    })
                }
                _ => Err(unknown(name, word, "checkpoint")),
            };
        }
        let open = self.ctl_txn("write", scope)?;
        let what = || format!("{word} {}", show(open.path().as_bytes()));
        match word {
            "commit" => {
                let touched = open.take_touched();
                let keys: Vec<&[u8]> = touched.iter().map(Vec::as_slice).collect();
                let _quiet = self.root_commit(&keys);
                let ts = open.txn.commit().map_err(|e| restate(e, what))?;
                // The root directory's times move with any commit that
                // touched keys (also one that only rewrote existing ones).
                if !keys.is_empty() {
                    self.root_dir_changed();
                }
                for key in keys {
                    self.root_changed(key);
                }
                info!("{}: committed at ts {ts}", what());
                Ok(())
            }
            "abort" => {
                open.txn.abort().map_err(|e| restate(e, what))?;
                info!("{}: aborted by request", what());
                Ok(())
            }
            _ => Err(unknown(name, word, "commit, abort")),
        }
    }

    fn ctl_txn(&self, op: &str, scope: u64) -> Result<std::sync::Arc<Open>> {
        self.txns.get(scope).ok_or_else(|| {
            Error::new(
                libc::ENOENT,
                format!("{op} .ctl: its transaction directory was removed (rmdir)"),
            )
        })
    }

    pub(super) fn txn_ctl_attr(&self, ino: u64, open: &Open) -> Attr {
        Attr {
            ino,
            size: open.state_text().len() as u64,
            mode: 0o600,
            uid: self.owner.uid,
            gid: self.owner.gid,
            mtime_ns: open.started_ns,
            ctime_ns: open.started_ns,
            kind: Kind::File,
            nlink: 1,
            rdev: 0,
            cacheable: false,
        }
    }
}

/// Most characters of an unknown command the error quotes.
const MAX_SHOWN_CHARS: usize = 64;

fn unknown(name: &str, word: &str, known: &str) -> Error {
    let shown: String = word.chars().take(MAX_SHOWN_CHARS).collect();
    Error::new(
        libc::EINVAL,
        format!("write {name}: unknown command {shown:?} (known: {known})"),
    )
}
