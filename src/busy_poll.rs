//! Busy polling: after its last piece of work, the runtime's thread keeps
//! polling for I/O for a short window instead of going to sleep at once.
//!
//! Why: a thread that sleeps in `epoll_wait` is woken by the kernel when
//! a packet arrives, and on a virtual machine that wake-up (the idle CPU
//! halts, the sender's CPU sends it an interrupt through the hypervisor)
//! costs tens of microseconds. A request through a proxy waits for two of
//! them in the proxy (the request in, the backend's response in), which is
//! most of the round trip when connections are few. A thread that is still
//! polling when the packet arrives takes it without one. The price is CPU:
//! up to one window of polling after each burst of work, counted as the
//! process's own time. HAProxy's `busy-polling` polls all the time; this
//! stops once the window passes with nothing to do, so an idle proxy
//! sleeps as before.
//!
//! How: a task that yields in a loop. Tokio's single-threaded scheduler,
//! left with nothing but a yielded task, polls the I/O driver without
//! waiting before it runs the task again, so while the task loops every
//! socket event is taken as soon as it is there. Between two of its turns
//! the task reads how long the runtime spent running tasks (its busy
//! time, which leaves out the wait for I/O): more than [`OTHER_WORK`]
//! means other tasks ran, and restarts the window. Time alone would not
//! do: under a tracer that slows every system call, each turn would look
//! like work and the polling would never stop. Once a window passes
//! without work the task waits to be armed again, and the runtime parks;
//! the runtime's unpark hook (work arrived after a sleep) arms it.
//!
//! Only for the single-threaded runtime: a multi-threaded one has no way
//! to keep a task on a given worker, so one task could not keep each
//! worker awake. With more than one thread, [`crate::serving`] gives each
//! a single-threaded runtime of its own, each with its own `BusyPoll`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Busy time between two turns of the polling task above this means other
/// tasks ran. A turn with nothing else to do adds the poll of the polling
/// task itself, a fraction of a microsecond; a request through the proxy
/// takes longer.
const OTHER_WORK: Duration = Duration::from_micros(2);

/// Busy polling for one runtime: the hook that arms it and the task that
/// polls.
#[derive(Clone)]
pub struct BusyPoll {
    window: Duration,
    armed: Arc<Notify>,
}

impl BusyPoll {
    /// Polls for `window` after the last work seen.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            armed: Arc::new(Notify::new()),
        }
    }

    /// For `Builder::on_thread_unpark`: the thread woke up with work, so
    /// poll again after it.
    pub fn unpark_hook(&self) -> impl Fn() + Send + Sync + 'static {
        let armed = self.armed.clone();
        move || armed.notify_one()
    }

    /// The polling task: runs until the runtime ends.
    pub async fn run(self) {
        loop {
            self.armed.notified().await;
            self.poll_until_quiet().await;
        }
    }

    /// Yields until a whole window has passed without other tasks running.
    async fn poll_until_quiet(&self) {
        // The single-threaded runtime's one worker.
        let metrics = tokio::runtime::Handle::current().metrics();
        let busy = || metrics.worker_total_busy_duration(0);
        let mut busy_before = busy();
        let mut quiet_since = Instant::now();
        loop {
            tokio::task::yield_now().await;
            let busy_now = busy();
            if busy_now.saturating_sub(busy_before) > OTHER_WORK {
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= self.window {
                return;
            }
            busy_before = busy_now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::runtime::{Builder, Runtime};

    fn runtime(busy_poll: Option<&BusyPoll>) -> Runtime {
        let mut builder = Builder::new_current_thread();
        builder.enable_all();
        if let Some(busy_poll) = busy_poll {
            builder.on_thread_unpark(busy_poll.unpark_hook());
        }
        builder.build().expect("runtime")
    }

    /// How often the runtime's one thread parks while it sleeps on a timer
    /// for a while after some work (the runtime has nothing else to do).
    fn parks_while_sleeping(runtime: &Runtime, busy_poll: Option<BusyPoll>) -> u64 {
        runtime.block_on(async move {
            if let Some(busy_poll) = busy_poll {
                tokio::spawn(busy_poll.run());
            }
            // Work after a sleep: the thread parks and unparks once.
            tokio::time::sleep(Duration::from_millis(1)).await;
            let metrics = tokio::runtime::Handle::current().metrics();
            let before = metrics.worker_park_count(0);
            tokio::time::sleep(Duration::from_millis(50)).await;
            metrics.worker_park_count(0) - before
        })
    }

    #[test]
    fn within_the_window_the_thread_polls_instead_of_parking() {
        // A window far longer than the test: whatever the machine's speed,
        // it has not passed when the sleep ends.
        let busy_poll = BusyPoll::new(Duration::from_secs(3600));
        let runtime = runtime(Some(&busy_poll));
        assert_eq!(parks_while_sleeping(&runtime, Some(busy_poll)), 0);
    }

    #[test]
    fn without_busy_polling_the_same_sleep_parks_the_thread() {
        let runtime = runtime(None);
        assert!(parks_while_sleeping(&runtime, None) > 0);
    }

    #[test]
    fn after_a_quiet_window_the_thread_parks_and_work_arms_it_again() {
        let busy_poll = BusyPoll::new(Duration::from_millis(1));
        let runtime = runtime(Some(&busy_poll));
        runtime.block_on(async move {
            tokio::spawn(busy_poll.run());
            let metrics = tokio::runtime::Handle::current().metrics();
            for _ in 0..3 {
                // Each sleep far outlasts the window: polling stops, the
                // thread parks, and the timer's wake-up arms it again.
                let before = metrics.worker_park_count(0);
                tokio::time::sleep(Duration::from_millis(200)).await;
                assert!(metrics.worker_park_count(0) > before);
            }
        });
    }
}
