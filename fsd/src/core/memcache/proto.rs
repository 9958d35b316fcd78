//! memcached's UDP protocol as bytes in and bytes out, without I/O: the
//! 8-byte frame header, the text commands bpfdb serves, their replies, and
//! the split of a long reply into datagrams. Nothing here panics on input:
//! every malformed request becomes a `Refusal` (or a `Dropped` frame).

use std::fmt;

/// The frame header before every request and reply: request id, sequence
/// number, datagram count, reserved; each a big-endian u16.
pub const HEADER_BYTES: usize = 8;

/// Reply bytes carried by one datagram after its header, as memcached.
pub const MAX_PAYLOAD_BYTES: usize = 1400;

/// Most datagrams one reply is split into: enough for a 1 MiB value (750).
/// The count is a u16 on the wire; a longer reply is one SERVER_ERROR.
pub const MAX_REPLY_DATAGRAMS: usize = 1024;

/// Most reply bytes one request gets (1,433,600).
pub const MAX_REPLY_BYTES: usize = MAX_PAYLOAD_BYTES * MAX_REPLY_DATAGRAMS;

/// Largest datagram received: any UDP payload fits (IPv4's largest is 65,507).
pub const MAX_DATAGRAM_BYTES: usize = 65_536;

/// memcached's longest key. bpfdb's own limit (255) is larger.
pub const MAX_KEY_BYTES: usize = 250;

/// Most keys one `get` names.
pub const MAX_GET_KEYS: usize = 1024;

/// Most commands run from one datagram; the rest are refused.
pub const MAX_COMMANDS: usize = 64;

/// Longest text of a CLIENT_ERROR or SERVER_ERROR reply; a longer message
/// is cut.
pub const MAX_MESSAGE_BYTES: usize = 512;

pub const END: &[u8] = b"END\r\n";
pub const STORED: &[u8] = b"STORED\r\n";
pub const DELETED: &[u8] = b"DELETED\r\n";
pub const NOT_FOUND: &[u8] = b"NOT_FOUND\r\n";
pub const ERROR: &[u8] = b"ERROR\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub request_id: u16,
    pub seq: u16,
    pub count: u16,
    pub reserved: u16,
}

impl Header {
    pub fn parse(b: &[u8]) -> Option<Header> {
        let field = |i: usize| Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]));
        Some(Header {
            request_id: field(0)?,
            seq: field(2)?,
            count: field(4)?,
            reserved: field(6)?,
        })
    }

    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0; HEADER_BYTES];
        for (i, v) in [self.request_id, self.seq, self.count, self.reserved]
            .into_iter()
            .enumerate()
        {
            b[2 * i..2 * i + 2].copy_from_slice(&v.to_be_bytes());
        }
        b
    }
}

/// Why a datagram gets no reply at all: it carries no whole request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Shorter than the frame header.
    Short { len: usize },
    /// Part of a request sent in several datagrams, which bpfdb does not
    /// reassemble (memcached does not either).
    Fragment {
        request_id: u16,
        seq: u16,
        count: u16,
    },
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dropped::Short { len } => write!(
                f,
                "a datagram of {len} bytes, shorter than the {HEADER_BYTES}-byte frame header"
            ),
            Dropped::Fragment {
                request_id,
                seq,
                count,
            } => write!(
                f,
                "request {request_id}: datagram {seq} of {count}; only requests in one datagram (0 of 1) are served"
            ),
        }
    }
}

/// The request id and the command bytes of a datagram.
pub fn request(datagram: &[u8]) -> Result<(u16, &[u8]), Dropped> {
    let h = Header::parse(datagram).ok_or(Dropped::Short {
        len: datagram.len(),
    })?;
    if h.seq != 0 || h.count != 1 {
        return Err(Dropped::Fragment {
            request_id: h.request_id,
            seq: h.seq,
            count: h.count,
        });
    }
    Ok((h.request_id, &datagram[HEADER_BYTES..]))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `get` (`cas` false) or `gets` (`cas` true) of one or more keys.
    Get {
        keys: Vec<&'a [u8]>,
        cas: bool,
    },
    Set {
        key: &'a [u8],
        value: &'a [u8],
        noreply: bool,
    },
    Delete {
        key: &'a [u8],
        noreply: bool,
    },
    Version,
}

