//! A compact, checksummed binary form of a DTO (`application/x-pollux-dto`).
//!
//! Little-endian throughout; strings are a `u16` byte length and UTF-8 bytes.
//!
//! ```text
//! magic    "PXD1"
//! header   id, collector, family: string; cycle: i64; interval: u32
//! columns  count: u16 (<= 64), then each metric name: string
//! records  count: u32, then each record:
//!            device, item: string; ts: i64; present: u64 (bit i = column i has a value);
//!            one f64 per set bit, in column order
//! trailer  crc32 (IEEE) of every byte before it: u32
//! ```
//!
//! The decoder trusts nothing: every length is bounds-checked, the checksum is verified before
//! any field is read, and a bad input is an error, never a panic (a fuzz target says so).

use crate::dto::{Dto, DtoError, Record};

const MAGIC: &[u8; 4] = b"PXD1";
const MAX_COLUMNS: usize = 64;

/// Encodes a DTO. Panics only on a DTO that validation would have refused (a string over 64 KiB
/// or more than 64 columns).
pub fn encode(dto: &Dto) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + dto.records.len() * (40 + 8 * dto.metrics.len()));
    out.extend_from_slice(MAGIC);
    put_str(&mut out, &dto.id);
    put_str(&mut out, &dto.collector);
    put_str(&mut out, &dto.family);
    out.extend_from_slice(&dto.cycle.to_le_bytes());
    out.extend_from_slice(&dto.interval.to_le_bytes());
    assert!(dto.metrics.len() <= MAX_COLUMNS, "at most {MAX_COLUMNS} metric columns");
    out.extend_from_slice(&(dto.metrics.len() as u16).to_le_bytes());
    for name in &dto.metrics {
        put_str(&mut out, name);
    }
    out.extend_from_slice(&(u32::try_from(dto.records.len()).expect("record count fits u32")).to_le_bytes());
    for record in &dto.records {
        put_str(&mut out, &record.device);
        put_str(&mut out, &record.item);
        out.extend_from_slice(&record.ts.to_le_bytes());
        let mut present = 0u64;
        for (i, v) in record.values.iter().enumerate() {
            if v.is_some() {
                present |= 1 << i;
            }
        }
        out.extend_from_slice(&present.to_le_bytes());
        for v in record.values.iter().flatten() {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("strings in a DTO are shorter than 64 KiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Decodes a DTO, verifying the checksum first. More than `max_records` records is an error
/// before anything is allocated for them (the DTO files of the store pass `usize::MAX`: they
/// were checked when they were acknowledged).
pub fn decode(bytes: &[u8], max_records: usize) -> Result<Dto, DtoError> {
    let body_len = bytes
        .len()
        .checked_sub(4)
        .filter(|_| bytes.starts_with(MAGIC))
        .ok_or_else(|| DtoError::new("body", "not a Pollux binary DTO (bad magic)"))?;
    let (body, trailer) = bytes.split_at(body_len);
    let stored = u32::from_le_bytes(trailer.try_into().expect("4 bytes"));
    if crc32fast::hash(body) != stored {
        return Err(DtoError::new("body", "checksum mismatch: the DTO is damaged or truncated"));
    }
    let mut r = Reader { bytes: body, pos: MAGIC.len() };
    let id = r.string("id")?;
    let collector = r.string("collector")?;
    let family = r.string("family")?;
    let cycle = r.i64("cycle")?;
    let interval = r.u32("interval")?;
    let columns = usize::from(r.u16("metrics")?);
    if columns > MAX_COLUMNS {
        return Err(DtoError::new("metrics", format!("{columns} columns, more than {MAX_COLUMNS}")));
    }
    let metrics = (0..columns).map(|i| r.string(&format!("metrics[{i}]"))).collect::<Result<Vec<_>, _>>()?;
    let count = r.u32("records")? as usize;
    // Every record takes at least 20 bytes, so a count beyond that is a lie; don't allocate it.
    if count > r.remaining() / 20 {
        return Err(DtoError::new("records", format!("count {count} exceeds the data present")));
    }
    if count > max_records {
        return Err(DtoError::new(
            "records",
            format!("{count} records, more than the limit of {max_records}: split the cycle into parts"),
        ));
    }
    let mut records = Vec::with_capacity(count);
    for i in 0..count {
        let field = |key: &str| format!("records[{i}].{key}");
        let device = r.string(&field("device"))?;
        let item = r.string(&field("item"))?;
        let ts = r.i64(&field("ts"))?;
        let present = r.u64(&field("values"))?;
        if columns < 64 && present >> columns != 0 {
            return Err(DtoError::new(field("values"), "presence mask names a column that does not exist"));
        }
        let mut values = vec![None; columns];
        for (c, value) in values.iter_mut().enumerate() {
            if present & (1 << c) != 0 {
                *value = Some(f64::from_le_bytes(r.take(8, &field("values"))?.try_into().expect("8 bytes")));
            }
        }
        records.push(Record { device, item, ts, values });
    }
    if r.remaining() != 0 {
        return Err(DtoError::new("body", format!("{} bytes of trailing garbage", r.remaining())));
    }
    Ok(Dto { id, collector, family, cycle, interval, metrics, records })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], DtoError> {
        if self.remaining() < n {
            return Err(DtoError::new(field, "truncated"));
        }
        let slice = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn u16(&mut self, field: &str) -> Result<u16, DtoError> {
        Ok(u16::from_le_bytes(self.take(2, field)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self, field: &str) -> Result<u32, DtoError> {
        Ok(u32::from_le_bytes(self.take(4, field)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, field: &str) -> Result<u64, DtoError> {
        Ok(u64::from_le_bytes(self.take(8, field)?.try_into().expect("8 bytes")))
    }

    fn i64(&mut self, field: &str) -> Result<i64, DtoError> {
        Ok(i64::from_le_bytes(self.take(8, field)?.try_into().expect("8 bytes")))
    }

    fn string(&mut self, field: &str) -> Result<String, DtoError> {
        let len = usize::from(self.u16(field)?);
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DtoError::new(field, "not valid UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Dto {
        Dto {
            id: "dc1.Interface.1763830800.0".into(),
            collector: "dc1".into(),
            family: "Interface".into(),
            cycle: 1_763_830_800,
            interval: 300,
            metrics: vec!["in_bps".into(), "out_bps".into()],
            records: (0..50)
                .map(|i| Record {
                    device: format!("rtr-{}", i % 7),
                    item: format!("ge-0/0/{i}"),
                    ts: 1_763_830_812 + i,
                    values: vec![Some(i as f64 * 1.5), if i % 3 == 0 { None } else { Some(-0.25) }],
                })
                .collect(),
        }
    }

    #[test]
    fn round_trips() {
        let dto = sample();
        assert_eq!(decode(&encode(&dto), usize::MAX).unwrap(), dto);
        assert_eq!(decode(&encode(&dto), 49).unwrap_err().field, "records");
    }

    #[test]
    fn every_truncation_and_every_bit_flip_is_an_error() {
        let bytes = encode(&sample());
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len], usize::MAX).is_err(), "truncated to {len}");
        }
        for pos in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[pos] ^= 1 << bit;
                assert!(decode(&damaged, usize::MAX).is_err(), "flip of bit {bit} at {pos}");
            }
        }
    }

    #[test]
    fn smaller_than_json() {
        let dto = sample();
        assert!(encode(&dto).len() < crate::codec::json::encode(&dto).len());
    }
}
