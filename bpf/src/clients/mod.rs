//! Kernel clients the daemon ships: eBPF programs of other objects that use
//! the engine's maps through bpfdb_kernel.h (docs/KERNEL-CLIENTS.md). Each
//! is loaded over a running engine, reusing its maps, and detached on drop.

pub mod exec_trace;
pub mod memcached;

use libbpf_rs::OpenMapMut;

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

/// `(name, &mut map)` of the maps bpfdb_kernel.h declares, from a client
/// skeleton's open `maps`.
macro_rules! kernel_api_maps {
    ($m:expr) => {
        [
            ("slots", &mut $m.slots),
            ("records", &mut $m.records),
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