/// A command refused before it ran; what follows it in the datagram is not
/// read (its framing cannot be trusted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// An unknown command: `ERROR`.
    Unknown,
    /// A known command used wrongly: `CLIENT_ERROR <why>`.
    Client(String),
}

impl Refusal {
    pub fn reply(&self, out: &mut Vec<u8>) {
        match self {
            Refusal::Unknown => out.extend_from_slice(ERROR),
            Refusal::Client(why) => client_error(out, why),
        }
    }
}

fn client(why: impl Into<String>) -> Refusal {
    Refusal::Client(why.into())
}

const BAD_FORMAT: &str = "bad command line format";

/// Splits the first command off `input`: the command and the bytes after it.
pub fn next_command(input: &[u8]) -> Result<(Command<'_>, &[u8]), Refusal> {
    let Some(eol) = input.iter().position(|&b| b == b'\n') else {
        return Err(client("command line not terminated by \\r\\n"));
    };
    let line = &input[..eol];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let rest = &input[eol + 1..];
    // memcached separates tokens by spaces, and several count as one.
    let tokens: Vec<&[u8]> = line
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .take(MAX_GET_KEYS + 2)
        .collect();
    let (&name, args) = tokens.split_first().ok_or(Refusal::Unknown)?;
    let command = match name {
        b"get" | b"gets" => get(args, name == b"gets")?,
        b"set" => return set(args, rest),
        b"delete" => delete(args)?,
        b"version" if args.is_empty() => Command::Version,
        _ => return Err(Refusal::Unknown),
    };
    Ok((command, rest))
}

fn get<'a>(args: &[&'a [u8]], cas: bool) -> Result<Command<'a>, Refusal> {
    if args.is_empty() {
        return Err(Refusal::Unknown);
    }
    if args.len() > MAX_GET_KEYS {
        return Err(client(format!("more than {MAX_GET_KEYS} keys in one get")));
    }
    for key in args {
        check_key(key)?;
    }
    Ok(Command::Get {
        keys: args.to_vec(),
        cas,
    })
}

/// `set <key> <flags> <exptime> <bytes> [noreply]\r\n<data>\r\n`
fn set<'a>(args: &[&'a [u8]], data: &'a [u8]) -> Result<(Command<'a>, &'a [u8]), Refusal> {
    let (key, flags, exptime, bytes, noreply) = match *args {
        [key, flags, exptime, bytes] => (key, flags, exptime, bytes, false),
        [key, flags, exptime, bytes, b"noreply"] => (key, flags, exptime, bytes, true),
        _ => return Err(client(BAD_FORMAT)),
    };
    check_key(key)?;
    match number::<u32>(flags) {
        Some(0) => {}
        Some(_) => {
            return Err(client(
                "flags must be 0: bpfdb stores no client flags (docs/SEMANTICS.md)",
            ));
        }
        None => return Err(client(BAD_FORMAT)),
    }
    match number::<i64>(exptime) {
        Some(0) => {}
        Some(_) => {
            return Err(client(
                "exptime must be 0: bpfdb keys do not expire (docs/SEMANTICS.md)",
            ));
        }
        None => return Err(client(BAD_FORMAT)),
    }
    let len = number::<usize>(bytes).ok_or_else(|| client(BAD_FORMAT))?;
    match (
        data.get(..len),
        data.get(len..).map(|t| t.strip_prefix(b"\r\n")),
    ) {
        (Some(value), Some(Some(rest))) => Ok((
            Command::Set {
                key,
                value,
                noreply,
            },
            rest,
        )),
        _ => Err(client("bad data chunk")),
    }
}

