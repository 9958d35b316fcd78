//! How a tree of directories is laid out in the engine's flat key space
//! (pure: names and bytes; the operations are in `dirs`).
//!
//! A directory has a number (its id, from a counter) and a record of its
//! own, `\x01<id in hex>/`, whose metadata is the directory's (mode,
//! owners, times) and whose value is its parent's id and its entries,
//! sorted by name. An entry `name` of directory `id` is the key
//! `\x01<id>/name`; at the root (id 0) it is `name` itself, so root keys
//! are what they always were, for the mount, memcached and eBPF clients.
//! A subdirectory's entry holds its id (8 bytes) with mode `S_IFDIR`:
//! renaming a directory moves that one entry, whatever is below it.
//!
//! Every internal key holds a '/', which no file name has, so none can
//! collide with a root key; each begins with `\x01`, which memcached keys
//! never hold. The root has no record: its entries that are not regular
//! files (subdirectories, symbolic links, ...) are listed in
//! `ROOT_DIRS_KEY`, so a listing of the root (a scan of every key) can
//! tell each entry's type without reading each key.

use bpfdb::{Error, Result, abi};

/// First byte of every internal key.
const TAG: u8 = 0x01;

/// The root's id: its entries are plain keys.
pub const ROOT_DIR: u64 = 0;

/// Longest entry name in a subdirectory: a key holds at most
/// `abi::KEY_MAX` bytes, and the tag, up to 16 hex digits and the '/' come
/// first. At the root a name may be `abi::KEY_MAX` bytes long.
pub const SUB_NAME_MAX: usize = abi::KEY_MAX - 18;

/// Most entries in one subdirectory: its list is one value, rewritten by
/// every create and removal in it, so this bounds what each of those
/// copies and logs (8192 names of 20 bytes: 180 KiB).
pub const DIR_MAX_ENTRIES: usize = 8192;

/// Most directories an ancestor walk (the cycle check of a directory
/// rename) visits before it gives up with ELOOP.
pub const DIR_MAX_DEPTH: usize = 4096;

/// The next directory id (8 bytes), read and written by every mkdir in
/// the same transaction, so two never get the same id.
pub const NEXT_ID_KEY: &[u8] = b"\x01ids/";

/// The root's entries that are not regular files: its subdirectories,
/// symbolic links, FIFOs, device nodes and sockets (an entry list without
/// a parent header), so a listing of the root needs no look at each key.
pub const ROOT_DIRS_KEY: &[u8] = b"\x010/";

/// What a listed entry is: a key holding a file (its type bits: a
/// regular file, a symbolic link, a FIFO, a device node or a socket), or a
/// subdirectory and its id (so a listing gives the inode a lookup will).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File(u32),
    Dir(u64),
}

/// A regular file's entry.
pub const REGULAR: EntryKind = EntryKind::File(libc::S_IFREG);

/// Type bits by their byte in an entry list (0: a directory's, 2).
const TYPES: [u32; 8] = [
    0,
    libc::S_IFREG,
    libc::S_IFDIR,
    libc::S_IFLNK,
    libc::S_IFIFO,
    libc::S_IFCHR,
    libc::S_IFBLK,
    libc::S_IFSOCK,
];

impl EntryKind {
    /// The entry for a key of `mode` (a directory's entry needs its id).
    pub fn of_file(mode: u32) -> EntryKind {
        match mode & libc::S_IFMT {
            0 => REGULAR,
            t => EntryKind::File(t),
        }
    }

    /// Whether the root's list names it: every entry but a regular file.
    pub fn listed_at_root(self) -> bool {
        self != REGULAR
    }

    fn byte(self) -> u8 {
        let t = match self {
            EntryKind::File(t) => t,
            EntryKind::Dir(_) => libc::S_IFDIR,
        };
        TYPES.iter().position(|&x| x == t).unwrap_or(1) as u8
    }
}

/// The key of entry `name` in directory `dir`.
pub fn entry_key(dir: u64, name: &[u8]) -> Vec<u8> {
    if dir == ROOT_DIR {
        return name.to_vec();
    }
    let mut k = format!("\x01{dir:x}/").into_bytes();
    k.extend_from_slice(name);
    k
}

/// The record of directory `dir` (not the root).
pub fn dir_key(dir: u64) -> Vec<u8> {
    entry_key(dir, b"")
}

