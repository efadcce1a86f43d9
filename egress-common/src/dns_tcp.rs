//! DNS over TCP: following a resolver's answer stream segment by segment, so that a message is
//! only ever read where the stream says one starts.
//!
//! A DNS-over-TCP stream is a sequence of messages, each behind a two-byte length
//! (RFC 1035 §4.2.2). Reading a message anywhere else (after a gap, a lost copy, a
//! "resynchronisation") would let whoever controls bytes inside a message, such as the data of
//! a TXT record in a workload's own zone, present them as an answer. So the stream is followed
//! from its first byte and only in order:
//!
//! - The connection must be one the node opened: its SYN left the node, and its initial
//!   sequence number is kept ([`state::SYN_SENT`]).
//! - The answer stream's first byte is the resolver's SYN-ACK's sequence number + 1, taken only
//!   from the SYN-ACK that acknowledges the node's SYN (`ack` = the node's initial sequence
//!   number + 1, 32 bits an off-path sender must guess), and only once ([`state::OPEN`]).
//!   Not from the node's own acknowledgment: at an interface, forwarded traffic passes the same
//!   hook, and a workload that can send raw packets could forge "the node's" ACK with any
//!   number and so choose where the kernel starts reading. A SYN it forges on the 4-tuple of a
//!   live connection only resets the entry to [`state::SYN_SENT`]: the resolver answers such a
//!   SYN with a plain ACK, never a SYN-ACK, so the stream is not followed again (nothing
//!   learned, nothing false).
//! - An answer segment is used only if it continues the stream exactly where the previous one
//!   ended ([`admit`]). A segment after a gap, or one that is entirely old (a retransmission),
//!   is not used; the stream waits for the missing bytes in order. Bytes of a partly old
//!   segment are used from where the stream was, as the receiving TCP stack does.
//! - Message boundaries follow from the lengths alone ([`step`]). A boundary the walk cannot
//!   establish (a length prefix split over two segments) ends learning on the connection
//!   ([`state::LOST`]): nothing more is learned from it, never something false.
//!
//! This module is pure (no maps, no packet access) so the eBPF programs, the unit tests and
//! the fuzz target run the same code.

use crate::maps::TcpStream;

/// [`TcpStream::state`].
pub mod state {
    /// The node sent the SYN; the answer stream's first byte is not known yet.
    pub const SYN_SENT: u8 = 1;
    /// The answer stream is followed.
    pub const OPEN: u8 = 2;
    /// A boundary could not be established: nothing more is learned from this connection.
    pub const LOST: u8 = 3;
}

/// The longest DNS message (the length prefix is 16 bits).
pub const MAX_MESSAGE: u32 = u16::MAX as u32;

impl TcpStream {
    /// A connection whose SYN, with initial sequence number `isn`, the node just sent.
    pub const fn opened(now_ns: u64, isn: u32) -> Self {
        Self {
            opened_ns: now_ns,
            isn,
            next: 0,
            boundary: 0,
            msg_seq: 0,
            msg_len: 0,
            state: state::SYN_SENT,
            vouched: 0,
            _pad: [0; 4],
        }
    }

    /// The resolver's SYN-ACK (sequence number `seq`, acknowledgment `ack`) arrived: if it
    /// acknowledges the node's SYN, the answer stream starts after it. Only the first counts.
    pub fn syn_acked(&mut self, seq: u32, ack: u32) -> bool {
        if self.state != state::SYN_SENT || ack != self.isn.wrapping_add(1) {
            return false;
        }
        let start = seq.wrapping_add(1);
        self.next = start;
        self.boundary = start;
        self.state = state::OPEN;
        true
    }
}

/// What [`admit`] makes of an answer segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// In order: the new bytes start at this payload offset (0 unless the segment overlaps
    /// bytes already followed).
    InOrder(u32),
    /// Every byte was followed before (a retransmission): nothing new.
    Old,
    /// Bytes are missing before this segment: not used.
    Gap,
    /// Not a stream being followed (not opened by the node, its start not yet acknowledged, or
    /// lost).
    NotOpen,
}

