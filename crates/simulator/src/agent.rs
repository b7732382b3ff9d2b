//! The agents: one UDP socket per simulated device.
//!
//! SNMPv2c devices are served by the simulator's own small agent ([`crate::ber`]): one task per
//! socket, with the impairments a test asks for (lost requests, latency, damaged responses).
//! SNMPv3 devices are served by `async-snmp`'s agent (USM authentication and privacy are not
//! worth owning), with the same MIB behind a [`MibHandler`]; impairments apply to v2c only.

use crate::ber::{self, Binding, Request};
use crate::mib::{Device, Shape, Value};
use async_snmp::{
    Agent, AuthProtocol, AuthoritativeEngine, BoxFuture, GetNextResult, GetResult, HandlerResult, MasterKeys,
    MibHandler, Oid, PrivProtocol, RequestContext, VarBind,
};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Largest response a simulated v2c device sends: an Ethernet-sized datagram, as many real
/// agents do; GETBULK answers hold as many repetitions as fit.
pub const MAX_RESPONSE_BYTES: usize = 1472;
/// Most repetitions served for one GETBULK.
const MAX_REPETITIONS: u32 = 100;

/// What goes wrong on purpose, for tests and benchmarks.
#[derive(Clone, Debug, Default)]
pub struct Impairments {
    /// Share of requests never answered, 0 to 1.
    pub loss: f64,
    /// Delay before each answer.
    pub latency: Duration,
    /// Share of answers sent damaged (truncated or with a broken length), 0 to 1.
    pub malformed: f64,
}

/// Counters of what the agents did, for the simulator's log line.
#[derive(Default)]
pub struct AgentStats {
    pub requests: AtomicU64,
    pub dropped: AtomicU64,
    pub malformed_sent: AtomicU64,
    pub undecodable: AtomicU64,
}

pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// A tiny per-socket generator for the impairment draws.
struct Dice(u64);

