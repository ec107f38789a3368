//! Timers reused from one request to the next.
//!
//! hyper's HTTP/1 server makes a timer for the header read timeout each
//! time it waits for a request head, and drops it once the head is in; the
//! response timeout is one timer per exchange. A fresh tokio timer is put
//! into the runtime's timer wheel on its first poll and taken out when
//! dropped, both under the wheel's lock: per keep-alive request that was a
//! tenth of the proxy's instructions at one connection. A dropped timer
//! here goes to a small per-thread stock instead, and the next one is that
//! timer moved to its new deadline: a later deadline is a single atomic
//! update (tokio keeps the entry where it is and files it anew only when
//! the old deadline comes), so a keep-alive request touches the wheel
//! about once per timeout period rather than twice per request. (A timer
//! moved to an earlier deadline than the one it had is filed anew, one
//! wheel operation as for a fresh timer; each timeout has a stock of its
//! own so that this does not happen in the steady state.)
//!
//! A timer in stock still fires at its old deadline (then does nothing:
//! it is left holding a waker that wakes nobody, see [`ReusedSleep`]'s
//! drop), at most once per stocked timer per timeout period.
//!
//! A fresh timer also costs a system call whenever its deadline is the
//! earliest of the runtime's timers: tokio then wakes its own driver
//! through the driver's eventfd, even from the runtime's own thread
//! (tokio-rs/tokio#5207). The upstream connect timeout is the shortest
//! one, so each new backend connection made that write; a stocked timer
//! moved to a later deadline is never filed anew, so makes none.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::task::coop::unconstrained;

/// Timers kept per thread; past this many, dropped ones are freed. About
/// as many as a thread has connections waiting at once for their next
/// request, which is what the stock serves.
const STOCK: usize = 1024;

thread_local! {
    static SPARE: RefCell<[Stock; PURPOSES]> = const {
        RefCell::new([const { Stock { runtime: None, sleeps: Vec::new() } }; PURPOSES])
    };
}

/// What a timer is for. Each purpose has a stock of its own: its timers
/// all have about the same timeout, so one from stock always moves to a
/// later deadline, the cheap case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// hyper's header read timeout.
    HeaderRead = 0,
    /// The wait for a backend's response head.
    Response = 1,
    /// Opening a backend connection.
    Connect = 2,
}

const PURPOSES: usize = 3;

/// A thread's spare timers of one purpose, all of one runtime: a timer
/// belongs to the runtime it was made in, and a thread may run another
/// runtime later.
struct Stock {
    runtime: Option<tokio::runtime::Id>,
    sleeps: Vec<Pin<Box<tokio::time::Sleep>>>,
}

fn current_runtime() -> Option<tokio::runtime::Id> {
    tokio::runtime::Handle::try_current().ok().map(|h| h.id())
}

/// A timer until `deadline`, from the stock for `purpose` when it has one.
pub fn sleep_until(purpose: Purpose, deadline: Instant) -> ReusedSleep {
    // The one look at which runtime this is (a thread-local and a reference
    // count taken and given back): the timer remembers it for its return.
    let runtime = current_runtime();
    let spare = SPARE
        .try_with(|spare| {
            let stock = &mut spare.borrow_mut()[purpose as usize];
            if stock.sleeps.is_empty() || stock.runtime != runtime {
                return None;
            }
            stock.sleeps.pop()
        })
        .ok()
        .flatten();
    let sleep = match spare {
        Some(mut sleep) => {
            sleep.as_mut().reset(deadline.into());
            sleep
        }
        None => Box::pin(tokio::time::sleep_until(deadline.into())),
    };
    ReusedSleep {
        sleep: Some(sleep),
        purpose,
        runtime,
        polled: false,
    }
}

/// `future`'s output, or `None` once `timeout` has passed first: as
/// `tokio::time::timeout`, with a timer from the stock for `purpose`,
/// taken only if `future` has to wait (a first read whose bytes are
/// already there needs none).
pub async fn timeout<F: Future>(
    purpose: Purpose,
    timeout: Duration,
    future: F,
) -> Option<F::Output> {
    timeout_at(
        purpose,
        tokio::time::Instant::now().into_std() + timeout,
        future,
    )
    .await
}

