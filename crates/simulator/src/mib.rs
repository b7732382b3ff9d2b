//! What a simulated device holds: the objects of SNMPv2-MIB (system), IF-MIB (ifTable,
//! ifXTable) and HOST-RESOURCES-MIB (hrStorageTable, hrProcessorTable), and their values.
//!
//! Values are pure functions of the device number, the object and the time, so a device needs no
//! stored state and 10,000 of them cost almost nothing. Each interface carries traffic at its own
//! rate, which swings by ±30 % over a period of 5 to 15 minutes; counters are that rate integrated
//! since the device's boot, so two reads a few seconds apart give the rate a collector should
//! report. The 32-bit counters start at offsets that make them wrap soon after the simulator
//! starts: ifInOctets and ifOutOctets 10 to 20 s after, errors and discards within 5 minutes. All devices of one simulator share one [`Shape`]: the sorted list of
//! object identifiers, searched for GET and GETNEXT.

use std::f64::consts::TAU;

/// A value as the simulator encodes it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Integer(i64),
    Text(String),
    Oid(Vec<u32>),
    Counter32(u32),
    Gauge32(u32),
    TimeTicks(u32),
    Counter64(u64),
}

const SYSTEM: [u32; 7] = [1, 3, 6, 1, 2, 1, 1];
const IF_NUMBER: [u32; 9] = [1, 3, 6, 1, 2, 1, 2, 1, 0];
const IF_ENTRY: [u32; 9] = [1, 3, 6, 1, 2, 1, 2, 2, 1];
const IFX_ENTRY: [u32; 10] = [1, 3, 6, 1, 2, 1, 31, 1, 1, 1];
const HR_STORAGE_ENTRY: [u32; 10] = [1, 3, 6, 1, 2, 1, 25, 2, 3, 1];
const HR_PROCESSOR_LOAD: [u32; 11] = [1, 3, 6, 1, 2, 1, 25, 3, 3, 1, 2];
const HR_STORAGE_TYPES: [u32; 9] = [1, 3, 6, 1, 2, 1, 25, 2, 1];
/// hrDeviceIndex of the first processor, as net-snmp numbers them.
const FIRST_CPU: u32 = 196_608;
const CPUS: u32 = 2;

/// One object of a device.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Object {
    SysDescr,
    SysUpTime,
    SysName,
    IfNumber,
    /// An ifTable column (its IF-MIB column number) of one interface.
    If(u32, u32),
    /// An ifXTable column of one interface.
    IfX(u32, u32),
    /// An hrStorageTable column of one storage entry.
    Storage(u32, u32),
    CpuLoad(u32),
}

const IF_COLUMNS: [u32; 10] = [1, 2, 3, 5, 10, 13, 14, 16, 19, 20];
const IFX_COLUMNS: [u32; 8] = [1, 6, 7, 10, 11, 15, 18, 19];
/// hrStorage entries: index, type (last arc under hrStorageTypes), description, unit.
const STORAGE: [(u32, u32, &str, u32); 3] =
    [(1, 2, "Physical memory", 1024), (3, 3, "Virtual memory", 1024), (31, 4, "/", 4096)];

/// The sorted object identifiers every device of a simulator answers for.
pub struct Shape {
    objects: Vec<(Vec<u32>, Object)>,
    pub interfaces: u32,
}

impl Shape {
    pub fn new(interfaces: u32) -> Shape {
        let mut objects = vec![
            (oid(&SYSTEM, &[1, 0]), Object::SysDescr),
            (oid(&SYSTEM, &[3, 0]), Object::SysUpTime),
            (oid(&SYSTEM, &[5, 0]), Object::SysName),
            (IF_NUMBER.to_vec(), Object::IfNumber),
        ];
        for column in IF_COLUMNS {
            objects.extend((1..=interfaces).map(|i| (oid(&IF_ENTRY, &[column, i]), Object::If(column, i))));
        }
        for column in IFX_COLUMNS {
            objects.extend((1..=interfaces).map(|i| (oid(&IFX_ENTRY, &[column, i]), Object::IfX(column, i))));
        }
        for column in 1..=6 {
            objects
                .extend(STORAGE.iter().map(|s| (oid(&HR_STORAGE_ENTRY, &[column, s.0]), Object::Storage(column, s.0))));
        }
        objects.extend((0..CPUS).map(|k| (oid(&HR_PROCESSOR_LOAD, &[FIRST_CPU + k]), Object::CpuLoad(FIRST_CPU + k))));
        objects.sort_by(|a, b| a.0.cmp(&b.0));
        Shape { objects, interfaces }
    }

    /// The value of exactly `oid`, if the device has it.
    pub fn get(&self, device: &Device, oid: &[u32], now: f64) -> Option<Value> {
        let i = self.objects.binary_search_by(|(o, _)| o.as_slice().cmp(oid)).ok()?;
        Some(device.value(self.objects[i].1, now))
    }

