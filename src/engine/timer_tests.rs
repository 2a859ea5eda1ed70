//! The deadlines keep only what may still fire: cancelled timers' deadlines leave them (at the
//! head at once, all of them once their number has doubled), so neither memory nor wakeups grow
//! with cancels.
use super::*;
use crate::engine::{sys, CloseReason, Trace};

#[derive(Clone)]
struct Nop;

impl Handler for Nop {
    type Posted = ();
    fn on_accept(&self, _: &Loop<Self>, _: Id, _: Id) {}
    fn on_data(&self, _: &Loop<Self>, _: Id, _: &[u8]) {}
    fn on_writable(&self, _: &Loop<Self>, _: Id) {}
    fn on_close(&self, _: &Loop<Self>, _: Id, _: CloseReason, _: sys::Errno) {}
    fn on_timer(&self, _: &Loop<Self>, _: Id) {}
    fn on_signal(&self, _: &Loop<Self>, _: Id, _: i32) {}
    fn on_datagram(&self, _: &Loop<Self>, _: Id, _: &[u8], _: &sys::RawAddr, _: bool) {}
    fn on_datagram_error(&self, _: &Loop<Self>, _: Id, _: sys::Errno) {}
    fn run_posted(_: &Loop<Self>, _: ()) {}
    fn on_trace(_: &Loop<Self>, _: Id, _: Trace) {}
}

fn deadline_count(lp: &Loop<Nop>) -> usize {
    lp.state.borrow().timers.len()
}

#[test]
fn cancelled_timers_do_not_accumulate() {
    let lp = Loop::<Nop>::new().expect("loop");
    lp.timer_start(Duration::from_secs(3600), None, Nop)
        .expect("timer");
    for i in 0..100_000 {
        let id = lp
            .timer_start(Duration::from_secs(60), None, Nop)
            .expect("timer");
        lp.timer_cancel(id).expect("cancel");
        if i % 100 == 0 {
            lp.run_once(0).expect("step");
        }
    }
    lp.run_once(0).expect("step");
    assert!(
        deadline_count(&lp) < 2 * PRUNE_MIN,
        "{} deadlines kept for 1 timer",
        deadline_count(&lp)
    );
}

#[test]
fn a_cancelled_deadline_does_not_shorten_the_wait() {
    let lp = Loop::<Nop>::new().expect("loop");
    lp.timer_start(Duration::from_secs(60), None, Nop)
        .expect("timer");
    let soon = lp
        .timer_start(Duration::from_millis(20), None, Nop)
        .expect("timer");
    assert!(lp.next_timeout() <= 20);
    lp.timer_cancel(soon).expect("cancel");
    assert!(
        lp.next_timeout() > 50_000,
        "next timeout {} ms",
        lp.next_timeout()
    );
    assert_eq!(deadline_count(&lp), 1);
}

#[test]
fn live_deadlines_survive_pruning() {
    let lp = Loop::<Nop>::new().expect("loop");
    let kept: Vec<Id> = (0..3 * PRUNE_MIN as u64)
        .map(|i| {
            let id = lp
                .timer_start(Duration::from_secs(60 + i), None, Nop)
                .expect("timer");
            if i % 3 == 0 {
                lp.timer_cancel(id).expect("cancel");
            }
            lp.run_once(0).expect("step");
            id
        })
        .collect();
    assert_eq!(lp.stats().timers as usize, 2 * PRUNE_MIN);
    let st = lp.state.borrow();
    for (i, id) in kept.iter().enumerate().filter(|(i, _)| i % 3 != 0) {
        assert!(
            st.timers.iter().any(|(_, _, t)| t == id),
            "live timer {i} lost"
        );
    }
    assert!(
        st.timers.len() <= 2 * (2 * PRUNE_MIN) + PRUNE_MIN,
        "{} deadlines",
        st.timers.len()
    );
}