impl Dice {
    fn roll(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Serves one v2c device until `shutdown`.
pub async fn serve_v2c(
    socket: UdpSocket,
    shape: Arc<Shape>,
    device: Device,
    community: Arc<Vec<u8>>,
    impairments: Arc<Impairments>,
    stats: Arc<AgentStats>,
    shutdown: CancellationToken,
) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 2048];
    let mut dice = Dice(0x2545_F491_4F6C_DD1D ^ u64::from(device.number + 1).wrapping_mul(0x9E37_79B9));
    loop {
        let (len, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(_) => continue,
            },
        };
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let request = match ber::decode_request(&buf[..len]) {
            Ok(r) => r,
            Err(_) => {
                stats.undecodable.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        if request.community != *community {
            continue;
        }
        if impairments.loss > 0.0 && dice.roll() < impairments.loss {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut response = answer(&shape, &device, &request, now());
        if impairments.malformed > 0.0 && dice.roll() < impairments.malformed {
            stats.malformed_sent.fetch_add(1, Ordering::Relaxed);
            damage(&mut response, dice.roll());
        }
        if impairments.latency.is_zero() {
            let _ = socket.send_to(&response, peer).await;
        } else {
            let (socket, latency) = (socket.clone(), impairments.latency);
            tokio::spawn(async move {
                tokio::time::sleep(latency).await;
                let _ = socket.send_to(&response, peer).await;
            });
        }
    }
}

/// Breaks a response in one of the ways a faulty agent or a mangling middlebox does.
fn damage(response: &mut Vec<u8>, draw: f64) {
    if draw < 0.4 {
        response.truncate(response.len() / 2);
    } else if draw < 0.7 {
        // A length that runs past the end of the datagram.
        if response.len() > 1 {
            response[1] = 0x7F;
        }
    } else {
        for byte in response.iter_mut().skip(12).step_by(7) {
            *byte = !*byte;
        }
    }
}

/// The response to one request: GET, GETNEXT, or GETBULK with as many repetitions as fit.
pub fn answer(shape: &Shape, device: &Device, request: &Request, now: f64) -> Vec<u8> {
    let budget = MAX_RESPONSE_BYTES - 32 - request.community.len();
    let mut varbinds = Vec::with_capacity(1024);
    let next = |oid: &[u32]| match shape.next(device, oid, now) {
        Some((next, value)) => (next.to_vec(), Binding::Value(value)),
        None => (oid.to_vec(), Binding::EndOfMibView),
    };
    match request.kind {
        ber::TAG_GET => {
            for oid in &request.oids {
                let binding = shape.get(device, oid, now).map_or(Binding::NoSuchObject, Binding::Value);
                ber::encode_varbind(&mut varbinds, oid, &binding);
            }
        }
        ber::TAG_GET_NEXT => {
            for oid in &request.oids {
                let (next, binding) = next(oid);
                ber::encode_varbind(&mut varbinds, &next, &binding);
            }
        }
        _ => {
            let non_repeaters = (request.non_repeaters as usize).min(request.oids.len());
            for oid in &request.oids[..non_repeaters] {
                let (next, binding) = next(oid);
                ber::encode_varbind(&mut varbinds, &next, &binding);
            }
            let mut cursors: Vec<Vec<u32>> = request.oids[non_repeaters..].to_vec();
            'repetitions: for _ in 0..request.max_repetitions.min(MAX_REPETITIONS) {
                let mut all_ended = true;
                let mark = varbinds.len();
                for cursor in cursors.iter_mut() {
                    let (next, binding) = next(cursor);
                    all_ended &= binding == Binding::EndOfMibView;
                    let before = varbinds.len();
                    ber::encode_varbind(&mut varbinds, &next, &binding);
                    if varbinds.len() > budget {
                        // Only whole repetitions, so every column advances together.
                        varbinds.truncate(if mark > 0 { mark } else { before });
                        break 'repetitions;
                    }
                    *cursor = next;
                }
                if all_ended {
                    break;
                }
            }
        }
    }
    if varbinds.len() > budget {
        // GET and GETNEXT answer everything or nothing.
        return ber::encode_response(&request.community, request.request_id, ber::TOO_BIG, &[]);
    }
    ber::encode_response(&request.community, request.request_id, 0, &varbinds)
}

/// The v3 devices' MIB, as `async-snmp`'s agent asks for it.
struct MibAdapter {
    shape: Arc<Shape>,
    device: Device,
}

fn to_snmp(value: Value) -> async_snmp::Value {
    match value {
        Value::Integer(n) => async_snmp::Value::Integer(n.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32),
        Value::Text(s) => async_snmp::Value::OctetString(s.into_bytes().into()),
        Value::Oid(o) => async_snmp::Value::ObjectIdentifier(Oid::from_slice(&o)),
        Value::Counter32(n) => async_snmp::Value::Counter32(n),
        Value::Gauge32(n) => async_snmp::Value::Gauge32(n),
        Value::TimeTicks(n) => async_snmp::Value::TimeTicks(n),
        Value::Counter64(n) => async_snmp::Value::Counter64(n),
    }
}

impl MibHandler for MibAdapter {
    fn get<'a>(&'a self, _ctx: &'a RequestContext, oid: &'a Oid) -> BoxFuture<'a, HandlerResult<GetResult>> {
        Box::pin(async move {
            Ok(match self.shape.get(&self.device, oid.arcs(), now()) {
                Some(value) => GetResult::Value(to_snmp(value)),
                None => GetResult::NoSuchObject,
            })
        })
    }

    fn get_next<'a>(&'a self, _ctx: &'a RequestContext, oid: &'a Oid) -> BoxFuture<'a, HandlerResult<GetNextResult>> {
        Box::pin(async move {
            Ok(match self.shape.next(&self.device, oid.arcs(), now()) {
                Some((next, value)) => GetNextResult::Value(VarBind::new(Oid::from_slice(next), to_snmp(value))),
                None => GetNextResult::EndOfMibView,
            })
        })
    }
}

/// The SNMPv3 credentials every simulated v3 device accepts (authPriv, SHA and AES-128).
#[derive(Clone, Debug)]
pub struct V3Credentials {
    pub user: String,
    pub auth_password: String,
    pub priv_password: String,
}

/// Starts one v3 device's agent on `addr`. Master keys are derived once and shared: deriving
/// them hashes a megabyte per password.
pub async fn start_v3(
    addr: SocketAddr,
    shape: Arc<Shape>,
    device: Device,
    credentials: &V3Credentials,
    keys: &MasterKeys,
    shutdown: CancellationToken,
) -> Result<Agent, String> {
    let engine_id = format!("pollux-sim-{}", device.number).into_bytes();
    let engine = AuthoritativeEngine::install(engine_id, |_| Ok::<(), Infallible>(())).map_err(|e| e.to_string())?;
    let keys = keys.clone();
    Agent::builder()
        .bind(addr.to_string())
        .authoritative_engine(engine)
        .usm_user(credentials.user.clone().into_bytes(), |u| u.with_master_keys(keys))
        .map_err(|e| e.to_string())?
        .handler(Oid::from_slice(&[1, 3, 6, 1, 2, 1]), Arc::new(MibAdapter { shape, device }))
        .allow_all_access()
        .cancellation_token(shutdown)
        .build()
        .await
        .map_err(|e| e.to_string())
}

