//! Where the proxy's connections are served: in the runtime that runs
//! everything else, or on serving threads of their own.
//!
//! Serving threads are for busy polling with more than one thread. Busy
//! polling keeps one runtime's thread polling its own sockets (see
//! [`crate::busy_poll`]), and tokio's multi-threaded runtime moves tasks
//! between workers, so there each worker would poll sockets whose tasks
//! another worker runs. Instead each serving thread is a single-threaded
//! runtime of its own, with its own busy polling, its own listening socket
//! on the shared address (`SO_REUSEPORT`: the kernel spreads new
//! connections over the sockets) and its own [`Proxy`], so its own backend
//! pool: every socket a thread's connections use is polled by that thread.
//! Routes, metrics, connection limits and shutdown are shared by all. The
//! admin endpoints and the sources stay on the main thread's runtime.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::busy_poll::BusyPoll;
use crate::proxy::Proxy;

/// How `run` serves the proxy's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// On the runtime `run` is called on.
    InRuntime,
    /// On `count` serving threads, each busy polling for `busy_poll`.
    Threads { count: usize, busy_poll: Duration },
}

impl Serving {
    /// Serving threads where busy polling meets more than one thread;
    /// otherwise the runtime `main` builds (a single-threaded one with
    /// busy polling when there is one thread).
    pub fn choose(threads: usize, busy_poll: Duration) -> Self {
        if threads > 1 && !busy_poll.is_zero() {
            Serving::Threads {
                count: threads,
                busy_poll,
            }
        } else {
            Serving::InRuntime
        }
    }
}

/// A running serving thread.
pub struct ServingThread {
    /// Its runtime, for a look at what runs there.
    pub runtime: tokio::runtime::Handle,
    pub thread: JoinHandle<()>,
}

/// Starts one serving thread per listener, each serving `proxy`'s routes
/// with a [`Proxy::sibling`] of its own, until draining begins and then
/// until the connections it serves have ended.
pub fn start(
    listeners: Vec<std::net::TcpListener>,
    proxy: &Arc<Proxy>,
    busy_poll: Duration,
) -> io::Result<Vec<ServingThread>> {
    listeners
        .into_iter()
        .enumerate()
        .map(|(index, listener)| {
            let proxy = proxy.sibling();
            let busy_poll = BusyPoll::new(busy_poll);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .on_thread_unpark(busy_poll.unpark_hook())
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let name = format!("serve-{index}");
            let thread = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || runtime.block_on(serve(&name, listener, proxy, busy_poll)))?;
            Ok(ServingThread {
                runtime: handle,
                thread,
            })
        })
        .collect()
}

async fn serve(
    name: &str,
    listener: std::net::TcpListener,
    proxy: Arc<Proxy>,
    busy_poll: BusyPoll,
) {
    tokio::spawn(busy_poll.run());
    // Registered here, with this thread's runtime, so that this thread is
    // the one that polls it.
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            // Dropped, the socket leaves the group, and the kernel gives
            // its share of new connections to the other threads.
            tracing::error!(thread = name, %error, "serving thread cannot use its listening socket; the others serve");
            return;
        }
    };
    let shutdown = proxy.shutdown.clone();
    proxy.serve(listener).await;
    // The connections this thread serves are tasks of its runtime: keep it
    // running until shutdown has seen them all end (the main thread ends
    // the process after the drain in any case).
    shutdown.tracker().wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_threads_are_for_busy_polling_with_more_than_one_thread() {
        let window = Duration::from_micros(50);
        assert_eq!(
            Serving::choose(4, window),
            Serving::Threads {
                count: 4,
                busy_poll: window
            }
        );
        assert_eq!(Serving::choose(1, window), Serving::InRuntime);
        assert_eq!(Serving::choose(4, Duration::ZERO), Serving::InRuntime);
    }
}
