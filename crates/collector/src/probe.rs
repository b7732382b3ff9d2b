//! A quick look at a device that was not answering, before it is polled.
//!
//! The SNMP sessions share unconnected UDP sockets, on which the kernel never reports an ICMP
//! port-unreachable: a device whose agent is not running costs the full timeout times its
//! retries, every cycle, and ten thousand of them once took 160 s a cycle. A *connected* UDP
//! socket does get the refusal (`ECONNREFUSED` on the next receive), within one round trip. So a
//! device that did not answer its last poll (or has not been polled since the start) is first
//! sent one SNMPv2c GET of sysUpTime.0 from a socket of its own:
//!
//! ```text
//!   refused within the wait ──▶ unreachable this cycle, no SNMP request at all
//!   an answer, or silence    ──▶ polled as usual (silence: a host down, or an SNMPv3 agent
//!                                that ignores the v2c probe)
//! ```
//!
//! Only devices given by IP address are probed (a name could resolve to another address than
//! the session's). Devices that answered their last poll are not probed (no extra packet for healthy devices),
//! and they are polled first, so the dead ones never hold the poll slots the live ones need.

use std::time::Duration;
use tokio::net::UdpSocket;

/// What a probe saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The host said nothing listens on the port (ICMP port-unreachable).
    Refused,
    /// Something answered.
    Answered,
    /// No answer within the wait (or the address could not be used): poll as usual.
    Silent,
}

/// Longest wait for a refusal: one round trip on any sane network.
pub const PROBE_WAIT: Duration = Duration::from_millis(250);

/// Sends one SNMPv2c GET of sysUpTime.0 with `community` to `address:port` from a connected
/// socket and waits up to `wait` for an answer or a refusal.
pub async fn probe(address: &str, port: u16, community: &str, wait: Duration) -> Probe {
    // Only an address the SNMP session uses as it is: a name may resolve to another address
    // (or family) than the session's, and a lookup may stall; those devices are not probed.
    let Ok(ip) = address.trim_matches(|c| c == '[' || c == ']').parse::<std::net::IpAddr>() else {
        return Probe::Silent;
    };
    let target = std::net::SocketAddr::new(ip, port);
    let local = if target.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
    let Ok(socket) = UdpSocket::bind(local).await else { return Probe::Silent };
    if socket.connect(target).await.is_err() {
        return Probe::Silent;
    }
    let refused = |e: &std::io::Error| e.kind() == std::io::ErrorKind::ConnectionRefused;
    match socket.send(&get_sys_uptime(community)).await {
        Err(e) if refused(&e) => return Probe::Refused,
        Err(_) => return Probe::Silent,
        Ok(_) => {}
    }
    let mut buf = [0u8; 1500];
    match tokio::time::timeout(wait, socket.recv(&mut buf)).await {
        Ok(Ok(_)) => Probe::Answered,
        Ok(Err(e)) if refused(&e) => Probe::Refused,
        Ok(Err(_)) | Err(_) => Probe::Silent,
    }
}

/// The BER of `GetRequest { sysUpTime.0 }` in an SNMPv2c message. A community too long for the
/// short length forms is left out (the probe only needs the datagram to arrive somewhere).
fn get_sys_uptime(community: &str) -> Vec<u8> {
    let community = if community.len() <= 64 { community.as_bytes() } else { &[] };
    // varbind list: SEQUENCE { SEQUENCE { OID 1.3.6.1.2.1.1.3.0, NULL } }
    const VARBINDS: [u8; 16] =
        [0x30, 0x0e, 0x30, 0x0c, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x02, 0x01, 0x01, 0x03, 0x00, 0x05, 0x00];
    let mut pdu = vec![0x02, 0x04, 0x50, 0x58, 0x50, 0x52, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00];
    pdu.extend_from_slice(&VARBINDS);
    let mut body = vec![0x02, 0x01, 0x01, 0x04, community.len() as u8];
    body.extend_from_slice(community);
    body.push(0xa0);
    body.push(pdu.len() as u8);
    body.extend_from_slice(&pdu);
    let mut message = vec![0x30, body.len() as u8];
    message.extend_from_slice(&body);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_refused_at_once_and_an_agent_answers() {
        // A port nobody listens on: bind one, learn its number, close it.
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let started = std::time::Instant::now();
        assert_eq!(probe("127.0.0.1", closed, "public", Duration::from_secs(5)).await, Probe::Refused);
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());

        let agent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = agent.local_addr().unwrap().port();
        let echo = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            let (n, from) = agent.recv_from(&mut buf).await.unwrap();
            agent.send_to(&buf[..n], from).await.unwrap();
            buf[..n].to_vec()
        });
        assert_eq!(probe("127.0.0.1", port, "public", Duration::from_secs(5)).await, Probe::Answered);
        let sent = echo.await.unwrap();
        assert_eq!(sent, get_sys_uptime("public"));
        assert_eq!(sent[1] as usize, sent.len() - 2, "the outer length covers the message");

        let mute = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = mute.local_addr().unwrap().port();
        assert_eq!(probe("127.0.0.1", port, "public", Duration::from_millis(100)).await, Probe::Silent);
        assert_eq!(probe("localhost", closed, "public", Duration::from_millis(100)).await, Probe::Silent);
    }

    #[test]
    fn the_probe_is_a_get_of_sys_uptime() {
        for community in ["public", "", &"c".repeat(64), &"x".repeat(65)] {
            let request = pollux_simulator::ber::decode_request(&get_sys_uptime(community)).unwrap();
            let sent = if community.len() <= 64 { community.as_bytes() } else { b"" };
            assert_eq!(request.community, sent);
            assert_eq!(request.oids, [vec![1, 3, 6, 1, 2, 1, 1, 3, 0]]);
        }
    }
}
