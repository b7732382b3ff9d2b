//! SNMP as the collector and simulator see it: the simulator's BER request decoder, and the
//! collector's table walk fed arbitrary GETBULK answers (it must end, or fail, never loop or
//! panic). The first byte picks which.
use pollux_collector::snmp::{Binding, SnmpValue};
use pollux_collector::walk::TableWalk;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((&which, rest)) = data.split_first() else { return };
        if which % 2 == 0 {
            let _ = pollux_simulator::ber::decode_request(rest);
            return;
        }
        let columns = vec![vec![1, 3, 6, 1, 2, 1, 2, 2, 1, 2], vec![1, 3, 6, 1, 2, 1, 2, 2, 1, 10]];
        let mut walk = TableWalk::new(columns);
        let mut answers = rest.chunks(24);
        for _ in 0..64 {
            if walk.next_request().is_none() {
                break;
            }
            let Some(answer) = answers.next() else { break };
            let bindings: Vec<Binding> = answer
                .chunks(6)
                .map(|b| {
                    let mut oid = vec![1, 3, 6, 1, 2, 1, 2, 2, 1];
                    oid.extend(b.iter().take(4).map(|&x| u32::from(x % 16)));
                    let value = match b.last().copied().unwrap_or(0) % 4 {
                        0 => SnmpValue::Missing,
                        1 => SnmpValue::Counter32(u32::from(b[0])),
                        2 => SnmpValue::Text(b.to_vec()),
                        _ => SnmpValue::Integer(i64::from(b[0])),
                    };
                    Binding { oid, value }
                })
                .collect();
            if walk.feed(&bindings).is_err() {
                break;
            }
        }
        let _ = walk.into_rows();
    });
}
