//! The stream state machine without sockets: phase × event → phase × decision.
use super::*;

const LOCAL: CloseReason = CloseReason::Local;
const EOF: CloseReason = CloseReason::PeerEof;

fn stream(opts: Options) -> Stream<()> {
    Stream::new(-1, (), opts, Access::socket(), Flow::default())
}
fn open() -> Stream<()> {
    stream(Options::default())
}
fn queued() -> Stream<()> {
    let mut s = open();
    s.out.extend(b"reply");
    s
}
fn closing_queued() -> Stream<()> {
    let mut s = queued();
    s.close();
    s
}
fn closing_drained() -> Stream<()> {
    let mut s = closing_queued();
    s.out.clear();
    s
}
fn closing_fin_due() -> Stream<()> {
    let mut s = closing_drained();
    assert_eq!(s.drained(), Decision::SendFin);
    s
}
fn eof_with_reply() -> Stream<()> {
    let mut s = queued();
    s.peer_eof();
    s.out.clear();
    s
}
fn failed() -> Stream<()> {
    let mut s = queued();
    s.write_failed(sys::EPIPE);
    s
}
fn fin_wanted() -> Stream<()> {
    let mut s = open();
    s.output = Output::FinWanted;
    s
}
fn fin_sent() -> Stream<()> {
    let mut s = open();
    s.output = Output::FinSent;
    s
}
fn fin_sent_at_eof() -> Stream<()> {
    let mut s = fin_sent();
    s.input_eof = true;
    s
}
fn connecting() -> Stream<()> {
    let mut s = open();
    s.phase = Phase::Connecting { then: None };
    s
}
fn connecting_queued() -> Stream<()> {
    let mut s = connecting();
    s.out.extend(b"x");
    s
}
fn connecting_then_close() -> Stream<()> {
    let mut s = connecting_queued();
    s.close();
    s
}
fn half_close() -> Stream<()> {
    stream(Options {
        half_close: true,
        ..Options::default()
    })
}
fn half_close_fin_sent() -> Stream<()> {
    let mut s = half_close();
    s.output = Output::FinSent;
    s
}
fn half_close_closing() -> Stream<()> {
    let mut s = half_close();
    s.out.extend(b"x");
    s.close();
    s
}
fn borrowed_closing() -> Stream<()> {
    let mut s = stream(Options {
        borrow: true,
        ..Options::default()
    });
    s.close();
    s
}
fn pipe_closing() -> Stream<()> {
    let mut s = open();
    s.access.is_socket = false;
    s
}

const fn end(reason: CloseReason, err: Errno, fate: FdFate) -> Decision {
    Decision::Terminate { reason, err, fate }
}

type Setup = fn() -> Stream<()>;
type Event = fn(&mut Stream<()>) -> Decision;

