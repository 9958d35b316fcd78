//! The protocol module alone: frames, every command, malformed and
//! truncated input, and the split of replies into datagrams.

use super::*;

fn frame(id: u16, seq: u16, count: u16, body: &[u8]) -> Vec<u8> {
    let mut d = Header {
        request_id: id,
        seq,
        count,
        reserved: 0,
    }
    .encode()
    .to_vec();
    d.extend_from_slice(body);
    d
}

fn one(input: &[u8]) -> Command<'_> {
    match next_command(input) {
        Ok((c, rest)) => {
            assert!(rest.is_empty(), "left over: {rest:?}");
            c
        }
        Err(r) => panic!("{:?} refused: {r:?}", String::from_utf8_lossy(input)),
    }
}

fn refused(input: &[u8]) -> Refusal {
    match next_command(input) {
        Ok((c, _)) => panic!("{:?} accepted as {c:?}", String::from_utf8_lossy(input)),
        Err(r) => r,
    }
}

fn client_error_mentions(input: &[u8], words: &str) {
    match refused(input) {
        Refusal::Client(why) => assert!(
            why.contains(words),
            "{:?}: {why:?} does not mention {words:?}",
            String::from_utf8_lossy(input)
        ),
        r => panic!(
            "{:?}: {r:?}, want CLIENT_ERROR",
            String::from_utf8_lossy(input)
        ),
    }
}

