//! The allocator behind the sidecar's memory across registry reloads: the
//! only module with `unsafe` code (one kind of jemalloc control call, with
//! its SAFETY note).
//!
//! A reload parses the registry files and builds the next registry while the
//! serving one stays alive, then drops the old one: hundreds of thousands of
//! small allocations freed in an order unrelated to the one they were made
//! in. glibc's malloc kept the freed pages wherever one live allocation
//! shared them, so the RSS at rest crept up by a third after the first
//! reloads, and its per-thread arenas made the figures depend on which
//! blocking thread ran each reload. jemalloc groups allocations by size
//! class and, with its decay times at zero, hands a run of pages back to the
//! OS as soon as nothing in it is live: RSS at rest stays where the first
//! load left it, and the reload peak stays under twice that
//! (docs/performance.md, "Reload memory").
//!
//! The binary installs [`Allocator`] as its global allocator (src/main.rs);
//! tests and benchmarks that run the sidecar in-process keep the system one.
#![allow(unsafe_code)]

/// The global allocator the `service-auth` binary installs.
pub use tikv_jemallocator::Jemalloc as Allocator;

/// Makes jemalloc return freed pages at once instead of after its default
/// ten seconds: a reload frees tens of MiB in one go, and an operator sizes
/// the memory limit by the peak, which a second reload within those ten
/// seconds would otherwise raise. Call once, before the runtime starts any
/// thread: arenas created later take the new default, and arena
/// 0 (the only one then) is set directly. The request path allocates little
/// and reuses it through jemalloc's thread caches, so it rarely frees a
/// whole page run (measured: docs/performance.md).
pub fn tune() {
    const CONTROLS: [&[u8]; 4] = [
        b"arenas.dirty_decay_ms\0",
        b"arenas.muzzy_decay_ms\0",
        b"arena.0.dirty_decay_ms\0",
        b"arena.0.muzzy_decay_ms\0",
    ];
    for name in CONTROLS {
        // SAFETY: each of these controls is an `ssize_t` (jemalloc's
        // mallctl documentation), which `isize` is on every target; a
        // control the allocator refuses leaves its default in place.
        let _ = unsafe { tikv_jemalloc_ctl::raw::write(name, 0isize) };
    }
}

#[cfg(test)]
mod tests {
    /// `tune` reaches jemalloc: the decay that new arenas take is 0 after
    /// it (the allocator's controls answer even where, as in this test,
    /// jemalloc is not the global allocator).
    #[test]
    fn tune_sets_the_decay_of_new_arenas_to_zero() {
        super::tune();
        for name in [&b"arenas.dirty_decay_ms\0"[..], b"arenas.muzzy_decay_ms\0"] {
            // SAFETY: both controls are `ssize_t`.
            let decay: isize = unsafe { tikv_jemalloc_ctl::raw::read(name) }.unwrap();
            assert_eq!(decay, 0);
        }
    }
}
