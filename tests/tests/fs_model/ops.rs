//! Operations: what each is, its script, and what the model says it gives (`apply`).

use std::collections::BTreeSet;

use bpfdb_tests::msg;

use crate::model::{
    EKey, EVal, Effects, Kv, Miss, add_entry, is_empty_dir, lookup, miss, read_outcome,
    remove_below, remove_entry, split, update_names, walk,
};
use crate::{
    DIR_MODE, EISDIR, ENOTDIR, ENOTEMPTY, FILE_MODE, INTO_ITSELF, Name, OVER_DIR, OVER_FILE, Path,
    SAME_FILE, SH_NO_DIR, Value,
};

/// One operation, in any tree (`P` is `""` at the root, `.txn/NAME/` in a transaction).
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Write(Path, Value),
    Append(Path, Value),
    Truncate {
        path: Path,
        len: usize,
        no_create: bool,
    },
    Touch(Path),
    Chmod(Path, u32),
    Rename(Path, Path),
    Remove(Path),
    /// `rm -r` (at the root, with neither a transaction nor a snapshot open).
    RemoveTree(Path),
    Read(Path),
    Mkdir(Path),
    Rmdir(Path),
    /// A write or a mkdir of a name over the limit of its directory.
    TooLong {
        path: Path,
        mkdir: bool,
    },
}

