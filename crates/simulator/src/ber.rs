//! The SNMPv2c messages the simulator's own agents speak: BER decoding of GET, GETNEXT and
//! GETBULK requests, and encoding of their responses (RFC 3416, RFC 1905 message layout).
//!
//! Requests come from the network, so decoding is defensive: every length is checked against
//! what is left, integers and identifiers are bounded, and anything unexpected is an error
//! (the agent drops the datagram), never a panic. The fuzz test at the bottom feeds it
//! truncations, bit flips and random bytes.

use crate::mib::Value;

pub const TAG_GET: u8 = 0xA0;
pub const TAG_GET_NEXT: u8 = 0xA1;
pub const TAG_RESPONSE: u8 = 0xA2;
pub const TAG_GET_BULK: u8 = 0xA5;

/// Most variable bindings accepted in one request.
pub const MAX_VARBINDS: usize = 128;
/// Longest object identifier accepted, in arcs.
pub const MAX_ARCS: usize = 128;

/// A decoded request.
#[derive(Debug, PartialEq)]
pub struct Request {
    pub community: Vec<u8>,
    pub kind: u8,
    pub request_id: i32,
    /// GETBULK's non-repeaters (0 for GET and GETNEXT).
    pub non_repeaters: u32,
    /// GETBULK's max-repetitions (0 for GET and GETNEXT).
    pub max_repetitions: u32,
    pub oids: Vec<Vec<u32>>,
}

/// What a response binds to an identifier.
#[derive(Clone, Debug, PartialEq)]
pub enum Binding {
    Value(Value),
    NoSuchObject,
    EndOfMibView,
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("malformed SNMP message: {0}")]
pub struct DecodeError(&'static str);

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads one TLV, returning its tag and contents.
    fn tlv(&mut self) -> Result<(u8, &'a [u8]), DecodeError> {
        let (&tag, rest) = self.bytes.split_first().ok_or(DecodeError("truncated tag"))?;
        let (&first, mut rest) = rest.split_first().ok_or(DecodeError("truncated length"))?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let octets = usize::from(first & 0x7F);
            if octets == 0 || octets > 4 || rest.len() < octets {
                return Err(DecodeError("bad length"));
            }
            let len = rest[..octets].iter().fold(0usize, |acc, &b| acc << 8 | usize::from(b));
            rest = &rest[octets..];
            len
        };
        if rest.len() < len {
            return Err(DecodeError("length past the end"));
        }
        let (contents, rest) = rest.split_at(len);
        self.bytes = rest;
        Ok((tag, contents))
    }

    fn expect(&mut self, tag: u8) -> Result<&'a [u8], DecodeError> {
        match self.tlv()? {
            (t, contents) if t == tag => Ok(contents),
            _ => Err(DecodeError("unexpected tag")),
        }
    }

    fn integer(&mut self) -> Result<i64, DecodeError> {
        let contents = self.expect(0x02)?;
        if contents.is_empty() || contents.len() > 8 {
            return Err(DecodeError("bad integer"));
        }
        let sign = if contents[0] & 0x80 != 0 { -1i64 } else { 0 };
        Ok(contents.iter().fold(sign, |acc, &b| acc << 8 | i64::from(b)))
    }
}

fn decode_oid(contents: &[u8]) -> Result<Vec<u32>, DecodeError> {
    if contents.is_empty() {
        return Err(DecodeError("empty OID"));
    }
    // Sub-identifiers in base 128; the first one packs the first two arcs as 40 * a + b.
    let mut subids: Vec<u64> = Vec::new();
    let mut value: u64 = 0;
    for (i, &b) in contents.iter().enumerate() {
        if value > u64::from(u32::MAX) {
            return Err(DecodeError("OID arc too large"));
        }
        value = value << 7 | u64::from(b & 0x7F);
        if b & 0x80 == 0 {
            subids.push(value);
            value = 0;
            if subids.len() >= MAX_ARCS {
                return Err(DecodeError("OID too long"));
            }
        } else if i == contents.len() - 1 {
            return Err(DecodeError("OID ends inside an arc"));
        }
    }
    let first = subids[0];
    let (a, b) = if first < 80 { (first / 40, first % 40) } else { (2, first - 80) };
    let mut arcs = Vec::with_capacity(subids.len() + 1);
    arcs.push(a as u32);
    arcs.push(u32::try_from(b).map_err(|_| DecodeError("OID arc too large"))?);
    for &arc in &subids[1..] {
        arcs.push(u32::try_from(arc).map_err(|_| DecodeError("OID arc too large"))?);
    }
    Ok(arcs)
}