/// As [`timeout`], until `deadline`.
pub async fn timeout_at<F: Future>(
    purpose: Purpose,
    deadline: Instant,
    future: F,
) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut timer: Option<ReusedSleep> = None;
    poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        let timer = timer.get_or_insert_with(|| sleep_until(purpose, deadline));
        Pin::new(timer).poll(cx).map(|()| None)
    })
    .await
}

/// How many timers this thread holds in stock for `purpose`.
#[cfg(test)]
pub fn stocked_for(purpose: Purpose) -> usize {
    SPARE.with(|spare| spare.borrow()[purpose as usize].sleeps.len())
}

/// A tokio timer that goes back to the stock when dropped.
pub struct ReusedSleep {
    /// `None` only while being dropped.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The stock it goes back to.
    purpose: Purpose,
    /// The runtime it was made in (and so belongs to).
    runtime: Option<tokio::runtime::Id>,
    /// Whether it was polled here, so holds this owner's waker.
    polled: bool,
}

impl ReusedSleep {
    pub fn reset(&mut self, deadline: Instant) {
        if let Some(sleep) = self.sleep.as_mut() {
            sleep.as_mut().reset(deadline.into());
        }
    }
}

impl Future for ReusedSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.polled = true;
        match this.sleep.as_mut() {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl Drop for ReusedSleep {
    fn drop(&mut self) {
        let Some(mut sleep) = self.sleep.take() else {
            return;
        };
        if self.polled {
            // The timer holds the waker of the task that polled it, and a
            // waker keeps its task's memory: swap in one that holds
            // nothing (outside the task budget, which could refuse the
            // poll), so a stocked timer keeps no finished task alive and
            // wakes nobody when its old deadline comes.
            let mut nobody = Context::from_waker(Waker::noop());
            let _ = Pin::new(&mut unconstrained(sleep.as_mut())).poll(&mut nobody);
        }
        // After the thread's stock is gone (the thread is ending), the
        // timer is simply freed. A stock holds the timers of one runtime:
        // a timer of another replaces them. (One of a runtime that has
        // ended may wait in stock; no later runtime takes it.)
        let Some(runtime) = self.runtime else {
            return;
        };
        let _ = SPARE.try_with(|spare| {
            let stock = &mut spare.borrow_mut()[self.purpose as usize];
            if stock.runtime != Some(runtime) {
                stock.sleeps.clear();
                stock.runtime = Some(runtime);
            }
            if stock.sleeps.len() < STOCK {
                stock.sleeps.push(sleep);
            }
        });
    }
}

/// hyper's timer for the HTTP/1 server, which uses it for the header read
/// timeout only: [`ReusedSleep`]s of that purpose.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReusingTimer;

impl hyper::rt::Sleep for ReusedSleep {}

impl hyper::rt::Timer for ReusingTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(sleep_until(Purpose::HeaderRead, self.now() + duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(sleep_until(Purpose::HeaderRead, deadline))
    }

    /// tokio's clock (which tests can pause), as the deadlines' timers use.
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<ReusedSleep>() {
            Some(sleep) => sleep.get_mut().reset(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::Wake;

    use hyper::rt::Timer;

    use super::*;

    const P: Purpose = Purpose::Response;

    fn stocked() -> usize {
        stocked_for(P)
    }

    fn clear_stock() {
        SPARE.with(|spare| spare.borrow_mut().iter_mut().for_each(|s| s.sleeps.clear()));
    }

    fn now() -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn is_pending(sleep: &mut ReusedSleep) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(sleep).poll(&mut cx).is_pending()
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_from_stock_fires_at_its_new_deadline_not_its_old_one() {
        clear_stock();
        let mut first = sleep_until(P, now() + Duration::from_secs(10));
        assert!(is_pending(&mut first), "polled once: in the wheel");
        drop(first);
        assert_eq!(stocked(), 1);

        let mut second = sleep_until(P, now() + Duration::from_secs(20));
        assert_eq!(stocked(), 0, "the stocked timer was taken");
        tokio::time::advance(Duration::from_secs(15)).await;
        assert!(is_pending(&mut second), "past the old deadline only");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!is_pending(&mut second), "past the new deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_that_fired_before_it_was_stocked_waits_again() {
        clear_stock();
        let mut fired = sleep_until(P, now() + Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!is_pending(&mut fired));
        drop(fired);

        let mut again = sleep_until(P, now() + Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(is_pending(&mut again));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(!is_pending(&mut again));
    }

    #[tokio::test(start_paused = true)]
    async fn hypers_reset_moves_the_deadline_of_the_same_timer() {
        let timer = ReusingTimer;
        let mut sleep = timer.sleep(Duration::from_secs(10));
        timer.reset(&mut sleep, timer.now() + Duration::from_secs(30));
        let sleep = sleep
            .as_mut()
            .downcast_mut_pin::<ReusedSleep>()
            .expect("still the timer it made")
            .get_mut();
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(is_pending(sleep));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!is_pending(sleep));
    }

    #[test]
    fn a_timer_of_another_runtime_is_not_taken_from_stock() {
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        first.block_on(async {
            clear_stock();
            drop(sleep_until(P, now() + Duration::from_secs(10)));
            assert_eq!(stocked(), 1);
        });
        drop(first);
        let second = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        second.block_on(async {
            let mut sleep = sleep_until(P, now() + Duration::from_secs(10));
            assert_eq!(stocked(), 1, "the first runtime's timer stayed put");
            assert!(is_pending(&mut sleep), "a timer of this runtime");
            drop(sleep);
            assert_eq!(stocked(), 1, "the stock now holds this runtime's");
        });
    }

    struct Owner;

    impl Wake for Owner {
        fn wake(self: Arc<Self>) {}
    }

    #[tokio::test(start_paused = true)]
    async fn a_stocked_timer_lets_go_of_its_last_owners_waker() {
        clear_stock();
        let owner = Arc::new(Owner);
        let waker = Waker::from(owner.clone());
        let mut sleep = sleep_until(P, now() + Duration::from_secs(10));
        assert!(
            Pin::new(&mut sleep)
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        drop(waker);
        assert_eq!(Arc::strong_count(&owner), 2, "the timer holds the waker");
        drop(sleep);
        assert_eq!(stocked(), 1);
        assert_eq!(Arc::strong_count(&owner), 1, "the stocked timer does not");
    }

    #[tokio::test(start_paused = true)]
    async fn each_purpose_takes_from_its_own_stock() {
        clear_stock();
        drop(sleep_until(
            Purpose::Response,
            now() + Duration::from_secs(60),
        ));
        let header = sleep_until(Purpose::HeaderRead, now() + Duration::from_secs(10));
        assert_eq!(stocked(), 1, "a header read timer is not a response timer");
        drop(header);
        let _response = sleep_until(Purpose::Response, now() + Duration::from_secs(60));
        assert_eq!(stocked(), 0);
        let header_stock =
            SPARE.with(|spare| spare.borrow()[Purpose::HeaderRead as usize].sleeps.len());
        assert_eq!(header_stock, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_gives_the_output_of_a_future_that_ends_first() {
        let answered = timeout(P, Duration::from_secs(5), async {
            tokio::time::sleep(Duration::from_secs(4)).await;
            "answer"
        });
        assert_eq!(answered.await, Some("answer"));
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_gives_none_once_its_time_has_passed() {
        let started = now();
        let slow = timeout(P, Duration::from_secs(5), std::future::pending::<()>());
        assert_eq!(slow.await, None);
        assert_eq!(now() - started, Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_takes_its_timer_from_stock_and_gives_it_back() {
        clear_stock();
        drop(sleep_until(P, now() + Duration::from_secs(5)));
        assert_eq!(stocked(), 1);
        let waited = timeout(P, Duration::from_secs(5), async {
            tokio::task::yield_now().await;
            assert_eq!(stocked(), 0, "the stocked timer is in use");
        });
        assert_eq!(waited.await, Some(()));
        assert_eq!(stocked(), 1, "and back in stock");
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_takes_no_timer_for_a_future_ready_at_once() {
        clear_stock();
        drop(sleep_until(P, now() + Duration::from_secs(5)));
        let at_once = timeout(P, Duration::from_secs(5), async {
            assert_eq!(stocked(), 1, "no timer taken yet");
        });
        assert_eq!(at_once.await, Some(()));
        assert_eq!(stocked(), 1);
    }

    #[tokio::test]
    async fn the_stock_keeps_at_most_its_size() {
        clear_stock();
        let deadline = now() + Duration::from_secs(60);
        let many: Vec<ReusedSleep> = (0..STOCK + 10).map(|_| sleep_until(P, deadline)).collect();
        drop(many);
        assert_eq!(stocked(), STOCK);
    }
}
