//! The floor: the least a proxy can cost on this machine, measured beside
//! the real ones.
//!
//! A forwarder that pairs each client connection with a backend connection
//! of its own and passes bytes between them, and does nothing else: no
//! HTTP parsing, no routing, no pool, no timers, no metrics. One thread,
//! level-triggered epoll, so that each readiness event costs exactly one
//! read and, when the other side takes it all, one write. What it spends
//! is almost all the kernel's (loopback TCP, wake-ups across CPUs), which
//! every proxy pays too; a real proxy's cost above it is its own work. The
//! report sets a target ratio against what this reached in the same rounds:
//! a rate that even the floor does not reach is out of any proxy's reach
//! here.
//!
//! Half-closes are passed on (a FIN from one side becomes a `shutdown` of
//! the other once everything before it is written), so tunnels that end
//! one direction first, and clients that send `Connection: close`, work
//! as through a proxy.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

use anyhow::Context as _;
use rustix::event::epoll::{self, EventData, EventFlags};

/// The most read at once: as much as switchyard's tunnels read at most.
const READ_SIZE: usize = 256 * 1024;

/// Runs the floor on `listen` (port 0 for any), forwarding to `backend`;
/// prints `listening ADDR` first. Runs until the process ends.
pub fn serve(listen: SocketAddr, backend: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    println!("listening {}", listener.local_addr()?);
    Floor::new(listener, backend)?.run()
}

/// One side of a pair.
struct Side {
    stream: TcpStream,
    /// The other side's descriptor.
    peer: RawFd,
    /// Bytes read from the peer that this side has not taken yet.
    outbound: Vec<u8>,
    /// This side sent its FIN (its read returned 0).
    read_closed: bool,
    /// The events this side is registered for (none: not registered).
    interest: EventFlags,
}

pub struct Floor {
    epoll: std::os::fd::OwnedFd,
    listener: TcpListener,
    backend: SocketAddr,
    sides: HashMap<RawFd, Side>,
    scratch: Vec<u8>,
}