/// Decodes an SNMPv2c GET, GETNEXT or GETBULK request.
pub fn decode_request(datagram: &[u8]) -> Result<Request, DecodeError> {
    let mut outer = Reader { bytes: datagram };
    let mut message = Reader { bytes: outer.expect(0x30)? };
    if message.integer()? != 1 {
        return Err(DecodeError("not SNMPv2c"));
    }
    let community = message.expect(0x04)?.to_vec();
    let (kind, pdu) = message.tlv()?;
    if ![TAG_GET, TAG_GET_NEXT, TAG_GET_BULK].contains(&kind) {
        return Err(DecodeError("unsupported PDU"));
    }
    let mut pdu = Reader { bytes: pdu };
    let request_id = i32::try_from(pdu.integer()?).map_err(|_| DecodeError("bad request-id"))?;
    let second = pdu.integer()?;
    let third = pdu.integer()?;
    let (non_repeaters, max_repetitions) = if kind == TAG_GET_BULK {
        (second.clamp(0, i64::from(u32::MAX)) as u32, third.clamp(0, i64::from(u32::MAX)) as u32)
    } else {
        (0, 0)
    };
    let mut varbinds = Reader { bytes: pdu.expect(0x30)? };
    let mut oids = Vec::new();
    while !varbinds.bytes.is_empty() {
        if oids.len() == MAX_VARBINDS {
            return Err(DecodeError("too many variable bindings"));
        }
        let mut varbind = Reader { bytes: varbinds.expect(0x30)? };
        oids.push(decode_oid(varbind.expect(0x06)?)?);
        varbind.tlv()?;
    }
    Ok(Request { community, kind, request_id, non_repeaters, max_repetitions, oids })
}

fn push_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn push_tlv(out: &mut Vec<u8>, tag: u8, contents: &[u8]) {
    out.push(tag);
    push_length(out, contents.len());
    out.extend_from_slice(contents);
}

fn push_signed(out: &mut Vec<u8>, tag: u8, n: i64) {
    let bytes = n.to_be_bytes();
    let mut start = 0;
    while start < 7
        && ((bytes[start] == 0 && bytes[start + 1] & 0x80 == 0)
            || (bytes[start] == 0xFF && bytes[start + 1] & 0x80 != 0))
    {
        start += 1;
    }
    push_tlv(out, tag, &bytes[start..]);
}

fn push_unsigned(out: &mut Vec<u8>, tag: u8, n: u64) {
    let bytes = n.to_be_bytes();
    let start = bytes.iter().take_while(|&&b| b == 0).count().min(7);
    if bytes[start] & 0x80 != 0 {
        let mut contents = vec![0];
        contents.extend_from_slice(&bytes[start..]);
        push_tlv(out, tag, &contents);
    } else {
        push_tlv(out, tag, &bytes[start..]);
    }
}

fn push_subid(out: &mut Vec<u8>, mut v: u64) {
    let mut groups = [0u8; 10];
    let mut n = 0;
    loop {
        groups[n] = (v & 0x7F) as u8;
        n += 1;
        v >>= 7;
        if v == 0 {
            break;
        }
    }
    for k in (0..n).rev() {
        out.push(groups[k] | if k > 0 { 0x80 } else { 0 });
    }
}

fn push_oid(out: &mut Vec<u8>, arcs: &[u32]) {
    let mut contents = Vec::with_capacity(arcs.len() + 4);
    let (a, b) = (arcs.first().copied().unwrap_or(0), arcs.get(1).copied().unwrap_or(0));
    push_subid(&mut contents, u64::from(a.min(2)) * 40 + u64::from(b));
    for &arc in arcs.iter().skip(2) {
        push_subid(&mut contents, u64::from(arc));
    }
    push_tlv(out, 0x06, &contents);
}

/// Encodes one variable binding.
pub fn encode_varbind(out: &mut Vec<u8>, oid: &[u32], binding: &Binding) {
    let mut contents = Vec::with_capacity(48);
    push_oid(&mut contents, oid);
    match binding {
        Binding::Value(Value::Integer(n)) => push_signed(&mut contents, 0x02, *n),
        Binding::Value(Value::Text(s)) => push_tlv(&mut contents, 0x04, s.as_bytes()),
        Binding::Value(Value::Oid(o)) => push_oid(&mut contents, o),
        Binding::Value(Value::Counter32(n)) => push_unsigned(&mut contents, 0x41, u64::from(*n)),
        Binding::Value(Value::Gauge32(n)) => push_unsigned(&mut contents, 0x42, u64::from(*n)),
        Binding::Value(Value::TimeTicks(n)) => push_unsigned(&mut contents, 0x43, u64::from(*n)),
        Binding::Value(Value::Counter64(n)) => push_unsigned(&mut contents, 0x46, *n),
        Binding::NoSuchObject => push_tlv(&mut contents, 0x80, &[]),
        Binding::EndOfMibView => push_tlv(&mut contents, 0x82, &[]),
    }
    push_tlv(out, 0x30, &contents);
}

