//! The kernel's DNS-over-TCP stream walker (`egress_common::dns_tcp`) against a model.
//!
//! The input describes, for several connections at once, the answer stream a resolver sends (a
//! sequence of length-prefixed messages, whose true boundaries the model knows) and how its
//! bytes arrive: segments of any size, in any order, repeated, overlapping, plus segments of
//! connections the node never opened. Every segment carries the true bytes of its stream at
//! its sequence number (forging bytes at the right sequence number is taking over the TCP
//! connection, which no DNS check can detect). The walker must only ever report a message at
//! a true boundary of a stream the node opened, with the true bytes, and parts only as the
//! contiguous continuation of the message they belong to.
#![no_main]

use egress_common::{
    dns_tcp::{Admit, Step, admit, finish, step},
    maps::TcpStream,
};
use libfuzzer_sys::fuzz_target;

const STREAMS: usize = 3;
const MAX_WHOLE: u32 = 512;
const MAX_STEPS: usize = 16;

struct Model {
    isn: u32,
    bytes: Vec<u8>,
    /// Offsets (from the stream start) of each message's first byte after its prefix, with
    /// its length.
    messages: Vec<(usize, usize)>,
    opened: bool,
    state: TcpStream,
    /// The message in progress as reported: offset of its first byte, length, bytes so far.
    joining: Option<(usize, usize, usize)>,
}

fuzz_target!(|data: &[u8]| {
    let mut input = data.iter().copied();
    let mut next = move || input.next();
    let mut models: Vec<Model> = Vec::new();
    for i in 0..STREAMS {
        let isn = u32::from_le_bytes([
            next().unwrap_or(0),
            next().unwrap_or(0),
            next().unwrap_or(0xff),
            next().unwrap_or(0xff),
        ]);
        let count = next().unwrap_or(0) % 6;
        let mut bytes = Vec::new();
        let mut messages = Vec::new();
        for _ in 0..count {
            let len = match next().unwrap_or(0) % 4 {
                0 => usize::from(next().unwrap_or(0) % 16),
                1 => usize::from(next().unwrap_or(0)) + 12,
                2 => 600 + usize::from(next().unwrap_or(0)) * 4,
                _ => usize::from(u16::from_le_bytes([
                    next().unwrap_or(0),
                    next().unwrap_or(0),
                ])),
            };
            bytes.extend_from_slice(&(len as u16).to_be_bytes());
            messages.push((bytes.len(), len));
            let fill = next().unwrap_or(0);
            bytes.extend((0..len).map(|j| fill.wrapping_add(j as u8)));
        }
        let opened = i != STREAMS - 1 || next().unwrap_or(0) % 2 == 0;
        let mut state = TcpStream::opened(1, 1000);
        if opened {
            assert!(state.syn_acked(isn.wrapping_sub(1), 1001));
        }
        models.push(Model {
            isn,
            bytes,
            messages,
            opened,
            state,
            joining: None,
        });
    }
    // Deliveries: (stream, start, length) slices of the true streams.
    for _ in 0..64 {
        let (Some(a), Some(b), Some(c), Some(d)) = (next(), next(), next(), next()) else {
            break;
        };
        let m = &mut models[usize::from(a) % STREAMS];
        if m.bytes.is_empty() {
            continue;
        }
        let start = (usize::from(u16::from_le_bytes([b, c])) * 7) % m.bytes.len();
        let len = (1 + usize::from(d) * 9).min(m.bytes.len() - start);
        deliver(m, start, len);
    }
    // Then the whole stream in order, as a retransmitting sender would.
    for m in &mut models {
        let mut at = 0;
        while at < m.bytes.len() {
            let len = 1400.min(m.bytes.len() - at);
            deliver(m, at, len);
            at += len;
        }
        if m.opened && m.state.state == egress_common::dns_tcp::state::OPEN {
            assert_eq!(
                m.state.next,
                m.isn.wrapping_add(m.bytes.len() as u32),
                "a followed stream did not reach its end"
            );
        }
    }
});

fn deliver(m: &mut Model, start: usize, len: usize) {
    let seq = m.isn.wrapping_add(start as u32);
    let payload = &m.bytes[start..start + len];
    let mut pos = match admit(&m.state, seq, len as u32) {
        Admit::InOrder(pos) => pos,
        Admit::NotOpen => {
            assert!(
                !m.opened || m.state.state == egress_common::dns_tcp::state::LOST,
                "an opened stream was refused"
            );
            return;
        }
        Admit::Old | Admit::Gap => return,
    };
    assert!(m.opened, "a stream the node did not open was followed");
    for _ in 0..MAX_STEPS + 1 {
        let st = step(&mut m.state, seq, len as u32, &mut pos, MAX_WHOLE, |o| {
            let o = o as usize;
            Some(u16::from_be_bytes([payload[o], payload[o + 1]]))
        });
        match st {
            Step::Done => {
                finish(&mut m.state, seq, len as u32);
                return;
            }
            Step::Lost => return,
            Step::Whole { off, len: n } => {
                let at = start + off as usize;
                assert!(
                    m.messages.contains(&(at, n as usize)),
                    "a message reported at {at} ({n} bytes) is not one of the stream's"
                );
                assert!(n <= MAX_WHOLE);
            }
            Step::Starts { off, here, len: n } => {
                let at = start + off as usize;
                assert!(
                    m.messages.contains(&(at, n as usize)),
                    "a message reported starting at {at} ({n} bytes) is not one of the stream's"
                );
                assert!(here <= n);
                m.joining = Some((at, n as usize, here as usize));
            }
            Step::Part { off, len: n } => {
                let at = start + off as usize;
                let Some((first, total, got)) = m.joining.as_mut() else {
                    panic!("a part at {at} without a message in progress");
                };
                assert_eq!(
                    at,
                    *first + *got,
                    "a part that does not continue its message"
                );
                *got += n as usize;
                assert!(*got <= *total, "a part past its message's end");
            }
        }
    }
    // More pieces than walked: the kernel loses the stream here (see `dns_tcp::overflow`).
    m.state.state = egress_common::dns_tcp::state::LOST;
}