/// The master keys for `credentials`.
pub fn master_keys(credentials: &V3Credentials) -> Result<MasterKeys, async_snmp::CryptoError> {
    MasterKeys::new(AuthProtocol::Sha1, credentials.auth_password.as_bytes())?
        .with_privacy(PrivProtocol::Aes128, credentials.priv_password.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_get_too_large_for_one_datagram_is_answered_too_big() {
        let shape = Shape::new(1);
        let device = Device::new(1, "d".into(), 0.0, 0.0);
        let long: Vec<u32> = (0..100).collect();
        let request = Request {
            community: b"c".to_vec(),
            kind: ber::TAG_GET,
            request_id: 9,
            non_repeaters: 0,
            max_repetitions: 0,
            oids: vec![long; 40],
        };
        let response = answer(&shape, &device, &request, 100.0);
        assert!(response.len() < 64, "{}", response.len());
        // request-id 9, then error-status tooBig.
        assert!(response.windows(6).any(|w| w == [0x02, 1, 9, 0x02, 1, ber::TOO_BIG as u8]));
    }

    #[test]
    fn getbulk_answers_whole_repetitions_within_the_size_limit() {
        let shape = Shape::new(40);
        let device = Device::new(1, "d".into(), 0.0, 0.0);
        let columns: Vec<Vec<u32>> = [6, 7, 10, 11].iter().map(|c| vec![1, 3, 6, 1, 2, 1, 31, 1, 1, 1, *c]).collect();
        let request = Request {
            community: b"public".to_vec(),
            kind: ber::TAG_GET_BULK,
            request_id: 1,
            non_repeaters: 0,
            max_repetitions: 50,
            oids: columns,
        };
        let response = answer(&shape, &device, &request, 100.0);
        assert!(response.len() <= MAX_RESPONSE_BYTES, "{}", response.len());
        assert!(response.len() > MAX_RESPONSE_BYTES / 2);
    }

    /// Starts one v2c device with `impairments` on a loopback port; returns its address.
    async fn device(impairments: Impairments, shutdown: &CancellationToken) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let stats = Arc::new(AgentStats::default());
        let device = Device::new(1, "d".into(), now() - 100.0, now());
        let community = Arc::new(b"public".to_vec());
        tokio::spawn(serve_v2c(
            socket,
            Arc::new(Shape::new(2)),
            device,
            community,
            Arc::new(impairments),
            stats,
            shutdown.clone(),
        ));
        addr
    }

    /// Asks for sysUpTime.0; returns the answer and how long it took, or `None` after 1 s.
    async fn ask(addr: SocketAddr) -> Option<(Vec<u8>, Duration)> {
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let request = ber::encode_request(b"public", ber::TAG_GET, 5, 0, 0, &[vec![1, 3, 6, 1, 2, 1, 1, 3, 0]]);
        let started = std::time::Instant::now();
        client.send_to(&request, addr).await.unwrap();
        let mut buf = vec![0u8; 2048];
        let len = tokio::time::timeout(Duration::from_secs(1), client.recv(&mut buf)).await.ok()?.unwrap();
        Some((buf[..len].to_vec(), started.elapsed()))
    }

    #[tokio::test]
    async fn loss_latency_and_damage_are_what_was_asked_for() {
        let shutdown = CancellationToken::new();
        let healthy = device(Impairments::default(), &shutdown).await;
        let (answer, _) = ask(healthy).await.expect("a healthy device answers");
        assert_eq!(&answer[..2], &[0x30, answer.len() as u8 - 2], "a whole message");
        let lossy = device(Impairments { loss: 1.0, ..Default::default() }, &shutdown).await;
        assert!(ask(lossy).await.is_none(), "100 % loss: no answer");
        let slow = device(Impairments { latency: Duration::from_millis(200), ..Default::default() }, &shutdown).await;
        let (_, took) = ask(slow).await.expect("a slow device answers");
        assert!(took >= Duration::from_millis(200), "{took:?}");
        let broken = device(Impairments { malformed: 1.0, ..Default::default() }, &shutdown).await;
        for _ in 0..5 {
            let (damaged, _) = ask(broken).await.expect("a damaged answer still comes");
            // Cut short, a length past the end, or flipped bytes in the fixed header.
            let whole = damaged.len() >= 2 && usize::from(damaged[1]) == damaged.len() - 2;
            assert!(!whole || damaged[..13] != answer[..13], "undamaged: {damaged:?}");
        }
        shutdown.cancel();
    }
}