/// Whether the answer segment of `len` payload bytes at sequence number `seq` continues the
/// stream.
pub fn admit(s: &TcpStream, seq: u32, len: u32) -> Admit {
    if s.state != state::OPEN {
        return Admit::NotOpen;
    }
    // Sequence numbers wrap: the distance is taken modulo 2^32 and read as signed.
    let ahead = seq.wrapping_sub(s.next) as i32;
    if ahead > 0 {
        return Admit::Gap;
    }
    let seen = ahead.unsigned_abs();
    if seen >= len {
        return Admit::Old;
    }
    Admit::InOrder(seen)
}

/// One piece of an admitted segment, in stream order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The segment is used up; the stream is at its end.
    Done,
    /// `len` bytes at payload offset `off` continue the message in progress
    /// ([`TcpStream::msg_seq`]).
    Part { off: u32, len: u32 },
    /// A whole message of `len` bytes (after its length prefix) at payload offset `off`.
    Whole { off: u32, len: u32 },
    /// A message of `len` bytes starts at payload offset `off` (after its prefix), with `here`
    /// bytes in this segment: it continues in later segments, or is longer than the caller
    /// reads whole. It becomes the message in progress.
    Starts { off: u32, here: u32, len: u32 },
    /// No boundary can be established: the stream is [`state::LOST`].
    Lost,
}

/// The next piece of the admitted segment at sequence number `seq` with `len` payload bytes,
/// from payload offset `*pos` (start at [`Admit::InOrder`]'s offset); advances `*pos` and the
/// stream. `prefix(off)` reads the two-byte length at payload offset `off` (`None` if it
/// cannot). Messages longer than `max_whole` bytes are reported as [`Step::Starts`] even when
/// the segment holds them whole.
///
/// At [`Step::Done`] the caller records the segment's end: [`finish`].
pub fn step(
    s: &mut TcpStream,
    seq: u32,
    len: u32,
    pos: &mut u32,
    max_whole: u32,
    prefix: impl FnOnce(u32) -> Option<u16>,
) -> Step {
    if s.state != state::OPEN {
        return Step::Lost;
    }
    if *pos >= len {
        return Step::Done;
    }
    let here = seq.wrapping_add(*pos);
    let to_boundary = s.boundary.wrapping_sub(here);
    if to_boundary != 0 {
        // Inside the message in progress. It ends at most a prefix and a message ahead; any
        // other distance means the positions are inconsistent (never expected).
        if to_boundary > MAX_MESSAGE + 2 {
            s.state = state::LOST;
            return Step::Lost;
        }
        let part = to_boundary.min(len - *pos);
        let off = *pos;
        *pos += part;
        return Step::Part { off, len: part };
    }
    let avail = len - *pos;
    // The prefix's two bytes must be in this segment (resolvers write prefix and message
    // together); a prefix split over two segments cannot be read in order here.
    let Some(n) = (if avail >= 2 { prefix(*pos) } else { None }) else {
        s.state = state::LOST;
        return Step::Lost;
    };
    let n = u32::from(n);
    let off = *pos + 2;
    s.boundary = here.wrapping_add(2 + n);
    let rest = avail - 2;
    if n <= rest && n <= max_whole {
        *pos = off + n;
        // No message is in progress any more.
        s.vouched = 0;
        return Step::Whole { off, len: n };
    }
    s.msg_seq = here.wrapping_add(2);
    s.msg_len = n as u16;
    s.vouched = 0;
    let in_segment = n.min(rest);
    *pos = off + in_segment;
    Step::Starts {
        off,
        here: in_segment,
        len: n,
    }
}