/// (row, start, event, phase after, decision)
#[rustfmt::skip]
const TABLE: &[(&str, Setup, Event, Phase, Decision)] = &[
    ("open × close", open, |s| s.close(), Phase::Closing(LOCAL), Decision::SendFin),
    ("open × close, output queued", queued, |s| s.close(), Phase::Closing(LOCAL), Decision::Flush { rearm: true }),
    ("open × peer EOF", open, |s| s.peer_eof(), Phase::Closing(EOF), end(EOF, 0, FdFate::Close)),
    ("open × peer EOF, reply queued", queued, |s| s.peer_eof(), Phase::Closing(EOF), Decision::Flush { rearm: false }),
    ("open × shutdown", open, |s| s.shutdown(), Phase::Open, Decision::SendFin),
    ("open × shutdown, output queued", queued, |s| s.shutdown(), Phase::Open, Decision::Nothing),
    ("open × abort", open, |s| s.abort(), Phase::Open, end(CloseReason::Abort, 0, FdFate::Reset)),
    ("open × drained", open, |s| s.drained(), Phase::Open, Decision::Nothing),
    ("open × input drained", open, |s| s.input_drained(), Phase::Open, Decision::Nothing),
    ("open × HUP, input not at EOF", open, |s| s.hung_up(None), Phase::Open, Decision::Nothing),
    ("open × ERR with SO_ERROR", open, |s| s.hung_up(Some(sys::ECONNRESET)), Phase::Open, end(CloseReason::PeerReset, sys::ECONNRESET, FdFate::Close)),
    ("open × ERR without SO_ERROR", open, |s| s.hung_up(Some(0)), Phase::Open, end(CloseReason::Error, sys::EIO, FdFate::Close)),
    ("closing × close again", closing_queued, |s| s.close(), Phase::Closing(LOCAL), Decision::Nothing),
    ("closing × drained", closing_drained, |s| s.drained(), Phase::Closing(LOCAL), Decision::SendFin),
    ("closing × FIN sent, input open", closing_fin_due, |s| s.fin_sent(), Phase::Closing(LOCAL), end(LOCAL, 0, FdFate::Linger)),
    ("closing(peer EOF) × drained", eof_with_reply, |s| s.drained(), Phase::Closing(EOF), end(EOF, 0, FdFate::Close)),
    ("closing × write failed", closing_queued, |s| { s.write_failed(sys::ECONNRESET); s.input_drained() }, Phase::Failed(sys::ECONNRESET), end(CloseReason::PeerReset, sys::ECONNRESET, FdFate::Close)),
    ("failed × drained", failed, |s| s.drained(), Phase::Failed(sys::EPIPE), end(CloseReason::PeerReset, sys::EPIPE, FdFate::Close)),
    ("failed × input drained", failed, |s| s.input_drained(), Phase::Failed(sys::EPIPE), end(CloseReason::PeerReset, sys::EPIPE, FdFate::Close)),
    ("failed × close", failed, |s| s.close(), Phase::Failed(sys::EPIPE), end(CloseReason::PeerReset, sys::EPIPE, FdFate::Close)),
    ("failed × abort: the failure wins", failed, |s| s.abort(), Phase::Failed(sys::EPIPE), end(CloseReason::PeerReset, sys::EPIPE, FdFate::Reset)),
    ("failed × shutdown", failed, |s| s.shutdown(), Phase::Failed(sys::EPIPE), Decision::Nothing),
    ("failed × peer EOF", failed, |s| s.peer_eof(), Phase::Failed(sys::EPIPE), end(CloseReason::PeerReset, sys::EPIPE, FdFate::Close)),
    ("failed × second failure keeps the first", failed, |s| { s.write_failed(sys::EIO); s.input_drained() }, Phase::Failed(sys::EPIPE), end(CloseReason::PeerReset, sys::EPIPE, FdFate::Close)),
    ("FIN wanted × drained", fin_wanted, |s| s.drained(), Phase::Open, Decision::SendFin),
    ("FIN wanted × peer EOF", fin_wanted, |s| s.peer_eof(), Phase::Closing(LOCAL), Decision::SendFin),
    ("FIN sent × peer EOF", fin_sent, |s| s.peer_eof(), Phase::Closing(LOCAL), end(LOCAL, 0, FdFate::Close)),
    ("FIN sent × HUP after EOF", fin_sent_at_eof, |s| s.hung_up(None), Phase::Open, end(LOCAL, 0, FdFate::Close)),
    ("FIN sent × shutdown again", fin_sent, |s| s.shutdown(), Phase::Open, Decision::Nothing),
    ("connecting × close", connecting, |s| s.close(), Phase::Connecting { then: Some(LOCAL) }, end(LOCAL, 0, FdFate::Close)),
    ("connecting × close, bytes queued", connecting_queued, |s| s.close(), Phase::Connecting { then: Some(LOCAL) }, Decision::Flush { rearm: true }),
    ("connecting × shutdown", connecting_queued, |s| s.shutdown(), Phase::Connecting { then: None }, Decision::Nothing),
    ("connecting × connected", connecting, |s| s.connected(0), Phase::Open, Decision::Nothing),
    ("connecting × refused", connecting, |s| s.connected(libc::ECONNREFUSED), Phase::Connecting { then: None }, end(CloseReason::Error, libc::ECONNREFUSED, FdFate::Close)),
    ("connecting(close) × connected", connecting_then_close, |s| s.connected(0), Phase::Closing(LOCAL), Decision::Nothing),
    ("half-close × peer EOF", half_close, |s| s.peer_eof(), Phase::Open, Decision::DeliverEof),
    ("half-close, FIN sent × peer EOF", half_close_fin_sent, |s| s.peer_eof(), Phase::Open, end(LOCAL, 0, FdFate::Close)),
    ("half-close, closing × peer EOF", half_close_closing, |s| s.peer_eof(), Phase::Closing(LOCAL), Decision::Flush { rearm: false }),
    ("borrowed, closing × FIN sent", borrowed_closing, |s| s.fin_sent(), Phase::Closing(LOCAL), end(LOCAL, 0, FdFate::Close)),
    ("pipe × close: no FIN on a pipe", pipe_closing, |s| s.close(), Phase::Closing(LOCAL), end(LOCAL, 0, FdFate::Close)),
];

#[test]
fn every_transition_of_the_table() {
    for (row, setup, event, phase, decision) in TABLE {
        let mut s = setup();
        assert_eq!(event(&mut s), *decision, "{row}: decision");
        assert_eq!(s.phase, *phase, "{row}: phase");
    }
}

#[test]
fn interest_follows_the_state() {
    let mut s = open();
    assert_eq!(s.wanted_interest(), ev::IN | ev::RDHUP);
    s.paused = true;
    assert_eq!(s.wanted_interest(), 0, "paused: no reading");
    s.out.extend(b"x");
    assert_eq!(s.wanted_interest(), ev::OUT);
    s.write_failed(sys::EPIPE);
    assert_eq!(
        s.wanted_interest(),
        ev::IN | ev::RDHUP,
        "a failed stream reads on despite the pause"
    );
    assert_eq!(connecting().wanted_interest(), ev::OUT);
    let mut edge = stream(Options {
        edge: true,
        ..Options::default()
    });
    assert_eq!(
        edge.wanted_interest(),
        ev::IN | ev::RDHUP | ev::PRI | ev::ET,
        "edge: urgent data too (a read stops short at its mark)"
    );
    edge.input_eof = true;
    assert_eq!(edge.wanted_interest(), ev::ET, "at EOF: nothing to read");
}

#[test]
fn ending_streams_get_no_writable_and_no_idle_timeout() {
    assert!(!open().ending() && !connecting().ending());
    assert!(closing_queued().ending() && failed().ending() && connecting_then_close().ending());
}