    /// The first object after `oid` in lexicographic order, with its value (GETNEXT).
    pub fn next(&self, device: &Device, oid: &[u32], now: f64) -> Option<(&[u32], Value)> {
        let i = self.objects.partition_point(|(o, _)| o.as_slice() <= oid);
        self.objects.get(i).map(|(o, object)| (o.as_slice(), device.value(*object, now)))
    }
}

fn oid(prefix: &[u32], suffix: &[u32]) -> Vec<u32> {
    prefix.iter().chain(suffix).copied().collect()
}

/// One simulated device: its number and its boot time.
#[derive(Clone, Debug)]
pub struct Device {
    pub number: u32,
    pub name: String,
    /// Unix time of the device's boot, with fractions.
    pub boot: f64,
    /// Unix time the simulator started: the 32-bit counters wrap a few minutes after it.
    pub start: f64,
}

/// A deterministic 64-bit hash of a device, an object and a purpose (splitmix64).
fn hash(device: u32, item: u32, salt: u64) -> u64 {
    let mut z = (u64::from(device) << 32 | u64::from(item)) ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A number in `[0, 1)` drawn from a hash.
fn unit(device: u32, item: u32, salt: u64) -> f64 {
    (hash(device, item, salt) >> 11) as f64 / (1u64 << 53) as f64
}

/// A rate that swings by ±30 % around `mean` with a period of 5 to 15 minutes.
pub(crate) struct Swing {
    mean: f64,
    period: f64,
    phase: f64,
}

impl Swing {
    fn new(mean: f64, device: u32, item: u32, salt: u64) -> Swing {
        Swing { mean, period: 300.0 + 600.0 * unit(device, item, salt + 1), phase: TAU * unit(device, item, salt + 2) }
    }

    /// The rate at time `t`.
    fn at(&self, t: f64) -> f64 {
        self.mean * (1.0 + 0.3 * (TAU * t / self.period + self.phase).sin())
    }

    /// The rate integrated from `from` to `to`: what a counter gains over that span.
    fn integral(&self, from: f64, to: f64) -> f64 {
        let k = 0.3 * self.period / TAU;
        let antiderivative = |t: f64| t - k * (TAU * t / self.period + self.phase).cos();
        self.mean * (antiderivative(to) - antiderivative(from))
    }
}

impl Device {
    pub fn new(number: u32, name: String, boot: f64, start: f64) -> Device {
        Device { number, name, boot, start }
    }

    /// The interface's speed in Mb/s (ifHighSpeed).
    fn speed_mbps(&self, interface: u32) -> u32 {
        [100, 1_000, 1_000, 10_000][(hash(self.number, interface, 1) % 4) as usize]
    }

    /// The interface's traffic in octets per second, in (`inbound`) or out.
    pub(crate) fn octet_rate(&self, interface: u32, inbound: bool) -> Swing {
        let salt = if inbound { 10 } else { 20 };
        let utilization = 0.01 + 0.5 * unit(self.number, interface, salt);
        let mean = f64::from(self.speed_mbps(interface)) * 1e6 / 8.0 * utilization;
        Swing::new(mean, self.number, interface, salt)
    }

    fn packet_rate(&self, interface: u32, inbound: bool) -> Swing {
        let octets = self.octet_rate(interface, inbound);
        let packet_size = 200.0 + 1200.0 * unit(self.number, interface, 30);
        Swing { mean: octets.mean / packet_size, ..octets }
    }

    fn error_rate(&self, interface: u32, column: u32) -> Swing {
        Swing::new(2.0 * unit(self.number, interface, 40 + u64::from(column)), self.number, interface, 50)
    }

    /// A counter of `rate` since boot, plus a per-object offset.
    fn counter(&self, rate: &Swing, offset: u64, now: f64) -> u64 {
        offset.wrapping_add(rate.integral(self.boot, now).max(0.0) as u64)
    }

    /// A 32-bit counter whose offset makes it wrap a few minutes after the simulator started.
    fn counter32(&self, rate: &Swing, interface: u32, column: u32, now: f64) -> u32 {
        // Octet counters wrap 10 to 20 s after the start (tests see it), the others within minutes.
        let (first, spread) = if column == 10 || column == 16 { (10.0, 10.0) } else { (60.0, 240.0) };
        let seconds_to_wrap = first + spread * unit(self.number, interface, 60 + u64::from(column));
        let until_start = rate.integral(self.boot, self.start).max(0.0) as u64;
        let offset = (1u64 << 32).wrapping_sub(until_start).wrapping_sub((rate.mean * seconds_to_wrap) as u64);
        (self.counter(rate, offset, now) & 0xFFFF_FFFF) as u32
    }

    fn value(&self, object: Object, now: f64) -> Value {
        let n = self.number;
        match object {
            Object::SysDescr => Value::Text(format!("Pollux simulated device {n}")),
            Object::SysUpTime => Value::TimeTicks(((now - self.boot) * 100.0) as u64 as u32),
            Object::SysName => Value::Text(self.name.clone()),
            Object::IfNumber => Value::Integer(0),
            Object::If(column, i) => match column {
                1 => Value::Integer(i64::from(i)),
                2 => Value::Text(format!("GigabitEthernet0/{i}")),
                3 => Value::Integer(6),
                5 => Value::Gauge32(self.speed_mbps(i).saturating_mul(1_000_000)),
                10 => Value::Counter32(self.counter32(&self.octet_rate(i, true), i, column, now)),
                16 => Value::Counter32(self.counter32(&self.octet_rate(i, false), i, column, now)),
                _ => Value::Counter32(self.counter32(&self.error_rate(i, column), i, column, now)),
            },
            Object::IfX(column, i) => match column {
                1 => Value::Text(format!("ge-0/0/{i}")),
                6 => Value::Counter64(self.counter(&self.octet_rate(i, true), hash(n, i, 6), now)),
                7 => Value::Counter64(self.counter(&self.packet_rate(i, true), hash(n, i, 7), now)),
                10 => Value::Counter64(self.counter(&self.octet_rate(i, false), hash(n, i, 10), now)),
                11 => Value::Counter64(self.counter(&self.packet_rate(i, false), hash(n, i, 11), now)),
                15 => Value::Gauge32(self.speed_mbps(i)),
                18 => Value::Text(format!("uplink {n}/{i}")),
                _ => Value::TimeTicks(0),
            },
            Object::Storage(column, index) => {
                let (_, kind, description, unit_bytes) =
                    STORAGE.iter().copied().find(|s| s.0 == index).expect("storage index from the shape");
                let total_bytes = (2u64 << (hash(n, index, 70) % 5)) << 30;
                let size = total_bytes / u64::from(unit_bytes);
                let used = Swing::new(0.55, n, index, 80).at(now).min(0.99);
                match column {
                    1 => Value::Integer(i64::from(index)),
                    2 => Value::Oid(oid(&HR_STORAGE_TYPES, &[kind])),
                    3 => Value::Text(description.to_owned()),
                    4 => Value::Integer(i64::from(unit_bytes)),
                    5 => Value::Integer(size.min(i32::MAX as u64) as i64),
                    _ => Value::Integer(((size as f64 * used) as u64).min(i32::MAX as u64) as i64),
                }
            }
            Object::CpuLoad(index) => {
                let load =
                    Swing::new(35.0, n, index, 90).at(now) * 2.0 - 35.0 + 10.0 * unit(n, (now / 60.0) as u32, 91);
                Value::Integer(load.clamp(0.0, 100.0) as i64)
            }
        }
    }
}

/// The rate, in octets per second, a collector should report for interface `i` of `device`
/// over `[from, to]`: what the counters gained divided by the time. For tests.
pub fn expected_octet_rate(device: &Device, interface: u32, inbound: bool, from: f64, to: f64) -> f64 {
    device.octet_rate(interface, inbound).integral(from, to) / (to - from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getnext_walks_every_object_in_order() {
        let shape = Shape::new(3);
        let device = Device::new(7, "d".into(), 1_000.0, 1_000.0);
        let mut at: Vec<u32> = vec![1, 3];
        let mut seen = 0;
        while let Some((next, _)) = shape.next(&device, &at, 2_000.0) {
            assert!(next > at.as_slice());
            at = next.to_vec();
            seen += 1;
        }
        assert_eq!(seen, shape.objects.len());
        assert_eq!(shape.get(&device, &[1, 3, 6, 1, 2, 1, 1, 3, 0], 2_000.0), Some(Value::TimeTicks(100_000)));
        assert_eq!(shape.get(&device, &[1, 3, 6, 1, 2, 1, 1, 3], 2_000.0), None);
    }

    #[test]
    fn counters_grow_at_the_rate_and_thirty_two_bit_ones_wrap() {
        let shape = Shape::new(2);
        let device = Device::new(3, "d".into(), 5_000.0, 10_000.0);
        let read = |column: u32, t: f64| match shape.get(&device, &oid(&IFX_ENTRY, &[column, 1]), t) {
            Some(Value::Counter64(c)) => c,
            other => panic!("{other:?}"),
        };
        let (t0, t1) = (20_000.0, 20_010.0);
        let measured = (read(6, t1) - read(6, t0)) as f64 / (t1 - t0);
        let expected = expected_octet_rate(&device, 1, true, t0, t1);
        assert!((measured - expected).abs() < 1.0, "{measured} vs {expected}");
        let wrapped = (0..600).any(|s| {
            let at = |t| match shape.get(&device, &oid(&IF_ENTRY, &[10, 1]), t) {
                Some(Value::Counter32(c)) => c,
                other => panic!("{other:?}"),
            };
            at(10_000.0 + f64::from(s + 1)) < at(10_000.0 + f64::from(s))
        });
        assert!(wrapped, "ifInOctets should wrap within seconds of the start");
    }
}
