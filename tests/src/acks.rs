//! The side files of writers whose acknowledgements a test checks after a
//! crash or a restart: a writer appends `KEY VALUE` to its attempt file
//! before each write and to its ack file once the write returned 0.

use std::collections::{BTreeMap, BTreeSet};

use crate::Mount;

/// Lines of a scratch file of `m` (none if it does not exist).
pub fn scratch_lines(m: &Mount, name: &str) -> Vec<String> {
    std::fs::read_to_string(m.scratch().join(name))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Checks what one writer left against the recovered `values`: each key it
/// wrote holds its last acknowledged value or one attempted after it, and a
/// key never acknowledged holds nothing, nothing yet, or an attempted value.
/// Returns how many writes were acknowledged and the keys attempted, or
/// what is wrong.
pub fn check_writer(
    values: &BTreeMap<String, String>,
    attempts: &[String],
    acked: &[String],
) -> Result<(usize, BTreeSet<String>), String> {
    let mut tried: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for line in attempts {
        let (k, v) = split(line)?;
        tried.entry(k).or_default().push(v);
    }
    let mut last_ack: BTreeMap<&str, &str> = BTreeMap::new();
    for line in acked {
        let (k, v) = split(line)?;
        last_ack.insert(k, v);
    }
    for (k, tried) in &tried {
        let got = values.get(*k).map(String::as_str);
        match last_ack.get(k) {
            Some(acked) => {
                let from = tried.iter().position(|v| v == acked).ok_or(format!(
                    "key {k}: acknowledged {acked:?} was never attempted"
                ))?;
                let allowed = &tried[from..];
                if !got.is_some_and(|g| allowed.contains(&g)) {
                    return Err(format!(
                        "key {k} holds {got:?}; acknowledged {acked:?}, attempted after it {:?}",
                        &allowed[1..]
                    ));
                }
            }
            None if got.is_none_or(|g| g.is_empty() || tried.contains(&g)) => {}
            None => {
                return Err(format!(
                    "key {k} (never acknowledged) holds {got:?}; attempted {tried:?}"
                ));
            }
        }
    }
    let keys = tried.keys().map(|k| (*k).to_owned()).collect();
    Ok((acked.len(), keys))
}

fn split(line: &str) -> Result<(&str, &str), String> {
    line.split_once(' ')
        .ok_or(format!("not `KEY VALUE`: {line:?}"))
}

/// The error lines of writers that a crash of the daemon does not explain:
/// a write on a mount whose daemon is gone fails with ENOTCONN, or with
/// ECONNABORTED when its reply was still waiting.
pub fn not_from_a_dead_daemon(errors: &[String]) -> Vec<&String> {
    errors
        .iter()
        .filter(|l| {
            !l.contains("Transport endpoint is not connected")
                && !l.contains("Software caused connection abort")
        })
        .collect()
}