/// The error-status of a response that would not fit (RFC 3416).
pub const TOO_BIG: i64 = 1;

/// Wraps encoded variable bindings into a v2c Response message.
pub fn encode_response(community: &[u8], request_id: i32, error_status: i64, varbinds: &[u8]) -> Vec<u8> {
    let mut pdu = Vec::with_capacity(varbinds.len() + 16);
    push_signed(&mut pdu, 0x02, i64::from(request_id));
    push_signed(&mut pdu, 0x02, error_status);
    push_signed(&mut pdu, 0x02, 0);
    push_tlv(&mut pdu, 0x30, varbinds);
    let mut message = Vec::with_capacity(pdu.len() + community.len() + 16);
    push_signed(&mut message, 0x02, 1);
    push_tlv(&mut message, 0x04, community);
    push_tlv(&mut message, TAG_RESPONSE, &pdu);
    let mut out = Vec::with_capacity(message.len() + 4);
    push_tlv(&mut out, 0x30, &message);
    out
}

/// Encodes a request: the collector's tests and the benchmarks use it to speak to agents.
pub fn encode_request(
    community: &[u8],
    kind: u8,
    request_id: i32,
    second: i64,
    third: i64,
    oids: &[Vec<u32>],
) -> Vec<u8> {
    let mut varbinds = Vec::new();
    for oid in oids {
        let mut contents = Vec::new();
        push_oid(&mut contents, oid);
        push_tlv(&mut contents, 0x05, &[]);
        push_tlv(&mut varbinds, 0x30, &contents);
    }
    let mut pdu = Vec::new();
    push_signed(&mut pdu, 0x02, i64::from(request_id));
    push_signed(&mut pdu, 0x02, second);
    push_signed(&mut pdu, 0x02, third);
    push_tlv(&mut pdu, 0x30, &varbinds);
    let mut message = Vec::new();
    push_signed(&mut message, 0x02, 1);
    push_tlv(&mut message, 0x04, community);
    push_tlv(&mut message, kind, &pdu);
    let mut out = Vec::new();
    push_tlv(&mut out, 0x30, &message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        encode_request(
            b"public",
            TAG_GET_BULK,
            77,
            1,
            10,
            &[vec![1, 3, 6, 1, 2, 1, 1, 3], vec![1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 6, 300_000]],
        )
    }

    #[test]
    fn requests_round_trip() {
        let request = decode_request(&sample()).unwrap();
        assert_eq!(request.community, b"public");
        assert_eq!(
            (request.kind, request.request_id, request.non_repeaters, request.max_repetitions),
            (TAG_GET_BULK, 77, 1, 10)
        );
        assert_eq!(request.oids[1], vec![1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 6, 300_000]);
        // First arcs past 2.47 take more than one byte.
        let odd = encode_request(b"c", TAG_GET, 1, 0, 0, &[vec![2, 999, 3], vec![1, 3, u32::MAX]]);
        assert_eq!(decode_request(&odd).unwrap().oids, vec![vec![2, 999, 3], vec![1, 3, u32::MAX]]);
        let negative = encode_request(b"c", TAG_GET, -5, 0, 0, &[vec![1, 3]]);
        assert_eq!(decode_request(&negative).unwrap().request_id, -5);
    }

    #[test]
    fn values_encode_minimally() {
        let mut out = Vec::new();
        encode_varbind(&mut out, &[1, 3], &Binding::Value(Value::Counter32(0x8000_0000)));
        assert_eq!(&out[out.len() - 7..], &[0x41, 5, 0, 0x80, 0, 0, 0]);
        let mut out = Vec::new();
        encode_varbind(&mut out, &[1, 3], &Binding::Value(Value::Integer(-1)));
        assert_eq!(&out[out.len() - 3..], &[0x02, 1, 0xFF]);
        let mut out = Vec::new();
        encode_varbind(&mut out, &[1, 3], &Binding::Value(Value::Integer(128)));
        assert_eq!(&out[out.len() - 4..], &[0x02, 2, 0, 0x80]);
    }

    /// A small deterministic generator, so the fuzz cases are the same on every run.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    #[test]
    fn fuzz_truncations_bit_flips_and_noise_never_panic() {
        let good = sample();
        for len in 0..good.len() {
            assert!(decode_request(&good[..len]).is_err(), "truncated to {len} bytes");
        }
        let mut rng = Lcg(42);
        for _ in 0..50_000 {
            let mut bytes = good.clone();
            for _ in 0..=rng.next() % 4 {
                let i = (rng.next() as usize) % bytes.len();
                bytes[i] ^= 1 << (rng.next() % 8);
            }
            let _ = decode_request(&bytes);
            let noise: Vec<u8> = (0..rng.next() % 64).map(|_| rng.next() as u8).collect();
            let _ = decode_request(&noise);
        }
    }
}