/// What the model says an operation gives.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Outcome {
    Ok,
    /// Success, printing this value.
    Value(Value),
    /// Failure with this text in stderr.
    Fails(&'static str),
    /// Failure with one of these texts in stderr.
    FailsAny(Vec<&'static str>),
    /// Either success (the operation happened) or that failure (nothing happened).
    OkOrFails(&'static str),
}

impl Op {
    pub(crate) fn paths(&self) -> Vec<&Path> {
        match self {
            Op::Write(p, _)
            | Op::Append(p, _)
            | Op::Truncate { path: p, .. }
            | Op::Touch(p)
            | Op::Chmod(p, _)
            | Op::Remove(p)
            | Op::RemoveTree(p)
            | Op::Read(p)
            | Op::Mkdir(p)
            | Op::Rmdir(p) => vec![p],
            Op::Rename(a, b) => vec![a, b],
            Op::TooLong { .. } => vec![],
        }
    }

    /// A name for the step counters.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Op::Write(..) => "write",
            Op::Append(..) => "append",
            Op::Truncate { .. } => "truncate",
            Op::Touch(_) => "touch",
            Op::Chmod(..) => "chmod",
            Op::Rename(..) => "mv",
            Op::Remove(_) => "rm",
            Op::RemoveTree(_) => "rm -r",
            Op::Read(_) => "cat",
            Op::Mkdir(_) => "mkdir",
            Op::Rmdir(_) => "rmdir",
            Op::TooLong { .. } => "too long",
        }
    }

    /// The script, its environment (`K`, `A`, `B` name paths; values go through `$T/val`).
    pub(crate) fn script(&self) -> (String, Vec<(&'static str, Vec<u8>)>) {
        let k = |p: &Path| vec![("K", join(p))];
        match self {
            Op::Write(p, _)
            | Op::TooLong {
                path: p,
                mkdir: false,
            } => ("umask 022; cat \"$T/val\" > \"$P$K\"".into(), k(p)),
            Op::Append(p, _) => ("umask 022; cat \"$T/val\" >> \"$P$K\"".into(), k(p)),
            Op::Truncate {
                path,
                len,
                no_create,
            } => (
                format!(
                    "umask 022; truncate {}-s {len} -- \"$P$K\"",
                    if *no_create { "-c " } else { "" }
                ),
                k(path),
            ),
            Op::Touch(p) => ("umask 022; touch -- \"$P$K\"".into(), k(p)),
            Op::Chmod(p, m) => (format!("chmod {m:o} -- \"$P$K\""), k(p)),
            Op::Rename(a, b) => (
                "mv -T -- \"$P$A\" \"$P$B\"".into(),
                vec![("A", join(a)), ("B", join(b))],
            ),
            Op::Remove(p) => ("rm -- \"$P$K\"".into(), k(p)),
            Op::RemoveTree(p) => ("rm -r -- \"$P$K\"".into(), k(p)),
            Op::Read(p) => ("cat -- \"$P$K\"".into(), k(p)),
            Op::Mkdir(p)
            | Op::TooLong {
                path: p,
                mkdir: true,
            } => ("umask 022; mkdir -- \"$P$K\"".into(), k(p)),
            Op::Rmdir(p) => ("rmdir -- \"$P$K\"".into(), k(p)),
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Op::Write(p, v) => format!("write {} ({} B)", show_path(p), v.len()),
            Op::Append(p, v) => format!("append {} ({} B)", show_path(p), v.len()),
            Op::Truncate {
                path,
                len,
                no_create,
            } => format!(
                "truncate{} {} to {len}",
                if *no_create { " -c" } else { "" },
                show_path(path)
            ),
            Op::Touch(p) => format!("touch {}", show_path(p)),
            Op::Chmod(p, m) => format!("chmod {m:o} {}", show_path(p)),
            Op::Rename(a, b) => format!("mv -T {} {}", show_path(a), show_path(b)),
            Op::Remove(p) => format!("rm {}", show_path(p)),
            Op::RemoveTree(p) => format!("rm -r {}", show_path(p)),
            Op::Read(p) => format!("cat {}", show_path(p)),
            Op::Mkdir(p) => format!("mkdir {}", show_path(p)),
            Op::Rmdir(p) => format!("rmdir {}", show_path(p)),
            Op::TooLong { path, mkdir } => format!(
                "{} {} ({} B name)",
                if *mkdir { "mkdir" } else { "write" },
                show_path(path),
                path.last().map_or(0, Vec::len)
            ),
        }
    }
}

/// A path as the shell names it.
pub(crate) fn join(p: &[Name]) -> Vec<u8> {
    p.join(&b'/')
}

/// A name for messages: short ones whole, long ones by their head and length.
pub(crate) fn show(name: &[u8]) -> String {
    if name.len() <= 24 {
        String::from_utf8_lossy(name).into_owned()
    } else {
        format!(
            "{}..({} B)",
            String::from_utf8_lossy(&name[..16]),
            name.len()
        )
    }
}

pub(crate) fn show_path(p: &[Name]) -> String {
    let names: Vec<String> = p.iter().map(|n| show(n)).collect();
    format!("{:?}", names.join("/"))
}

/// An outcome for messages (values by size and head).
pub(crate) fn brief(o: &Outcome) -> String {
    match o {
        Outcome::Ok => "success".into(),
        Outcome::Fails(m) => format!("failure {m:?}"),
        Outcome::FailsAny(ms) => format!("failure {ms:?}"),
        Outcome::OkOrFails(m) => format!("success or failure {m:?}"),
        Outcome::Value(v) => format!(
            "{} bytes {:?}",
            v.len(),
            String::from_utf8_lossy(&v[..v.len().min(24)])
        ),
    }
}

/// Applies `op` to the model (only when it succeeds); returns what the mount must answer, and
/// records in `fx` the keys it reads and writes. `ids` numbers new directories; `in_txn` says
/// whether it runs in a transaction (where `chmod` is `EPERM`).
pub(crate) fn apply(
    kv: &mut impl Kv,
    op: &Op,
    ids: &mut u64,
    fx: &mut Effects,
    in_txn: bool,
) -> Outcome {
    match op {
        Op::Write(p, v) | Op::Append(p, v) => {
            let (dirs, name) = split(p);
            let Ok(dir) = walk(kv, dirs, fx) else {
                return Outcome::Fails(SH_NO_DIR);
            };
            match lookup(kv, dir, name, fx).cloned() {
                Some(EVal::Dir(_)) => Outcome::Fails(EISDIR),
                Some(EVal::File { data, mode }) => {
                    let new = match op {
                        Op::Append(..) => [&data[..], v].concat(),
                        _ => v.clone(),
                    };
                    fx.no_change = new == data;
                    fx.daemon = true;
                    kv.set(EKey::Ent(dir, name.clone()), EVal::File { data: new, mode });
                    fx.wrote.push(EKey::Ent(dir, name.clone()));
                    Outcome::Ok
                }
                None => {
                    fx.daemon = true;
                    let file = EVal::File {
                        data: v.clone(),
                        mode: FILE_MODE,
                    };
                    add_entry(kv, dir, name, file, fx);
                    Outcome::Ok
                }
                Some(other) => panic!("model: entry {other:?}"),
            }
        }
        Op::Truncate {
            path,
            len,
            no_create,
        } => {
            let (dirs, name) = split(path);
            let dir = match walk(kv, dirs, fx) {
                Ok(d) => d,
                // truncate -c ignores ENOENT, of the name or of a directory above it.
                Err(Miss::NoEnt) if *no_create => return Outcome::Ok,
                Err(m) => return miss(m),
            };
            match lookup(kv, dir, name, fx).cloned() {
                Some(EVal::Dir(_)) => Outcome::Fails(EISDIR),
                Some(EVal::File { mut data, mode }) => {
                    fx.no_change = data.len() == *len;
                    fx.daemon = true;
                    data.resize(*len, 0);
                    kv.set(EKey::Ent(dir, name.clone()), EVal::File { data, mode });
                    fx.wrote.push(EKey::Ent(dir, name.clone()));
                    Outcome::Ok
                }
                None if *no_create => Outcome::Ok,
                None => {
                    fx.daemon = true;
                    let file = EVal::File {
                        data: vec![0; *len],
                        mode: FILE_MODE,
                    };
                    add_entry(kv, dir, name, file, fx);
                    Outcome::Ok
                }
                Some(other) => panic!("model: entry {other:?}"),
            }
        }
        Op::Touch(p) => {
            let (dirs, name) = split(p);
            let dir = match walk(kv, dirs, fx) {
                Ok(d) => d,
                Err(m) => return miss(m),
            };
            fx.daemon = true;
            match lookup(kv, dir, name, fx).cloned() {
                // New times: the record's metadata, or the key's.
                Some(EVal::Dir(id)) => fx.wrote.push(EKey::Rec(id)),
                Some(_) => fx.wrote.push(EKey::Ent(dir, name.clone())),
                None => {
                    let file = EVal::File {
                        data: Vec::new(),
                        mode: FILE_MODE,
                    };
                    add_entry(kv, dir, name, file, fx);
                }
            }
            Outcome::Ok
        }
        Op::Chmod(p, new) => {
            let (dirs, name) = split(p);
            let dir = match walk(kv, dirs, fx) {
                Ok(d) => d,
                Err(m) => return miss(m),
            };
            match lookup(kv, dir, name, fx).cloned() {
                None => Outcome::Fails(msg::ENOENT),
                // Modes and owners change at the root only.
                Some(_) if in_txn => Outcome::Fails(msg::EPERM),
                Some(EVal::Dir(id)) => {
                    let Some(EVal::Rec {
                        parent,
                        names,
                        mode,
                    }) = kv.get(&EKey::Rec(id)).cloned()
                    else {
                        panic!("model: no record of directory {id}");
                    };
                    fx.daemon = true;
                    fx.no_change = mode == *new;
                    kv.set(
                        EKey::Rec(id),
                        EVal::Rec {
                            parent,
                            names,
                            mode: *new,
                        },
                    );
                    fx.wrote.push(EKey::Rec(id));
                    Outcome::Ok
                }
                Some(EVal::File { data, mode }) => {
                    fx.daemon = true;
                    fx.no_change = mode == *new;
                    kv.set(
                        EKey::Ent(dir, name.clone()),
                        EVal::File { data, mode: *new },
                    );
                    fx.wrote.push(EKey::Ent(dir, name.clone()));
                    Outcome::Ok
                }
                Some(other) => panic!("model: entry {other:?}"),
            }
        }
        Op::Rename(a, b) => rename(kv, a, b, fx),
        Op::Remove(p) => {
            let (dirs, name) = split(p);
            let dir = match walk(kv, dirs, fx) {
                Ok(d) => d,
                Err(m) => return miss(m),
            };
            match lookup(kv, dir, name, fx).map(|v| matches!(v, EVal::Dir(_))) {
                None => Outcome::Fails(msg::ENOENT),
                Some(true) => Outcome::Fails(EISDIR),
                Some(false) => {
                    fx.daemon = true;
                    remove_entry(kv, dir, name, false, fx);
                    Outcome::Ok
                }
            }
        }
        Op::RemoveTree(p) => {
            let (dirs, name) = split(p);
            let dir = match walk(kv, dirs, fx) {
                Ok(d) => d,
                Err(m) => return miss(m),
            };
            fx.daemon = true;
            match lookup(kv, dir, name, fx).cloned() {
                None => Outcome::Fails(msg::ENOENT),
                Some(EVal::Dir(id)) => {
                    remove_below(kv, id);
                    remove_entry(kv, dir, name, true, fx);
                    Outcome::Ok
                }
                Some(_) => {
                    remove_entry(kv, dir, name, false, fx);
                    Outcome::Ok
                }
            }
        }
        Op::Read(p) => read_outcome(kv, p, fx),
        Op::Mkdir(p) => {
            let (dirs, name) = split(p);
            let dir = match walk(kv, dirs, fx) {
                Ok(d) => d,
                Err(m) => return miss(m),
            };
            if lookup(kv, dir, name, fx).is_some() {
                return Outcome::Fails(msg::EEXIST);
            }
            fx.daemon = true;
            *ids += 1;
            let id = *ids;
            kv.set(EKey::NextId, EVal::Counter);
            fx.wrote.push(EKey::NextId);
            add_entry(kv, dir, name, EVal::Dir(id), fx);
            kv.set(
                EKey::Rec(id),
                EVal::Rec {
                    parent: dir,
                    names: BTreeSet::new(),
                    mode: DIR_MODE,
                },
            );
            fx.wrote.push(EKey::Rec(id));
            Outcome::Ok
        }
        Op::Rmdir(p) => {
            let (dirs, name) = split(p);
            let dir = match walk(kv, dirs, fx) {
                Ok(d) => d,
                Err(m) => return miss(m),
            };
            match lookup(kv, dir, name, fx).cloned() {
                None => Outcome::Fails(msg::ENOENT),
                Some(EVal::Dir(id)) if !is_empty_dir(kv, id) => {
                    fx.daemon = true;
                    fx.read.extend([
                        if dir == 0 {
                            EKey::RootDirs
                        } else {
                            EKey::Rec(dir)
                        },
                        EKey::Ent(dir, name.clone()),
                        EKey::Rec(id),
                    ]);
                    Outcome::Fails(ENOTEMPTY)
                }
                Some(EVal::Dir(id)) => {
                    fx.daemon = true;
                    remove_entry(kv, dir, name, true, fx);
                    kv.remove(&EKey::Rec(id));
                    fx.wrote.push(EKey::Rec(id));
                    Outcome::Ok
                }
                Some(_) => Outcome::Fails(ENOTDIR),
            }
        }
        Op::TooLong { path, mkdir } => match walk(kv, split(path).0, fx) {
            Err(_) if !mkdir => Outcome::Fails(SH_NO_DIR),
            Err(m) => miss(m),
            Ok(_) => Outcome::Fails(msg::ENAMETOOLONG),
        },
    }
}

/// `mv -T a b`: the checks in the order mv and the kernel make them, then the move of one
/// entry (a directory with everything below it).
fn rename(kv: &mut impl Kv, a: &Path, b: &Path, fx: &mut Effects) -> Outcome {
    let (adirs, an) = split(a);
    let pa = match walk(kv, adirs, fx) {
        Ok(d) => d,
        Err(m) => return miss(m),
    };
    let Some(moved) = lookup(kv, pa, an, fx).cloned() else {
        return Outcome::Fails(msg::ENOENT);
    };
    let (bdirs, bn) = split(b);
    let pb = match walk(kv, bdirs, fx) {
        Ok(d) => d,
        Err(m) => return miss(m),
    };
    if a == b {
        return Outcome::Fails(SAME_FILE);
    }
    let target = lookup(kv, pb, bn, fx).cloned();
    let moved_dir = match moved {
        EVal::Dir(id) => Some(id),
        _ => None,
    };
    match (&moved_dir, &target) {
        (Some(_), Some(EVal::File { .. })) => return Outcome::Fails(OVER_FILE),
        (None, Some(EVal::Dir(_))) => return Outcome::Fails(OVER_DIR),
        _ => {}
    }
    if moved_dir.is_some() && b.len() > a.len() && b.starts_with(a) {
        return Outcome::Fails(INTO_ITSELF);
    }
    let replaced = match target {
        Some(EVal::Dir(t)) => Some(t),
        _ => None,
    };
    if let Some(t) = replaced
        && !is_empty_dir(kv, t)
    {
        // Onto a directory above the source: the kernel's answer; else the daemon's.
        fx.daemon = !(a.len() > b.len() && a.starts_with(b));
        fx.read.extend([
            EKey::Ent(pa, an.clone()),
            EKey::Ent(pb, bn.clone()),
            EKey::Rec(t),
        ]);
        return Outcome::FailsAny(vec![ENOTEMPTY, msg::EEXIST]);
    }
    fx.daemon = true;
    if moved_dir.is_some() && pa != pb {
        // The cycle check reads the records from the target's directory up.
        let mut up = Effects::default();
        let _ = walk(kv, bdirs, &mut up);
        fx.read
            .extend(up.looked.into_iter().filter(|k| matches!(k, EKey::Rec(_))));
    }
    kv.remove(&EKey::Ent(pa, an.clone()));
    fx.wrote.push(EKey::Ent(pa, an.clone()));
    kv.set(EKey::Ent(pb, bn.clone()), moved);
    fx.wrote.push(EKey::Ent(pb, bn.clone()));
    if let Some(t) = replaced {
        kv.remove(&EKey::Rec(t));
        fx.wrote.push(EKey::Rec(t));
    }
    // The root lists its subdirectories only.
    let lists = |dir: u64| dir != 0 || moved_dir.is_some();
    if lists(pa) {
        update_names(kv, pa, fx, |n| {
            n.remove(an);
        });
    }
    if lists(pb) {
        update_names(kv, pb, fx, |n| {
            n.insert(bn.clone());
        });
    }
    if let Some(id) = moved_dir
        && pa != pb
    {
        let Some(EVal::Rec { names, mode, .. }) = kv.get(&EKey::Rec(id)).cloned() else {
            panic!("model: no record of directory {id}");
        };
        kv.set(
            EKey::Rec(id),
            EVal::Rec {
                parent: pb,
                names,
                mode,
            },
        );
        fx.wrote.push(EKey::Rec(id));
    }
    Outcome::Ok
}