/// The directory whose record `key` is, if it is one.
pub fn dir_of_record(key: &[u8]) -> Option<u64> {
    let (dir, name) = split(key)?;
    (name.is_empty() && dir != ROOT_DIR).then_some(dir)
}

/// `(directory, name)` of an entry key below the root, or of a record
/// (empty name); None for a root key or another internal key.
pub fn split(key: &[u8]) -> Option<(u64, &[u8])> {
    let rest = key.strip_prefix(&[TAG])?;
    let slash = rest.iter().position(|&b| b == b'/')?;
    let hex = std::str::from_utf8(&rest[..slash]).ok()?;
    if hex.is_empty() || hex.len() > 16 || hex.starts_with('0') && hex.len() > 1 {
        return None;
    }
    let dir = u64::from_str_radix(hex, 16).ok()?;
    Some((dir, &rest[slash + 1..]))
}

/// Keys the root's listing never shows: every internal key has a '/'.
pub fn is_internal(key: &[u8]) -> bool {
    !bpfdb::is_top_level(key)
}

/// A directory id as its entry's value stores it.
pub fn id_value(id: u64) -> [u8; 8] {
    id.to_le_bytes()
}

/// The id an entry's value (or the counter) holds.
pub fn parse_id(value: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = value
        .try_into()
        .map_err(|_| Error::new(libc::EIO, format!("directory id of {} bytes", value.len())))?;
    Ok(u64::from_le_bytes(bytes))
}

/// A directory's entries, sorted by name, and its parent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entries {
    pub parent: u64,
    items: Vec<(Vec<u8>, EntryKind)>,
}

impl Entries {
    pub fn new(parent: u64) -> Entries {
        Entries {
            parent,
            items: Vec::new(),
        }
    }

    /// A directory record's value: the parent (8 bytes), then per entry
    /// its kind (1 byte: 1 a regular file, 2 a directory, 3 a symbolic
    /// link, 4 a FIFO, 5 and 6 a character and a block device, 7 a
    /// socket), name length (1 byte), name, and for a directory its id (8
    /// bytes).
    pub fn decode(value: &[u8]) -> Result<Entries> {
        let bad = |why: &str| Error::new(libc::EIO, format!("directory record: {why}"));
        let (head, mut rest) = value.split_at_checked(8).ok_or_else(|| bad("no parent"))?;
        let mut e = Entries::new(parse_id(head)?);
        e.items = decode_items(&mut rest).ok_or_else(|| bad("malformed entry"))?;
        Ok(e)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = id_value(self.parent).to_vec();
        encode_items(&self.items, &mut v);
        v
    }

    /// The root's list of its entries that are not regular files (see
    /// `ROOT_DIRS_KEY`): entries without a parent.
    pub fn decode_root(value: &[u8]) -> Result<Entries> {
        let mut rest = value;
        let items = decode_items(&mut rest)
            .ok_or_else(|| Error::new(libc::EIO, "root directory list: malformed entry"))?;
        Ok(Entries {
            parent: ROOT_DIR,
            items,
        })
    }

