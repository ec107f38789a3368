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
//! the task looks at how often the tasks that serve traffic (accepts,
//! client connections, their HTTP/2 streams and tunnels, each wrapped in
//! [`Work`]) were polled
//! on its thread: any poll of them means traffic, and restarts the
//! window. Time would not do: the runtime's busy time also grows while
//! the thread is preempted or its virtual CPU stolen in the middle of a
//! turn, or when a tracer slows every system call, and each such turn
//! would look like work and keep the polling going. Once a window passes
//! without work the task waits to be armed again, and the runtime parks;
//! the runtime's unpark hook (work arrived after a sleep) arms it.
//!
//! Only for the single-threaded runtime: a multi-threaded one has no way
//! to keep a task on a given worker, so one task could not keep each
//! worker awake. With more than one thread, [`crate::serving`] gives each
//! a single-threaded runtime of its own, each with its own `BusyPoll`.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

thread_local! {
    /// Polls of [`Work`] on this thread.
    static WORK_POLLS: Cell<u64> = const { Cell::new(0) };
}

pin_project_lite::pin_project! {
    /// A task that serves traffic: each of its polls is work that keeps
    /// this thread's busy polling going for another window.
    pub struct Work<F> {
        #[pin]
        task: F,
    }
}

impl<F> Work<F> {
    pub fn new(task: F) -> Self {
        Self { task }
    }
}

impl<F: Future> Future for Work<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        note_work();
        self.project().task.poll(cx)
    }
}

/// Notes work on this thread, for work that is not a [`Work`] task of
/// its own (the accept loop notes each connection it accepts).
pub fn note_work() {
    WORK_POLLS.with(|polls| polls.set(polls.get().wrapping_add(1)));
}

fn work_polls() -> u64 {
    WORK_POLLS.with(Cell::get)
}

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

    /// Yields until a whole window has passed without work on this
    /// thread.
    async fn poll_until_quiet(&self) {
        let mut seen = work_polls();
        let mut quiet_since = Instant::now();
        loop {
            tokio::task::yield_now().await;
            let polls = work_polls();
            if polls != seen {
                seen = polls;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= self.window {
                return;
            }
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
            parks_during(Duration::from_millis(50)).await
        })
    }

    /// How often the runtime's one thread parks while the caller sleeps.
    async fn parks_during(sleep: Duration) -> u64 {
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.worker_park_count(0);
        tokio::time::sleep(sleep).await;
        metrics.worker_park_count(0) - before
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

    type Ticking = Pin<Box<dyn Future<Output = ()> + Send>>;

    /// How often the thread parks in 100 ms while a task wakes every
    /// millisecond, the task started by `spawn`, with a window of 20 ms.
    fn parks_beside_a_task_woken_every_millisecond(spawn: fn(Ticking)) -> u64 {
        let busy_poll = BusyPoll::new(Duration::from_millis(20));
        let runtime = runtime(Some(&busy_poll));
        runtime.block_on(async move {
            tokio::spawn(busy_poll.run());
            spawn(Box::pin(async {
                let mut every_ms = tokio::time::interval(Duration::from_millis(1));
                loop {
                    every_ms.tick().await;
                }
            }));
            // The first wake-up arms the polling.
            tokio::time::sleep(Duration::from_millis(5)).await;
            parks_during(Duration::from_millis(100)).await
        })
    }

    // In the two tests that expect the thread to keep polling: no park,
    // but for one: a thread descheduled by a busy host for longer than the
    // window right after its check may stop polling once. Without the work
    // counted it parks about five times.

    #[test]
    fn polls_of_tasks_that_serve_traffic_keep_the_thread_polling() {
        let parks = parks_beside_a_task_woken_every_millisecond(|task| {
            tokio::spawn(Work::new(task));
        });
        assert!(parks <= 1, "{parks} parks");
    }

    #[test]
    fn tasks_hyper_spawns_while_serving_are_work_too() {
        let parks = parks_beside_a_task_woken_every_millisecond(|task| {
            let streams = crate::proxy::stream_stall::StreamExecutor::new(Duration::from_secs(60));
            hyper::rt::Executor::execute(&streams, task);
        });
        assert!(parks <= 1, "{parks} parks");
    }

    #[test]
    fn polls_of_other_tasks_do_not() {
        let parks = parks_beside_a_task_woken_every_millisecond(|task| {
            tokio::spawn(task);
        });
        assert!(parks > 0);
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