impl Floor {
    pub fn new(listener: TcpListener, backend: SocketAddr) -> anyhow::Result<Self> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(
            &epoll,
            &listener,
            EventData::new_u64(listener.as_raw_fd() as u64),
            EventFlags::IN,
        )?;
        Ok(Self {
            epoll,
            listener,
            backend,
            sides: HashMap::new(),
            scratch: vec![0; READ_SIZE],
        })
    }

    pub fn run(mut self) -> anyhow::Result<()> {
        let mut events = Vec::with_capacity(256);
        loop {
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                None,
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            for event in &events {
                let fd = event.data.u64() as RawFd;
                let flags = event.flags;
                if fd == self.listener.as_raw_fd() {
                    self.accept();
                    continue;
                }
                if flags.contains(EventFlags::ERR) {
                    self.close_pair(fd);
                    continue;
                }
                if flags.contains(EventFlags::OUT) {
                    self.flush(fd);
                }
                if flags.intersects(EventFlags::IN | EventFlags::HUP) {
                    self.forward(fd);
                }
            }
        }
    }

    /// Accepts one client (level-triggered: another waiting one is
    /// reported again) and connects its backend connection.
    fn accept(&mut self) {
        let Ok((client, _)) = self.listener.accept() else {
            return;
        };
        let Ok(backend) = TcpStream::connect(self.backend) else {
            return;
        };
        for stream in [&client, &backend] {
            let _ = stream.set_nodelay(true);
            let _ = stream.set_nonblocking(true);
        }
        let (c, b) = (client.as_raw_fd(), backend.as_raw_fd());
        for (stream, peer) in [(client, b), (backend, c)] {
            let fd = stream.as_raw_fd();
            self.sides.insert(
                fd,
                Side {
                    stream,
                    peer,
                    outbound: Vec::new(),
                    read_closed: false,
                    interest: EventFlags::empty(),
                },
            );
            self.set_interest(fd, EventFlags::IN);
        }
    }

    /// The events `fd` waits for, from the pair's state: reading while its
    /// side has not ended and its peer has taken all that was read from it
    /// (so bytes are never passed on out of order), writing while
    /// something waits to be written to it.
    fn wanted(&self, fd: RawFd) -> EventFlags {
        let side = &self.sides[&fd];
        let mut wanted = EventFlags::empty();
        if !side.read_closed && self.sides[&side.peer].outbound.is_empty() {
            wanted |= EventFlags::IN;
        }
        if !side.outbound.is_empty() {
            wanted |= EventFlags::OUT;
        }
        wanted
    }

    /// Brings both sides' registrations in line with the pair's state;
    /// nothing if the pair is closed.
    fn refresh(&mut self, fd: RawFd) {
        let Some(peer) = self.sides.get(&fd).map(|side| side.peer) else {
            return;
        };
        for fd in [fd, peer] {
            let wanted = self.wanted(fd);
            self.set_interest(fd, wanted);
        }
    }

    /// One read from `from`, written on to its peer; what the peer does
    /// not take waits in its outbound buffer, and `from` is not read again
    /// until that is written.
    fn forward(&mut self, from: RawFd) {
        // A hang-up is reported to a side that is not being read too.
        if !self.sides.contains_key(&from) || !self.wanted(from).contains(EventFlags::IN) {
            return;
        }
        let side = self.sides.get_mut(&from).expect("checked above");
        let to = side.peer;
        let n = match side.stream.read(&mut self.scratch) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(_) => return self.close_pair(from),
        };
        if n == 0 {
            side.read_closed = true;
            // Its peer has taken everything before the FIN (or `from`
            // would not have been read).
            self.pass_fin(to);
        } else {
            let peer = self.sides.get_mut(&to).expect("a side's peer is there");
            let written = match peer.stream.write(&self.scratch[..n]) {
                Ok(w) => w,
                Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
                Err(_) => return self.close_pair(from),
            };
            if written == n {
                // All passed on: nothing about the pair changed.
                return;
            }
            peer.outbound.extend_from_slice(&self.scratch[written..n]);
        }
        self.refresh(from);
    }

    /// Writes what waits for `to`.
    fn flush(&mut self, to: RawFd) {
        let Some(side) = self.sides.get_mut(&to) else {
            return;
        };
        let written = match side.stream.write(&side.outbound) {
            Ok(w) => w,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(_) => return self.close_pair(to),
        };
        side.outbound.drain(..written);
        // Once all is written the peer is read again; its FIN, if it sent
        // one, is read and passed on then ([`Self::forward`]).
        self.refresh(to);
    }

    /// Everything the other side sent before its FIN is written to `to`:
    /// end `to`'s sending side too, and close the pair once both
    /// directions have ended and been written.
    fn pass_fin(&mut self, to: RawFd) {
        let side = &self.sides[&to];
        let _ = side.stream.shutdown(Shutdown::Write);
        let peer = &self.sides[&side.peer];
        if side.read_closed && side.outbound.is_empty() && peer.outbound.is_empty() {
            self.close_pair(to);
        }
    }

    fn close_pair(&mut self, fd: RawFd) {
        // Closing a descriptor takes it out of the epoll set.
        if let Some(side) = self.sides.remove(&fd) {
            self.sides.remove(&side.peer);
        }
    }

    /// Registers `fd` for `interest`, or takes it out of the set for none:
    /// a registered socket is reported on a hang-up whatever it asked
    /// for, which level-triggered would report again and again.
    fn set_interest(&mut self, fd: RawFd, interest: EventFlags) {
        let Some(side) = self.sides.get_mut(&fd) else {
            return;
        };
        if side.interest == interest {
            return;
        }
        let data = EventData::new_u64(fd as u64);
        let result = match (side.interest.is_empty(), interest.is_empty()) {
            (true, false) => epoll::add(&self.epoll, &side.stream, data, interest),
            (false, true) => epoll::delete(&self.epoll, &side.stream),
            _ => epoll::modify(&self.epoll, &side.stream, data, interest),
        };
        if result.is_ok() {
            side.interest = interest;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A floor on a free port in front of a backend listener the test
    /// plays itself; the floor's address and the backend listener.
    fn floor() -> (SocketAddr, TcpListener) {
        let backend = TcpListener::bind("127.0.0.1:0").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let floor = Floor::new(listener, backend.local_addr().unwrap()).unwrap();
        std::thread::spawn(move || floor.run());
        (addr, backend)
    }

    fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        stream.read_exact(&mut buf).unwrap();
        buf
    }

    #[test]
    fn exchanges_on_one_client_connection_go_over_one_backend_connection() {
        let (addr, backend) = floor();
        let mut client = TcpStream::connect(addr).unwrap();
        let (mut upstream, _) = backend.accept().unwrap();
        for i in 0..3 {
            client.write_all(format!("request {i}").as_bytes()).unwrap();
            assert_eq!(read_n(&mut upstream, 9), format!("request {i}").as_bytes());
            upstream
                .write_all(format!("response {i}").as_bytes())
                .unwrap();
            assert_eq!(read_n(&mut client, 10), format!("response {i}").as_bytes());
        }
    }

    #[test]
    fn a_half_close_is_passed_on_and_the_answer_after_it_still_arrives() {
        let (addr, backend) = floor();
        let mut client = TcpStream::connect(addr).unwrap();
        let (mut upstream, _) = backend.accept().unwrap();
        client.write_all(b"all of it").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"all of it", "the backend reads the bytes, then EOF");
        upstream.write_all(b"count 9").unwrap();
        drop(upstream);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"count 9", "the answer, then EOF");
    }

    /// 16 MiB of a pattern that shows any byte out of place.
    fn pattern(seed: usize) -> Vec<u8> {
        (0..16 * 1024 * 1024)
            .map(|i| ((i + seed) % 251) as u8)
            .collect()
    }

    #[test]
    fn both_directions_held_up_at_once_still_arrive_whole_and_in_order() {
        let (addr, backend) = floor();
        let client = TcpStream::connect(addr).unwrap();
        let (upstream, _) = backend.accept().unwrap();
        // Both ends send before either reads, so both directions fill up
        // and wait in the floor at the same time.
        let senders: Vec<_> = [(&client, 1), (&upstream, 2)]
            .into_iter()
            .map(|(stream, seed)| {
                let mut stream = stream.try_clone().unwrap();
                std::thread::spawn(move || stream.write_all(&pattern(seed)).unwrap())
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let readers: Vec<_> = [(client, 2), (upstream, 1)]
            .into_iter()
            .map(|(mut stream, seed)| {
                std::thread::spawn(move || read_n(&mut stream, 16 * 1024 * 1024) == pattern(seed))
            })
            .collect();
        for sender in senders {
            sender.join().unwrap();
        }
        for reader in readers {
            assert!(
                reader.join().unwrap(),
                "a direction's bytes arrived out of order"
            );
        }
    }

    #[test]
    fn a_slow_reader_gets_every_byte_in_order() {
        let (addr, backend) = floor();
        let mut client = TcpStream::connect(addr).unwrap();
        let (mut upstream, _) = backend.accept().unwrap();
        let total = 16 * 1024 * 1024;
        let sender = std::thread::spawn(move || {
            let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
            upstream.write_all(&data).unwrap();
        });
        // The client waits, so the floor meets a full socket and buffers.
        std::thread::sleep(Duration::from_millis(200));
        let got = read_n(&mut client, total);
        sender.join().unwrap();
        assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    }
}