/// `delete <key> [noreply]`; memcached also takes a hold time of `0`.
fn delete<'a>(args: &[&'a [u8]]) -> Result<Command<'a>, Refusal> {
    let (key, noreply) = match *args {
        [key] | [key, b"0"] => (key, false),
        [key, b"noreply"] | [key, b"0", b"noreply"] => (key, true),
        _ => {
            return Err(client(
                "bad command line format.  Usage: delete <key> [noreply]",
            ));
        }
    };
    check_key(key)?;
    Ok(Command::Delete { key, noreply })
}

/// A decimal number as memcached reads one (digits, an optional sign for
/// signed types), or None.
fn number<T: std::str::FromStr>(token: &[u8]) -> Option<T> {
    std::str::from_utf8(token).ok()?.parse().ok()
}

/// memcached's key rule (at most 250 bytes, no spaces or control
/// characters), bpfdb's (a file name: no '/'), and the control names:
/// keys beginning with '.' are refused.
pub fn check_key(key: &[u8]) -> Result<(), Refusal> {
    if key.len() > MAX_KEY_BYTES {
        return Err(client(format!(
            "key of {} bytes: memcached keys are at most {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    if key.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(client("key contains a space or a control character"));
    }
    if key.starts_with(b".") {
        return Err(client(
            "keys beginning with '.' are bpfdb's control names (.stats, .txn, ...), not served over memcached",
        ));
    }
    bpfdb::check_name(key)
        .map(drop)
        .map_err(|e| client(format!("key: {}", e.msg)))
}

/// `VALUE <key> 0 <bytes>[ <cas>]\r\n<data>\r\n`
pub fn value(out: &mut Vec<u8>, key: &[u8], data: &[u8], cas: Option<u64>) {
    out.extend_from_slice(b"VALUE ");
    out.extend_from_slice(key);
    out.extend_from_slice(format!(" 0 {}", data.len()).as_bytes());
    if let Some(cas) = cas {
        out.extend_from_slice(format!(" {cas}").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

pub fn version(out: &mut Vec<u8>, v: &str) {
    out.extend_from_slice(b"VERSION ");
    message(out, v);
}

pub fn client_error(out: &mut Vec<u8>, why: &str) {
    out.extend_from_slice(b"CLIENT_ERROR ");
    message(out, why);
}

pub fn server_error(out: &mut Vec<u8>, why: &str) {
    out.extend_from_slice(b"SERVER_ERROR ");
    message(out, why);
}

/// Ends a reply line with `text` on one line: control characters become
/// spaces, and the text is cut at `MAX_MESSAGE_BYTES`.
fn message(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let bytes = &bytes[..bytes.len().min(MAX_MESSAGE_BYTES)];
    out.extend(
        bytes
            .iter()
            .map(|&b| if b < b' ' || b == 0x7f { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

/// The datagrams of `reply` to request `request_id`: chunks of at most
/// `MAX_PAYLOAD_BYTES`, each after a header with the same id, its sequence
/// number and the count. An empty reply (noreply) is no datagram; one over
/// `MAX_REPLY_BYTES` is replaced by a SERVER_ERROR saying so.
pub fn datagrams(request_id: u16, reply: &[u8]) -> Vec<Vec<u8>> {
    if reply.len() > MAX_REPLY_BYTES {
        let mut e = Vec::new();
        server_error(
            &mut e,
            &format!(
                "reply of {} bytes exceeds the UDP reply limit of {MAX_REPLY_BYTES} bytes; ask for fewer keys",
                reply.len()
            ),
        );
        return datagrams(request_id, &e);
    }
    let chunks = reply.chunks(MAX_PAYLOAD_BYTES);
    // At most MAX_REPLY_DATAGRAMS (1024), so both fit in a u16.
    let count = u16::try_from(chunks.len()).unwrap_or(u16::MAX);
    chunks
        .enumerate()
        .map(|(seq, chunk)| {
            let header = Header {
                request_id,
                seq: u16::try_from(seq).unwrap_or(u16::MAX),
                count,
                reserved: 0,
            };
            let mut d = Vec::with_capacity(HEADER_BYTES + chunk.len());
            d.extend_from_slice(&header.encode());
            d.extend_from_slice(chunk);
            d
        })
        .collect()
}

#[cfg(test)]
mod tests;
