//! Node-wide guest scheduling: at most `slots` guests run at once on this node, and the
//! next one to run is taken from per-tenant queues in weighted fair order, so that a tenant
//! flooding the node cannot starve another.
//!
//! Every tenant has a [`Lane`]: its weight (`quotas.weight`, default 1), its guests running
//! now and its virtual time, the time its guests held slots divided by its weight
//! (start-time fair queueing). A free slot goes to the waiting tenant with the lowest
//! virtual time (ties in turn); a tenant that starts waiting after being idle starts at the
//! virtual time of the last tenant served, so idleness is not saved up. Running guests
//! yield to the executor at every fuel slice, every slice of host calls
//! ([`crate::runtime::host_slice`]) and every epoch tick; while others wait, a guest at
//! one of those points whose tenant is ahead of the first waiting tenant hands it its slot
//! and waits at the head of its own tenant's queue. A guest that waits (for a write to
//! commit, a reply, a timer) while others wait for a slot gives its slot back and, once
//! woken, queues again at the head of its tenant's queue: a slot counts guests running, not
//! guests waiting. A call from one agent to another runs on its caller's slot (the caller's
//! future polls it), so call chains cannot deadlock on slots.
//!
//! Uncontended, taking a slot is a load and two atomic increments, and a running guest
//! checks one atomic per poll.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use super::grant::Grant;

/// A tenant's place in the scheduler: its weight, its guests running now and its virtual
/// time.
#[derive(Debug)]
pub struct Lane {
    weight: AtomicU32,
    running: AtomicU32,
    /// Nanoseconds its guests held slots, divided by its weight (changed under the queues'
    /// lock).
    virtual_ns: AtomicU64,
}

impl Lane {
    fn weight(&self) -> u64 {
        u64::from(self.weight.load(Ordering::Relaxed).max(1))
    }

    fn vt(&self) -> u64 {
        self.virtual_ns.load(Ordering::Relaxed)
    }

    /// Count `held` of slot time against the tenant.
    fn charge(&self, held: Duration) {
        let ns = u64::try_from(held.as_nanos()).unwrap_or(u64::MAX) / self.weight();
        self.virtual_ns.store(self.vt().saturating_add(ns), Ordering::Relaxed);
    }

    /// Guests of the tenant running now.
    pub fn running_now(&self) -> u32 {
        self.running.load(Ordering::Relaxed)
    }
}

/// The queued guests of one tenant, oldest first.
#[derive(Debug)]
struct LaneQueue {
    lane: Arc<Lane>,
    waiters: VecDeque<Arc<Grant>>,
}

/// The tenants with queued guests, in turn order.
#[derive(Debug, Default)]
struct Queues {
    lanes: Vec<LaneQueue>,
    /// Where the next tie is broken.
    next: usize,
    /// The virtual time of the tenant served last.
    clock: u64,
}

impl Queues {
    /// The waiting tenant that should run next: the lowest virtual time; ties go to the
    /// first from `next` on.
    fn best(&self) -> Option<usize> {
        let n = self.lanes.len();
        let mut best: Option<(usize, u64)> = None;
        for k in 0..n {
            let i = (self.next + k) % n;
            let vt = self.lanes[i].lane.vt();
            if best.is_none_or(|(_, b)| vt < b) {
                best = Some((i, vt));
            }
        }
        best.map(|(i, _)| i)
    }

    fn push(&mut self, lane: &Arc<Lane>, g: Arc<Grant>, front: bool) {
        let q = match self.lanes.iter().position(|q| Arc::ptr_eq(&q.lane, lane)) {
            Some(i) => &mut self.lanes[i],
            None => {
                if lane.running_now() == 0 {
                    // Idle until now: it starts where the others are.
                    lane.virtual_ns.store(lane.vt().max(self.clock), Ordering::Relaxed);
                }
                self.lanes.push(LaneQueue { lane: lane.clone(), waiters: VecDeque::new() });
                let last = self.lanes.len() - 1;
                &mut self.lanes[last]
            }
        };
        if front { q.waiters.push_front(g) } else { q.waiters.push_back(g) }
    }

    /// Take waiter `g` of `lane` out; whether it was there.
    fn remove(&mut self, lane: &Arc<Lane>, g: &Arc<Grant>) -> bool {
        let Some(i) = self.lanes.iter().position(|q| Arc::ptr_eq(&q.lane, lane)) else { return false };
        let q = &mut self.lanes[i];
        let before = q.waiters.len();
        q.waiters.retain(|w| !Arc::ptr_eq(w, g));
        let removed = q.waiters.len() < before;
        if q.waiters.is_empty() {
            self.lanes.remove(i);
        }
        removed
    }