#[test]
fn header_round_trips_big_endian() {
    let h = Header {
        request_id: 0x0102,
        seq: 0x0304,
        count: 0x0506,
        reserved: 0x0708,
    };
    assert_eq!(h.encode(), [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(Header::parse(&h.encode()), Some(h));
    assert_eq!(Header::parse(&[1, 2, 3, 4, 5, 6, 7]), None);
}

#[test]
fn only_whole_requests_in_one_datagram_are_taken() {
    assert_eq!(
        request(&frame(7, 0, 1, b"get k\r\n")),
        Ok((7, &b"get k\r\n"[..]))
    );
    assert_eq!(request(&frame(7, 0, 1, b"")), Ok((7, &b""[..])));
    for len in 0..HEADER_BYTES {
        assert_eq!(request(&vec![0; len]), Err(Dropped::Short { len }));
    }
    for (seq, count) in [(0, 2), (1, 2), (1, 1), (0, 0), (65535, 65535)] {
        assert_eq!(
            request(&frame(9, seq, count, b"get k\r\n")),
            Err(Dropped::Fragment {
                request_id: 9,
                seq,
                count
            })
        );
    }
    // The reserved field is not checked, as memcached does not.
    let mut d = frame(3, 0, 1, b"version\r\n");
    d[7] = 1;
    assert!(request(&d).is_ok());
}

#[test]
fn get_and_gets_take_one_or_more_keys() {
    assert_eq!(
        one(b"get k\r\n"),
        Command::Get {
            keys: vec![b"k"],
            cas: false
        }
    );
    assert_eq!(
        one(b"gets  a  b c\n"),
        Command::Get {
            keys: vec![b"a", b"b", b"c"],
            cas: true
        }
    );
    assert_eq!(refused(b"get\r\n"), Refusal::Unknown);
    assert_eq!(refused(b"gets \r\n"), Refusal::Unknown);
    let many = format!("get{}\r\n", " k".repeat(MAX_GET_KEYS));
    assert!(
        matches!(one(many.as_bytes()), Command::Get { keys, .. } if keys.len() == MAX_GET_KEYS)
    );
    let too_many = format!("get{}\r\n", " k".repeat(MAX_GET_KEYS + 1));
    client_error_mentions(too_many.as_bytes(), "keys in one get");
}

#[test]
fn set_reads_its_data_block() {
    assert_eq!(
        one(b"set k 0 0 5\r\nhello\r\n"),
        Command::Set {
            key: b"k",
            value: b"hello",
            noreply: false
        }
    );
    assert_eq!(
        one(b"set k 0 0 0 noreply\r\n\r\n"),
        Command::Set {
            key: b"k",
            value: b"",
            noreply: true
        }
    );
    // The data may hold anything, CR LF included: its length says where it ends.
    assert_eq!(
        one(b"set k 0 0 4\r\n\r\n\r\n\r\n"),
        Command::Set {
            key: b"k",
            value: b"\r\n\r\n",
            noreply: false
        }
    );
}

#[test]
fn set_refuses_flags_expiry_and_bad_lengths() {
    client_error_mentions(b"set k 1 0 1\r\nx\r\n", "flags must be 0");
    client_error_mentions(b"set k 0 60 1\r\nx\r\n", "exptime must be 0");
    client_error_mentions(b"set k 0 -1 1\r\nx\r\n", "exptime must be 0");
    client_error_mentions(b"set k x 0 1\r\nx\r\n", BAD_FORMAT);
    client_error_mentions(b"set k 0 0 -1\r\nx\r\n", BAD_FORMAT);
    client_error_mentions(b"set k 0 0\r\n", BAD_FORMAT);
    client_error_mentions(b"set k 0 0 1 sometimes\r\nx\r\n", BAD_FORMAT);
    client_error_mentions(b"set k 0 0 1 noreply extra\r\nx\r\n", BAD_FORMAT);
    // Truncated data, data longer than said, no CR LF after it, a huge length.
    client_error_mentions(b"set k 0 0 5\r\nhel", "bad data chunk");
    client_error_mentions(b"set k 0 0 2\r\nhello\r\n", "bad data chunk");
    client_error_mentions(b"set k 0 0 5\r\nhello", "bad data chunk");
    client_error_mentions(b"set k 0 0 5\r\nhello\n", "bad data chunk");
    client_error_mentions(b"set k 0 0 18446744073709551615\r\nx\r\n", "bad data chunk");
    client_error_mentions(b"set k 0 0 99999999999999999999\r\nx\r\n", BAD_FORMAT);
}

#[test]
fn delete_takes_noreply_and_a_zero_hold_time() {
    for (input, noreply) in [
        (&b"delete k\r\n"[..], false),
        (b"delete k 0\r\n", false),
        (b"delete k noreply\r\n", true),
        (b"delete k 0 noreply\r\n", true),
    ] {
        assert_eq!(one(input), Command::Delete { key: b"k", noreply });
    }
    client_error_mentions(b"delete k 5\r\n", "Usage: delete");
    client_error_mentions(b"delete\r\n", "Usage: delete");
    client_error_mentions(b"delete k noreply 0\r\n", "Usage: delete");
}

#[test]
fn unknown_and_empty_commands_are_error() {
    for input in [
        &b"\r\n"[..],
        b"   \r\n",
        b"GET k\r\n",
        b"add k 0 0 1\r\nx\r\n",
        b"flush_all\r\n",
        b"version extra\r\n",
        b"\x00\xff\r\n",
    ] {
        assert_eq!(refused(input), Refusal::Unknown, "{input:?}");
    }
    assert_eq!(one(b"version\r\n"), Command::Version);
}

#[test]
fn an_unterminated_line_is_a_client_error() {
    for input in [&b"get k"[..], b"", b"set k 0 0 1", b"get k\r"] {
        client_error_mentions(input, "not terminated");
    }
}

#[test]
fn keys_follow_memcached_and_bpfdb_rules() {
    let longest = "k".repeat(MAX_KEY_BYTES);
    assert!(check_key(longest.as_bytes()).is_ok());
    client_error_mentions(format!("get {longest}k\r\n").as_bytes(), "at most 250");
    for bad in [&b"a\x01b"[..], b"a\x7fb", b"tab\there"] {
        assert!(check_key(bad).is_err(), "{bad:?}");
    }
    client_error_mentions(b"get a/b\r\n", "'/'");
    for dot in [".stats", ".txn", ".snap", ".ctl", ".", "..", ".hidden"] {
        client_error_mentions(format!("get {dot}\r\n").as_bytes(), "control names");
        client_error_mentions(format!("delete {dot}\r\n").as_bytes(), "control names");
        client_error_mentions(
            format!("set {dot} 0 0 1\r\nx\r\n").as_bytes(),
            "control names",
        );
    }
    // Any other byte is a key byte, as in a file name.
    assert!(check_key("clé-ü.x".as_bytes()).is_ok());
}

#[test]
fn several_commands_follow_each_other() {
    let input = b"set a 0 0 1\r\nx\r\nget a b\r\ndelete a noreply\r\nversion\r\n";
    let (c1, rest) = next_command(input).unwrap();
    assert!(matches!(
        c1,
        Command::Set {
            key: b"a",
            value: b"x",
            ..
        }
    ));
    let (c2, rest) = next_command(rest).unwrap();
    assert!(matches!(c2, Command::Get { ref keys, .. } if keys.len() == 2));
    let (c3, rest) = next_command(rest).unwrap();
    assert_eq!(
        c3,
        Command::Delete {
            key: b"a",
            noreply: true
        }
    );
    let (c4, rest) = next_command(rest).unwrap();
    assert_eq!(c4, Command::Version);
    assert!(rest.is_empty());
}

#[test]
fn replies_are_memcached_lines() {
    let mut out = Vec::new();
    value(&mut out, b"k", b"v\r\n", None);
    value(&mut out, b"k2", b"", Some(42));
    out.extend_from_slice(END);
    assert_eq!(
        out,
        b"VALUE k 0 3\r\nv\r\n\r\nVALUE k2 0 0 42\r\n\r\nEND\r\n"
    );
    let mut out = Vec::new();
    server_error(&mut out, "set \"k\": value memory is full\r\nmore");
    client_error(&mut out, "bad");
    Refusal::Unknown.reply(&mut out);
    version(&mut out, "bpfdb-1");
    assert_eq!(
        out,
        &b"SERVER_ERROR set \"k\": value memory is full  more\r\nCLIENT_ERROR bad\r\nERROR\r\nVERSION bpfdb-1\r\n"[..]
    );
    let mut out = Vec::new();
    server_error(&mut out, &"x".repeat(10 * MAX_MESSAGE_BYTES));
    assert_eq!(out.len(), "SERVER_ERROR ".len() + MAX_MESSAGE_BYTES + 2);
}

/// The payloads of `datagrams`, checked for their headers.
fn reassemble(id: u16, ds: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, d) in ds.iter().enumerate() {
        let h = Header::parse(d).unwrap();
        assert_eq!(
            (h.request_id, h.seq as usize, h.count as usize, h.reserved),
            (id, i, ds.len(), 0)
        );
        assert!(d.len() <= HEADER_BYTES + MAX_PAYLOAD_BYTES);
        out.extend_from_slice(&d[HEADER_BYTES..]);
    }
    out
}

#[test]
fn long_replies_are_split_into_numbered_datagrams() {
    assert!(datagrams(1, b"").is_empty(), "noreply sends nothing");
    let ds = datagrams(1, STORED);
    assert_eq!(ds.len(), 1);
    assert_eq!(reassemble(1, &ds), STORED);
    for len in [
        MAX_PAYLOAD_BYTES - 1,
        MAX_PAYLOAD_BYTES,
        MAX_PAYLOAD_BYTES + 1,
        100 << 10,
        1 << 20,
    ] {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut reply = Vec::new();
        value(&mut reply, b"big", &data, None);
        reply.extend_from_slice(END);
        let ds = datagrams(65535, &reply);
        assert_eq!(ds.len(), reply.len().div_ceil(MAX_PAYLOAD_BYTES), "{len}");
        assert_eq!(reassemble(65535, &ds), reply, "{len}");
    }
    let ds = datagrams(5, &vec![b'x'; MAX_REPLY_BYTES]);
    assert_eq!(ds.len(), MAX_REPLY_DATAGRAMS);
}

#[test]
fn a_reply_over_the_bound_is_one_server_error() {
    let ds = datagrams(5, &vec![b'x'; MAX_REPLY_BYTES + 1]);
    assert_eq!(ds.len(), 1);
    let text = String::from_utf8(reassemble(5, &ds)).unwrap();
    assert!(
        text.starts_with("SERVER_ERROR reply of") && text.ends_with("\r\n"),
        "{text}"
    );
}

/// Random bytes and random cuts and flips of valid requests: every input is a command or a
/// refusal, never a panic, and a command's rest is a suffix of the input.
#[test]
fn no_input_panics() {
    const INPUTS: usize = 20_000;
    let valid: [&[u8]; 4] = [
        b"set key 0 0 5 noreply\r\nhello\r\nget key other\r\n",
        b"gets a b c\r\ndelete a 0 noreply\r\n",
        b"version\r\nset k 0 0 0\r\n\r\n",
        b"delete k\r\n",
    ];
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..INPUTS {
        let mut input = valid[i % valid.len()].to_vec();
        match next() % 3 {
            0 => input = (0..next() % 64).map(|_| next() as u8).collect(),
            1 => input.truncate((next() as usize) % (input.len() + 1)),
            _ => {
                let at = (next() as usize) % input.len();
                input[at] = next() as u8;
            }
        }
        let mut rest: &[u8] = &input;
        for _ in 0..MAX_COMMANDS {
            match next_command(rest) {
                Ok((_, r)) => {
                    assert!(input.ends_with(r) && r.len() < rest.len(), "{input:?}");
                    rest = r;
                }
                Err(refusal) => {
                    let mut out = Vec::new();
                    refusal.reply(&mut out);
                    assert!(out.ends_with(b"\r\n") && !out[..out.len() - 2].contains(&b'\n'));
                    break;
                }
            }
            if rest.is_empty() {
                break;
            }
        }
    }
}
