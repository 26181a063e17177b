//! A model test: random ring sizes and random sequences of stream and packet operations on both
//! ends, in non-blocking mode, compared step by step with two `VecDeque`s; random closes.

mod common;

use std::collections::VecDeque;

use common::*;
use proptest::prelude::*;
use vchan::{RingSizes, VchanError};

#[derive(Debug, Clone, Copy)]
enum End {
    Server,
    Client,
}

#[derive(Debug, Clone)]
enum Op {
    Write(End, usize),
    Read(End, usize),
    Send(End, usize),
    Recv(End, usize),
    Close(End),
}

fn end() -> impl Strategy<Value = End> {
    prop_oneof![Just(End::Server), Just(End::Client)]
}

fn op() -> impl Strategy<Value = Op> {
    let len = prop_oneof![0usize..16, 0usize..3000, 0usize..70000];
    prop_oneof![
        4 => (end(), len.clone()).prop_map(|(e, n)| Op::Write(e, n)),
        4 => (end(), len.clone()).prop_map(|(e, n)| Op::Read(e, n)),
        2 => (end(), len.clone()).prop_map(|(e, n)| Op::Send(e, n)),
        2 => (end(), len).prop_map(|(e, n)| Op::Recv(e, n)),
        1 => end().prop_map(Op::Close),
    ]
}

fn ring_min() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        0usize..=2048,
        2049usize..=70000,
        Just(1usize << 20)
    ]
}

/// One direction of the model: what is in the ring, and the next byte value to write.
struct Lane {
    queue: VecDeque<u8>,
    capacity: usize,
    next_write: u8,
}

impl Lane {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.next_write = self.next_write.wrapping_mul(31).wrapping_add(7);
                self.next_write
            })
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn endpoints_behave_like_two_queues(read_min in ring_min(), write_min in ring_min(), ops in proptest::collection::vec(op(), 1..60)) {
        let host = Host::new();
        let (server, client) = host.pair(RingSizes { server_read: read_min, server_write: write_min });
        server.set_nonblocking(true);
        client.set_nonblocking(true);
        let mut ends = [Some(server), Some(client)];
        // Lane 0: server to client (right ring); lane 1: client to server (left ring).
        let mut lanes = [
            Lane { queue: VecDeque::new(), capacity: ends[0].as_ref().unwrap().write_capacity(), next_write: 0 },
            Lane { queue: VecDeque::new(), capacity: ends[1].as_ref().unwrap().write_capacity(), next_write: 100 },
        ];
        for op in ops {
            let (me, peer) = match op {
                Op::Write(e, _) | Op::Read(e, _) | Op::Send(e, _) | Op::Recv(e, _) | Op::Close(e) => match e {
                    End::Server => (0, 1),
                    End::Client => (1, 0),
                },
            };
            let peer_closed = ends[peer].is_none();
            let Some(endpoint) = ends[me].as_ref() else { continue };
            match op {
                Op::Write(_, n) => {
                    let lane = &mut lanes[me];
                    let data = lane.bytes(n);
                    let result = endpoint.write(&data);
                    let room = lane.capacity - lane.queue.len();
                    if n == 0 {
                        prop_assert_eq!(result.unwrap(), 0);
                    } else if peer_closed {
                        prop_assert!(matches!(result, Err(VchanError::PeerClosed)), "{:?}", result);
                    } else if room == 0 {
                        prop_assert!(matches!(result, Err(VchanError::WouldBlock)), "{:?}", result);
                    } else {
                        let accepted = result.unwrap();
                        prop_assert_eq!(accepted, n.min(room));
                        lane.queue.extend(&data[..accepted]);
                    }
                }
                Op::Read(_, n) => {
                    let lane = &mut lanes[peer];
                    let mut buf = vec![0u8; n];
                    let result = endpoint.read(&mut buf);
                    if n == 0 {
                        prop_assert_eq!(result.unwrap(), 0);
                    } else if lane.queue.is_empty() {
                        if peer_closed {
                            prop_assert_eq!(result.unwrap(), 0, "EOF");
                        } else {
                            prop_assert!(matches!(result, Err(VchanError::WouldBlock)), "{:?}", result);
                        }
                    } else {
                        let got = result.unwrap();
                        prop_assert_eq!(got, n.min(lane.queue.len()));
                        let expect: Vec<u8> = lane.queue.drain(..got).collect();
                        prop_assert_eq!(&buf[..got], &expect[..]);
                    }
                }
                Op::Send(_, n) => {
                    let lane = &mut lanes[me];
                    let data = lane.bytes(n);
                    let result = endpoint.send(&data);
                    if n > lane.capacity {
                        prop_assert!(matches!(result, Err(VchanError::MessageTooLarge { .. })), "{:?}", result);
                    } else if peer_closed {
                        prop_assert!(matches!(result, Err(VchanError::PeerClosed)), "{:?}", result);
                    } else if lane.capacity - lane.queue.len() < n {
                        prop_assert!(matches!(result, Err(VchanError::WouldBlock)), "{:?}", result);
                    } else {
                        result.unwrap();
                        lane.queue.extend(&data);
                    }
                }
                Op::Recv(_, n) => {
                    let lane = &mut lanes[peer];
                    let mut buf = vec![0u8; n];
                    let result = endpoint.recv(&mut buf);
                    if n > lane.capacity {
                        prop_assert!(matches!(result, Err(VchanError::MessageTooLarge { .. })), "{:?}", result);
                    } else if lane.queue.len() >= n {
                        result.unwrap();
                        let expect: Vec<u8> = lane.queue.drain(..n).collect();
                        prop_assert_eq!(&buf[..], &expect[..]);
                    } else if peer_closed {
                        prop_assert!(matches!(result, Err(VchanError::PeerClosed)), "{:?}", result);
                    } else {
                        prop_assert!(matches!(result, Err(VchanError::WouldBlock)), "{:?}", result);
                    }
                }
                Op::Close(_) => {
                    ends[me].take().unwrap().close().unwrap();
                }
            }
            let (s, c) = (ends[0].as_ref(), ends[1].as_ref());
            if let Some(s) = s {
                prop_assert_eq!(s.data_ready().unwrap(), lanes[1].queue.len());
            }
            if let Some(c) = c {
                prop_assert_eq!(c.data_ready().unwrap(), lanes[0].queue.len());
            }
        }
        drop(ends);
        prop_assert!(host.xen.check_leaks().is_ok(), "{:?}", host.xen.leaks());
    }
}
