//! Where a replaced route table is freed: on the thread that swapped it
//! out (the blocking pool's, which translates), not on a thread that
//! serves requests.
//!
//! A request holds the table in force only while it looks its route up
//! (it keeps the route, not the table). But a swap landing in that window
//! leaves the request with the table's last reference, and freeing a
//! table of 10,000 routes, and unregistering the metric series of the
//! routes it was the last to have, is milliseconds of work on a thread
//! that requests and tunnels are waiting on.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a swap waits for the readers of the table it replaced. A
/// lookup holds it for well under a microsecond, the admin API's `/routes`
/// while it encodes the table; a reader that holds it longer than this
/// frees it itself.
pub const RETIRE_WAIT: Duration = Duration::from_millis(100);

/// Drops `value` here once it is the last reference, waiting at most
/// `wait` for the others to go; past that, their last holder drops it.
pub fn retire<T>(mut value: Arc<T>, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        match Arc::try_unwrap(value) {
            Ok(unshared) => return drop(unshared),
            Err(shared) if Instant::now() < deadline => {
                value = shared;
                // A reader mid-lookup needs the CPU, which on a pinned
                // proxy may be this thread's.
                std::thread::sleep(Duration::from_micros(50));
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::thread::{self, ThreadId};

    use super::*;

    /// Says on which thread it was dropped.
    struct DroppedOn(mpsc::Sender<ThreadId>);

    impl Drop for DroppedOn {
        fn drop(&mut self) {
            let _ = self.0.send(thread::current().id());
        }
    }

    #[test]
    fn a_value_still_read_elsewhere_is_dropped_by_the_retiring_thread() {
        let (tx, dropped_on) = mpsc::channel();
        let value = Arc::new(DroppedOn(tx));
        let reader = value.clone();
        // The wait is only a bound for a broken retire: whether the reader
        // lets go before or after retire looks, retire drops the value.
        let retiring = thread::spawn(move || retire(value, Duration::from_secs(60)));
        let retiring_thread = retiring.thread().id();
        // Most likely after retire's first look: a retire that did not
        // wait would leave the last reference here.
        thread::sleep(Duration::from_millis(10));
        drop(reader);
        retiring.join().unwrap();
        assert_eq!(dropped_on.recv().unwrap(), retiring_thread);
    }

    #[test]
    fn a_reader_that_holds_on_past_the_wait_drops_the_value_itself() {
        let (tx, dropped_on) = mpsc::channel();
        let value = Arc::new(DroppedOn(tx));
        let reader = value.clone();
        retire(value, Duration::from_millis(1));
        assert!(dropped_on.try_recv().is_err(), "not dropped while read");
        drop(reader);
        assert_eq!(dropped_on.recv().unwrap(), thread::current().id());
    }
}