    /// Give a slot to the oldest waiter of tenant `i`.
    fn grant(&mut self, i: usize) {
        let q = &mut self.lanes[i];
        self.clock = self.clock.max(q.lane.vt());
        if let Some(g) = q.waiters.pop_front() {
            q.lane.running.fetch_add(1, Ordering::Relaxed);
            g.give();
        }
        if q.waiters.is_empty() {
            self.lanes.remove(i);
            self.next = i;
        } else {
            self.next = i + 1;
        }
    }
}

/// The guests running on this node and the tenants' queues.
#[derive(Debug)]
pub struct Scheduler {
    slots: u32,
    running: AtomicU32,
    /// Guests queued (changed under the queues' lock).
    waiting: AtomicU32,
    queues: Mutex<Queues>,
    lanes: RwLock<HashMap<String, Arc<Lane>>>,
}

impl Scheduler {
    /// At most `slots` guests running at once (0: one per core).
    pub fn new(slots: u32) -> Self {
        let slots = match slots {
            0 => std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
            n => n,
        };
        Self {
            slots,
            running: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
            queues: Mutex::default(),
            lanes: RwLock::default(),
        }
    }

    /// Guests that may run at once.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Guests running now.
    pub fn running(&self) -> u32 {
        self.running.load(Ordering::Relaxed)
    }

    /// Guests waiting for a slot now.
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The lane of `tenant`, with `weight` from now on.
    pub fn lane(&self, tenant: &str, weight: u32) -> Arc<Lane> {
        if let Some(l) = self.lanes.read().unwrap_or_else(PoisonError::into_inner).get(tenant) {
            l.weight.store(weight, Ordering::Relaxed);
            return l.clone();
        }
        let mut lanes = self.lanes.write().unwrap_or_else(PoisonError::into_inner);
        let l = lanes.entry(tenant.to_owned()).or_insert_with(|| {
            Arc::new(Lane { weight: AtomicU32::new(weight), running: AtomicU32::new(0), virtual_ns: AtomicU64::new(0) })
        });
        l.weight.store(weight, Ordering::Relaxed);
        l.clone()
    }

    /// Forget a tenant (deleted); its guests still running finish on their lane.
    pub fn forget(&self, tenant: &str) {
        self.lanes.write().unwrap_or_else(PoisonError::into_inner).remove(tenant);
    }

    /// Run guest `fut` of `lane`'s tenant when it gets a slot, giving the slot up to a
    /// tenant behind it at its yields. It waits at most until `deadline`; from its first
    /// slot on, at most `timeout` more: past that it is polled regardless, so that the
    /// runtime ends it at once.
    pub async fn run<F: Future>(
        &self,
        lane: &Arc<Lane>,
        deadline: Option<std::time::Instant>,
        timeout: Duration,
        fut: F,
    ) -> F::Output {
        let mut fut = pin!(fut);
        let mut turn = Turn { sched: self, lane, state: State::Idle, since: None, resumed: false };
        let deadline = deadline.map(Instant::from_std);
        // When it first got a slot: its own timeout runs from then.
        let mut started: Option<Instant> = None;
        let mut timer: Option<(Instant, Pin<Box<tokio::time::Sleep>>)> = None;
        // From its second poll on (from its first while others wait), a guest is polled with
        // a waker that tells a yield (a wake during its own poll) from a wait; a yield then
        // goes through tokio's `yield_now`, which lets the worker poll the network first, so
        // that CPU-bound guests cannot hold other requests' connections back; at a wait it
        // gives its slot back while others wait ([`Turn::park`]).
        let mut yields: Option<Arc<SelfWake>> = None;
        let mut polls = 0u32;
        loop {
            let step = std::future::poll_fn(|cx| {
                let held = turn.hold(cx);
                if held && started.is_none() {
                    started = turn.since;
                }
                if !held {
                    let own = started.map(|s| s + timeout);
                    let Some(u) = [deadline, own].into_iter().flatten().min() else { return Poll::Pending };
                    if timer.as_ref().is_none_or(|(at, _)| *at != u) {
                        timer = Some((u, Box::pin(tokio::time::sleep_until(u))));
                    }
                    if let Some((_, t)) = timer.as_mut()
                        && t.as_mut().poll(cx).is_pending()
                    {
                        return Poll::Pending;
                    }
                    // Past its deadline: polled without a slot, the runtime ends it now.
                }
                polls = polls.saturating_add(1);
                if polls == 1 && self.waiting.load(Ordering::Relaxed) == 0 {
                    return fut.as_mut().poll(cx).map(Some);
                }
                let w = yields.get_or_insert_with(|| Arc::new(SelfWake::default()));
                let waker = w.enter(cx);
                let out = fut.as_mut().poll(&mut Context::from_waker(&waker));
                let yielded = w.leave();
                match out {
                    Poll::Ready(v) => Poll::Ready(Some(v)),
                    Poll::Pending if yielded => Poll::Ready(None),
                    Poll::Pending => {
                        turn.park();
                        Poll::Pending
                    }
                }
            })
            .await;
            match step {
                Some(v) => return v,
                None => tokio::task::yield_now().await,
            }
        }
    }