    pub fn encode_root(&self) -> Vec<u8> {
        let mut v = Vec::new();
        encode_items(&self.items, &mut v);
        v
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn subdirs(&self) -> usize {
        self.items
            .iter()
            .filter(|(_, k)| matches!(k, EntryKind::Dir(_)))
            .count()
    }

    pub fn get(&self, name: &[u8]) -> Option<EntryKind> {
        let i = self.find(name).ok()?;
        Some(self.items[i].1)
    }

    /// Adds or replaces `name`; ENOSPC when a new name would pass
    /// `DIR_MAX_ENTRIES`.
    pub fn insert(&mut self, name: &[u8], kind: EntryKind) -> Result<()> {
        match self.find(name) {
            Ok(i) => self.items[i].1 = kind,
            Err(_) if self.items.len() >= DIR_MAX_ENTRIES => {
                return Err(Error::new(
                    libc::ENOSPC,
                    format!("the directory holds {DIR_MAX_ENTRIES} entries, its limit"),
                ));
            }
            Err(i) => self.items.insert(i, (name.to_vec(), kind)),
        }
        Ok(())
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<EntryKind> {
        let i = self.find(name).ok()?;
        Some(self.items.remove(i).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], EntryKind)> {
        self.items.iter().map(|(n, k)| (&n[..], *k))
    }

    fn find(&self, name: &[u8]) -> std::result::Result<usize, usize> {
        self.items.binary_search_by(|(n, _)| n[..].cmp(name))
    }
}

fn encode_items(items: &[(Vec<u8>, EntryKind)], v: &mut Vec<u8>) {
    for (name, kind) in items {
        v.push(kind.byte());
        // Names are at most abi::KEY_MAX (255) bytes.
        v.push(name.len() as u8);
        v.extend_from_slice(name);
        if let EntryKind::Dir(id) = kind {
            v.extend_from_slice(&id_value(*id));
        }
    }
}

fn decode_items(rest: &mut &[u8]) -> Option<Vec<(Vec<u8>, EntryKind)>> {
    let mut items = Vec::new();
    while !rest.is_empty() {
        if items.len() >= DIR_MAX_ENTRIES {
            return None;
        }
        let (&[kind, len], tail) = rest.split_first_chunk::<2>()?;
        let (name, mut tail) = tail.split_at_checked(len as usize)?;
        let kind = match TYPES.get(kind as usize) {
            Some(&libc::S_IFDIR) => {
                let (id, after) = tail.split_first_chunk::<8>()?;
                tail = after;
                EntryKind::Dir(u64::from_le_bytes(*id))
            }
            Some(&0) | None => return None,
            Some(&t) => EntryKind::File(t),
        };
        items.push((name.to_vec(), kind));
        *rest = tail;
    }
    Some(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_the_root_are_names_and_internal_keys_never_are() {
        assert_eq!(entry_key(ROOT_DIR, b"k"), b"k");
        assert_eq!(entry_key(0x2a, b"k"), b"\x012a/k");
        assert_eq!(dir_key(0x2a), b"\x012a/");
        assert_eq!(split(b"\x012a/k"), Some((0x2a, &b"k"[..])));
        assert_eq!(dir_of_record(b"\x012a/"), Some(0x2a));
        assert_eq!(dir_of_record(b"\x012a/k"), None);
        assert_eq!(dir_of_record(ROOT_DIRS_KEY), None);
        assert_eq!(split(NEXT_ID_KEY), None);
        assert_eq!(split(b"k"), None);
        assert_eq!(split(b"\x0102a/k"), None, "one spelling per id");
        for k in [NEXT_ID_KEY, ROOT_DIRS_KEY, &dir_key(u64::MAX)] {
            assert!(is_internal(k));
        }
        assert_eq!(
            entry_key(u64::MAX, &[b'n'; SUB_NAME_MAX]).len(),
            abi::KEY_MAX
        );
    }

    #[test]
    fn entries_stay_sorted_and_round_trip() {
        let mut e = Entries::new(7);
        for n in [&b"b"[..], b"a", b"c", b"a"] {
            e.insert(n, REGULAR).unwrap();
        }
        e.insert(b"l", EntryKind::File(libc::S_IFLNK)).unwrap();
        assert_eq!(e.remove(b"l"), Some(EntryKind::File(libc::S_IFLNK)));
        e.insert(b"d", EntryKind::Dir(9)).unwrap();
        assert_eq!(e.remove(b"c"), Some(REGULAR));
        let names: Vec<&[u8]> = e.iter().map(|(n, _)| n).collect();
        assert_eq!(names, [&b"a"[..], b"b", b"d"]);
        assert_eq!(e.subdirs(), 1);
        assert_eq!(Entries::decode(&e.encode()).unwrap(), e);
        let root = Entries::decode_root(&e.encode_root()).unwrap();
        assert_eq!(root.iter().count(), 3);
        assert!(Entries::decode(&[1, 2, 3]).is_err());
        assert!(Entries::decode(&[0, 0, 0, 0, 0, 0, 0, 0, 9, 1, b'x']).is_err());
    }

    #[test]
    fn a_full_directory_refuses_a_new_name_but_not_a_replacement() {
        let mut e = Entries::new(1);
        for i in 0..DIR_MAX_ENTRIES {
            e.insert(format!("{i:05}").as_bytes(), REGULAR).unwrap();
        }
        assert_eq!(e.insert(b"new", REGULAR).unwrap_err().errno, libc::ENOSPC);
        e.insert(b"00000", EntryKind::Dir(3)).unwrap();
        assert_eq!(e.len(), DIR_MAX_ENTRIES);
    }
}
