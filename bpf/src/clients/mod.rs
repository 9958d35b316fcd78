//! Kernel clients the daemon ships: eBPF programs of other objects that use
//! the engine's maps through bpfdb_kernel.h (docs/KERNEL-CLIENTS.md). Each
//! is loaded over a running engine, reusing its maps, and detached on drop.

pub mod exec_trace;
pub mod memcached;

use libbpf_rs::{MapCore, MapFlags, OpenMapMut};

use crate::error::Result;
use crate::kernel::engine::Engine;

/// Makes a client object's copies of the engine's maps the engine's own
/// maps, before the client loads: `maps` pairs each map of bpfdb_kernel.h
/// the object declares with its name.
pub(crate) fn reuse_engine_maps(
    engine: &Engine,
    maps: &mut [(&str, &mut OpenMapMut)],
) -> Result<()> {
    for (name, map) in maps.iter_mut() {
        map.reuse_fd(engine.shared_map(name)?)?;
    }
    Ok(())
}

/// The first N u64 counters of a per-CPU array map, each summed over CPUs.
pub(crate) fn percpu_sums<const N: usize>(map: &dyn MapCore) -> Result<[u64; N]> {
    let mut sums = [0u64; N];
    for (i, sum) in sums.iter_mut().enumerate() {
        let per_cpu = map
            .lookup_percpu(&(i as u32).to_ne_bytes(), MapFlags::ANY)?
            .unwrap_or_default();
        *sum = per_cpu
            .iter()
            .filter_map(|v| v.get(..8).and_then(|b| b.try_into().ok()))
            .map(u64::from_ne_bytes)
            .sum();
    }
    Ok(sums)
}

/// `(name, &mut map)` of the maps bpfdb_kernel.h declares, from a client
/// skeleton's open `maps`.
macro_rules! kernel_api_maps {
    ($m:expr) => {
        [
            ("slots", &mut $m.slots),
            ("records", &mut $m.records),
            ("records_top", &mut $m.records_top),
            ("records_below", &mut $m.records_below),
            ("long_names", &mut $m.long_names),
            ("small_pool", &mut $m.small_pool),
            ("page_pool", &mut $m.page_pool),
            ("layout", &mut $m.layout),
            ("clock", &mut $m.clock),
            ("stages", &mut $m.stages),
            ("conts", &mut $m.conts),
            ("client_owner", &mut $m.client_owner),
            ("client_slots", &mut $m.client_slots),
        ]
    };
}
pub(crate) use kernel_api_maps;
