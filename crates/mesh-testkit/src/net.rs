//! Loopback ports for peers the test starts itself (etcd, redis, dnsmasq)
//! and for addresses where nothing must listen.

use std::net::{TcpListener, UdpSocket};

/// A TCP port on `127.0.0.1` that was free a moment ago (bound, then
/// released): for a process started with a port on its command line, or
/// for an address where nothing listens.
///
/// # Panics
///
/// When no loopback port can be bound at all.
pub fn free_port() -> u16 {
    match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(error) => panic!("cannot bind a TCP port on 127.0.0.1: {error}"),
    }
}

/// A port on `127.0.0.1` free for UDP and TCP both, as a DNS server needs.
///
/// # Panics
///
/// When no loopback UDP port can be bound at all.
pub fn free_udp_and_tcp_port() -> u16 {
    loop {
        let udp = match UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()) {
            Ok(addr) => addr,
            Err(error) => panic!("cannot bind a UDP port on 127.0.0.1: {error}"),
        };
        if TcpListener::bind(("127.0.0.1", udp.port())).is_ok() {
            return udp.port();
        }
    }
}