    fn queues(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A free slot, if nobody waits for one.
    fn try_take(&self, lane: &Lane) -> bool {
        if self.waiting.load(Ordering::SeqCst) != 0 || !self.take_slot() {
            return false;
        }
        lane.running.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn take_slot(&self) -> bool {
        self.running.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| (r < self.slots).then_some(r + 1)).is_ok()
    }

    /// Queue a guest of `lane` (at the head of its tenant's queue when it gave its slot up).
    fn enqueue(&self, q: &mut Queues, lane: &Arc<Lane>, cx: &Context<'_>, front: bool) -> Arc<Grant> {
        let g = Grant::new(cx);
        q.push(lane, g.clone(), front);
        self.waiting.fetch_add(1, Ordering::SeqCst);
        g
    }

    /// Give the free slots to waiters, in fair order.
    fn fill(&self, q: &mut Queues) {
        while self.waiting.load(Ordering::SeqCst) > 0 {
            let Some(i) = q.best() else { return };
            if !self.take_slot() {
                return;
            }
            q.grant(i);
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A guest of `lane` that held a slot since `since` is done with it.
    fn release(&self, lane: &Lane, since: Instant) {
        lane.running.fetch_sub(1, Ordering::Relaxed);
        if self.waiting.load(Ordering::SeqCst) != 0 {
            let mut q = self.queues();
            lane.charge(since.elapsed());
            self.running.fetch_sub(1, Ordering::SeqCst);
            self.fill(&mut q);
        } else {
            self.running.fetch_sub(1, Ordering::SeqCst);
            if self.waiting.load(Ordering::SeqCst) != 0 {
                self.fill(&mut self.queues());
            }
        }
    }

    /// A running guest of `lane` (holding its slot since `since`) at a yield while others
    /// wait: its slot goes to the first waiting tenant if that one is behind `lane`, and it
    /// queues (the cell it waits on).
    fn preempt(&self, lane: &Arc<Lane>, since: &mut Instant, cx: &Context<'_>) -> Option<Arc<Grant>> {
        let mut q = self.queues();
        let now = Instant::now();
        lane.charge(now - *since);
        *since = now;
        let i = q.best()?;
        let other = &q.lanes[i].lane;
        if Arc::ptr_eq(other, lane) || other.vt() >= lane.vt() {
            return None;
        }
        lane.running.fetch_sub(1, Ordering::Relaxed);
        q.grant(i);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        Some(self.enqueue(&mut q, lane, cx, true))
    }
}

/// The waker a guest is polled with from its second poll on: a wake while it is being
/// polled is a yield (recorded), any other goes to the task's own waker.
#[derive(Debug, Default)]
struct SelfWake {
    polling: std::sync::atomic::AtomicBool,
    woke: std::sync::atomic::AtomicBool,
    task: Mutex<Option<std::task::Waker>>,
}

impl SelfWake {
    /// Start a poll of the guest for the task polled with `cx`: the waker to poll it with.
    fn enter(self: &Arc<Self>, cx: &Context<'_>) -> std::task::Waker {
        let mut t = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if !t.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *t = Some(cx.waker().clone());
        }
        drop(t);
        self.woke.store(false, Ordering::SeqCst);
        self.polling.store(true, Ordering::SeqCst);
        std::task::Waker::from(self.clone())
    }

    /// End the poll: whether the guest woke itself (yielded) during it.
    fn leave(&self) -> bool {
        self.polling.store(false, Ordering::SeqCst);
        self.woke.swap(false, Ordering::SeqCst)
    }
}

impl std::task::Wake for SelfWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.polling.load(Ordering::SeqCst) {
            self.woke.store(true, Ordering::SeqCst);
            if self.polling.load(Ordering::SeqCst) {
                return;
            }
            // The poll ended meanwhile and may not have seen the wake: pass it on too.
        }
        if let Some(w) = self.task.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            w.wake_by_ref();
        }
    }
}

