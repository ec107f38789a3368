//! How the process takes memory from the kernel: in 4 KiB pages, with
//! transparent huge pages turned off for the whole process.
//!
//! mimalloc asks for huge pages on its arenas (`madvise(MADV_HUGEPAGE)`;
//! built with its `no_thp` feature, it does not), and some distributions
//! give them to every process anyway. A proxy's memory is many small
//! per-connection buffers that come and go with its clients, and with huge
//! pages every growth of the heap faults in (and zeroes) 2 MiB at once, in
//! the middle of whichever request touched it: a burst of 256 new
//! connections spent half its CPU time clearing pages, and the idle process
//! held 18 MiB instead of 11.

/// Turns transparent huge pages off for this process, from here on (the
/// setting is the process's, inherited by any child). A failure changes
/// nothing else; the caller logs it once logging is set up.
pub fn use_small_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    rustix::thread::disable_transparent_huge_pages(true)?;
    Ok(())
}