/// Records that the admitted segment at `seq` with `len` payload bytes was followed to its
/// end.
pub fn finish(s: &mut TcpStream, seq: u32, len: u32) {
    if s.state == state::OPEN {
        s.next = seq.wrapping_add(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream whose answer bytes start at `start`.
    fn open(start: u32) -> TcpStream {
        let mut s = TcpStream::opened(1, 77);
        assert!(s.syn_acked(start.wrapping_sub(1), 78));
        s
    }

    /// Every step of one segment (`payload`, at `seq`).
    fn steps(s: &mut TcpStream, seq: u32, payload: &[u8], max_whole: u32) -> Vec<Step> {
        let Admit::InOrder(mut pos) = admit(s, seq, payload.len() as u32) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        loop {
            let st = step(s, seq, payload.len() as u32, &mut pos, max_whole, |o| {
                let o = o as usize;
                Some(u16::from_be_bytes([payload[o], payload[o + 1]]))
            });
            if st == Step::Done {
                finish(s, seq, payload.len() as u32);
            }
            if matches!(st, Step::Done | Step::Lost) {
                return out;
            }
            out.push(st);
        }
    }

    fn framed(msgs: &[&[u8]]) -> Vec<u8> {
        msgs.iter()
            .flat_map(|m| {
                let mut v = (m.len() as u16).to_be_bytes().to_vec();
                v.extend_from_slice(m);
                v
            })
            .collect()
    }

    #[test]
    fn a_stream_not_acknowledged_is_not_followed() {
        let s = TcpStream::opened(1, 77);
        assert_eq!(admit(&s, 0, 10), Admit::NotOpen);
        assert_eq!(admit(&TcpStream::default(), 0, 10), Admit::NotOpen);
    }

    #[test]
    fn only_a_syn_ack_of_the_nodes_syn_sets_the_start_and_only_once() {
        let mut s = TcpStream::opened(1, u32::MAX);
        assert!(!s.syn_acked(500, 77), "acknowledges another SYN");
        assert_eq!(s.state, state::SYN_SENT);
        assert!(s.syn_acked(99, 0), "isn + 1 wraps to 0");
        assert!(!s.syn_acked(4999, 0));
        assert_eq!((s.next, s.boundary), (100, 100));
    }

    #[test]
    fn messages_in_one_segment_are_found_at_their_boundaries() {
        let mut s = open(u32::MAX - 3); // the sequence numbers wrap inside the segment
        let seg = framed(&[&[1; 12], &[2; 20]]);
        assert_eq!(
            steps(&mut s, u32::MAX - 3, &seg, 4096),
            vec![
                Step::Whole { off: 2, len: 12 },
                Step::Whole { off: 16, len: 20 }
            ]
        );
        assert_eq!(s.next, (u32::MAX - 3).wrapping_add(seg.len() as u32));
        assert_eq!(s.boundary, s.next);
    }

    #[test]
    fn a_message_over_segments_starts_then_continues() {
        let mut s = open(0);
        let all = framed(&[&[7; 30], &[8; 12]]);
        let (a, b) = all.split_at(10);
        assert_eq!(
            steps(&mut s, 0, a, 4096),
            vec![Step::Starts {
                off: 2,
                here: 8,
                len: 30
            }]
        );
        assert_eq!((s.msg_seq, s.msg_len), (2, 30));
        assert_eq!(
            steps(&mut s, 10, b, 4096),
            vec![
                Step::Part { off: 0, len: 22 },
                Step::Whole { off: 24, len: 12 }
            ]
        );
    }

    #[test]
    fn gaps_and_retransmissions_are_not_used() {
        let mut s = open(0);
        let seg = framed(&[&[1; 12]]);
        assert_eq!(admit(&s, 1, 14), Admit::Gap);
        steps(&mut s, 0, &seg, 4096);
        assert_eq!(admit(&s, 0, 14), Admit::Old);
        // A segment overlapping what was followed is used from the stream's position.
        assert_eq!(admit(&s, 10, 10), Admit::InOrder(4));
    }

    #[test]
    fn a_split_prefix_loses_the_stream() {
        let mut s = open(0);
        assert!(steps(&mut s, 0, &[0], 4096).is_empty());
        assert_eq!(s.state, state::LOST);
        assert_eq!(admit(&s, 1, 10), Admit::NotOpen);
    }

    #[test]
    fn a_whole_message_longer_than_the_reader_takes_starts() {
        let mut s = open(0);
        let seg = framed(&[&[1; 100]]);
        assert_eq!(
            steps(&mut s, 0, &seg, 50),
            vec![Step::Starts {
                off: 2,
                here: 100,
                len: 100
            }]
        );
        assert_eq!(s.next, 102);
    }
}