enum State {
    Idle,
    Running,
    Queued(Arc<Grant>),
}

/// One guest's claim on a slot; gives it back (or leaves the queue) when dropped.
struct Turn<'a> {
    sched: &'a Scheduler,
    lane: &'a Arc<Lane>,
    state: State,
    /// Since when it holds its slot (charged to its tenant); `None` before its first.
    since: Option<Instant>,
    /// It gave its slot back at a wait ([`Turn::park`]): it queues at the head of its
    /// tenant's queue.
    resumed: bool,
}

impl Turn<'_> {
    /// Whether the guest may run now; if not, `cx` is woken when it may.
    fn hold(&mut self, cx: &Context<'_>) -> bool {
        let s = self.sched;
        let given = match &self.state {
            State::Running => {
                if s.waiting.load(Ordering::SeqCst) == 0 {
                    return true;
                }
                let since = self.since.get_or_insert_with(Instant::now);
                match s.preempt(self.lane, since, cx) {
                    Some(g) => {
                        self.state = State::Queued(g);
                        return false;
                    }
                    None => return true,
                }
            }
            State::Queued(g) => g.poll_given(cx),
            State::Idle => {
                if s.try_take(self.lane) {
                    true
                } else {
                    let mut q = s.queues();
                    let g = s.enqueue(&mut q, self.lane, cx, self.resumed);
                    s.fill(&mut q);
                    drop(q);
                    let given = g.is_given();
                    if !given {
                        self.state = State::Queued(g);
                    }
                    given
                }
            }
        };
        if given {
            self.state = State::Running;
            self.since = Some(Instant::now());
        }
        given
    }

    /// The guest waits (in a host call, not at a yield): while others wait for a slot, it
    /// gives its slot back (the time it held it charged to its tenant) and queues again when
    /// woken. Nobody waiting, it keeps its slot.
    fn park(&mut self) {
        let s = self.sched;
        if matches!(self.state, State::Running) && s.waiting.load(Ordering::SeqCst) != 0 {
            let since = self.since.unwrap_or_else(Instant::now);
            self.state = State::Idle;
            self.resumed = true;
            s.release(self.lane, since);
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let since = self.since.unwrap_or_else(Instant::now);
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Idle => {}
            State::Running => self.sched.release(self.lane, since),
            State::Queued(g) => {
                let mut q = self.sched.queues();
                if q.remove(self.lane, &g) {
                    self.sched.waiting.fetch_sub(1, Ordering::SeqCst);
                } else if g.is_given() {
                    drop(q);
                    self.sched.release(self.lane, since);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    fn cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    fn turn<'a>(s: &'a Scheduler, lane: &'a Arc<Lane>) -> Turn<'a> {
        Turn { sched: s, lane, state: State::Idle, since: None, resumed: false }
    }

    /// Whether it holds a slot (given or taken), without polling it.
    fn running(t: &Turn<'_>) -> bool {
        match &t.state {
            State::Running => true,
            State::Queued(g) => g.is_given(),
            State::Idle => false,
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn slots_go_in_weighted_fair_order() {
        let s = Scheduler::new(1);
        let (a, b) = (s.lane("a", 2), s.lane("b", 1));
        let mut first = turn(&s, &a);
        assert!(first.hold(&cx()), "a free slot is taken at once");
        let mut qa: Vec<_> = (0..12).map(|_| turn(&s, &a)).collect();
        let mut qb: Vec<_> = (0..12).map(|_| turn(&s, &b)).collect();
        for t in qa.iter_mut().chain(qb.iter_mut()) {
            assert!(!t.hold(&cx()), "the slot is taken: it waits");
        }
        assert_eq!(s.waiting(), 24);
        tokio::time::advance(MS).await;
        drop(first);
        // Every guest holds the one slot for 1 ms: a (weight 2) gets about twice b's turns,
        // b never waits for more than two of a's, and a never for more than one of b's.
        let mut order = String::new();
        for _ in 0..12 {
            let (q, name) = match (qa.iter().position(running), qb.iter().position(running)) {
                (Some(_), None) => (&mut qa, 'a'),
                (None, Some(_)) => (&mut qb, 'b'),
                other => panic!("exactly one guest runs, got {other:?}"),
            };
            let i = q.iter().position(running).unwrap_or_default();
            assert!(q[i].hold(&cx()));
            order.push(name);
            tokio::time::advance(MS).await;
            q.remove(i);
        }
        // From a start where a had run once: "babaabaabaab".
        assert!((7..=8).contains(&order.matches('a').count()), "{order}");
        assert!(!order.contains("aaa") && !order.contains("bb"), "{order}");
        drop((qa, qb));
        assert_eq!((s.running(), s.waiting()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_ahead_hands_its_slot_over_at_a_yield() {
        let s = Scheduler::new(2);
        let (flood, quiet) = (s.lane("flood", 1), s.lane("quiet", 1));
        let mut f1 = turn(&s, &flood);
        let mut f2 = turn(&s, &flood);
        assert!(f1.hold(&cx()) && f2.hold(&cx()));
        // More of the same tenant wait; its running guests keep their slots.
        let mut f3 = turn(&s, &flood);
        assert!(!f3.hold(&cx()));
        tokio::time::advance(MS).await;
        assert!(f1.hold(&cx()), "no hand-over within a tenant");
        // The quiet tenant arrives: the next yield of a flood guest hands it its slot.
        let mut q = turn(&s, &quiet);
        assert!(!q.hold(&cx()));
        assert!(!f1.hold(&cx()), "a flood guest ahead of the quiet tenant gives its slot up");
        assert!(q.hold(&cx()), "the quiet tenant runs");
        assert_eq!((flood.running_now(), quiet.running_now()), (1, 1));
        tokio::time::advance(MS).await;
        assert!(f2.hold(&cx()) && q.hold(&cx()), "the quiet tenant is behind: nobody hands over");
        // The quiet guest ends: the preempted flood guest (head of its queue) goes first.
        drop(q);
        assert!(f1.hold(&cx()), "the preempted guest resumes before the newer one");
        assert!(!f3.hold(&cx()));
        drop((f1, f2));
        assert!(f3.hold(&cx()));
        drop(f3);
        assert_eq!((s.running(), s.waiting()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_guest_waiting_in_a_host_call_gives_its_slot_to_a_waiter() {
        let s = Scheduler::new(1);
        let (flood, quiet) = (s.lane("flood", 1), s.lane("quiet", 1));
        let mut f1 = turn(&s, &flood);
        assert!(f1.hold(&cx()));
        f1.park();
        assert!(f1.hold(&cx()) && s.running() == 1, "nobody waits: a waiting guest keeps its slot");
        let mut f2 = turn(&s, &flood);
        let mut q = turn(&s, &quiet);
        assert!(!f2.hold(&cx()) && !q.hold(&cx()));
        tokio::time::advance(MS).await;
        // f1 waits for a write to commit: its slot goes to the tenant behind.
        f1.park();
        assert_eq!((flood.running_now(), quiet.running_now()), (0, 1));
        assert!(q.hold(&cx()), "the quiet tenant runs while the flood guest waits");
        // Woken, f1 queues again, ahead of its tenant's newer guest.
        assert!(!f1.hold(&cx()));
        drop(q);
        assert!(f1.hold(&cx()) && !f2.hold(&cx()), "the parked guest resumes before the newer one");
        drop(f1);
        assert!(f2.hold(&cx()));
        drop(f2);
        assert_eq!((s.running(), s.waiting()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn leaving_the_queue_or_a_given_slot_gives_everything_back() {
        let s = Scheduler::new(1);
        let (a, b) = (s.lane("a", 1), s.lane("b", 1));
        let mut t1 = turn(&s, &a);
        assert!(t1.hold(&cx()));
        let mut t2 = turn(&s, &b);
        let mut t3 = turn(&s, &b);
        assert!(!t2.hold(&cx()) && !t3.hold(&cx()));
        drop(t2);
        assert_eq!(s.waiting(), 1);
        // Given the slot, dropped before it ran: the slot is not lost.
        drop(t1);
        drop(t3);
        assert_eq!((s.running(), s.waiting()), (0, 0));
        let mut t4 = turn(&s, &a);
        assert!(t4.hold(&cx()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_guest_is_polled_at_its_deadline() {
        let s = Scheduler::new(1);
        let a = s.lane("a", 1);
        let mut holder = turn(&s, &a);
        assert!(holder.hold(&cx()));
        let start = Instant::now();
        let deadline = start.into_std() + Duration::from_millis(50);
        // The guest never gets the slot; past its deadline it is polled anyway.
        let polled = s.run(&a, Some(deadline), Duration::from_secs(60), async { Instant::now() }).await;
        assert!(polled - start >= Duration::from_millis(50));
        drop(holder);
        assert_eq!((s.running(), s.waiting()), (0, 0));
    }
}
