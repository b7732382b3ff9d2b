//! The DTO: one metric family over one poll cycle from one collector.
//!
//! A DTO is the unit of transfer, durability and loading. Its `id`, chosen by the collector, is
//! the idempotency key everywhere: the aggregator stores an id once, loads it once, and answers
//! a repeated PUT with 200.
//!
//! In memory a DTO is column-shaped: `metrics` names the value columns once and every record
//! holds one optional value per column. The JSON of the contract (a map of values per record) is
//! turned into this shape by [`crate::codec::json`]; the binary codec writes it as it is.

use crate::family::Catalog;
use crate::UnixSeconds;
use std::collections::HashSet;

/// Longest DTO id.
pub const MAX_ID_LEN: usize = 200;
/// Longest collector, device or item name.
pub const MAX_NAME_LEN: usize = 255;
/// Longest poll interval a DTO may declare (one day).
pub const MAX_INTERVAL: u32 = 86_400;

/// A validated DTO id: `[A-Za-z0-9._:-]{1,200}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DtoId(String);

impl DtoId {
    pub fn parse(text: &str) -> Result<DtoId, DtoError> {
        if text.is_empty() || text.len() > MAX_ID_LEN {
            return Err(DtoError::new("id", format!("must be 1 to {MAX_ID_LEN} characters long")));
        }
        if let Some(c) = text.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))) {
            return Err(DtoError::new("id", format!("{c:?} is not allowed: use only A-Z a-z 0-9 . _ : -")));
        }
        Ok(DtoId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DtoId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The fingerprint of a DTO's content (see [`Dto::digest`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest(pub [u8; 16]);

/// One item's values at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub device: String,
    pub item: String,
    pub ts: UnixSeconds,
    /// One entry per column of [`Dto::metrics`]; `None` where the record has no such value.
    pub values: Vec<Option<f64>>,
}

/// One metric family over one poll cycle from one collector.
#[derive(Clone, Debug, PartialEq)]
pub struct Dto {
    pub id: String,
    pub collector: String,
    pub family: String,
    /// Start of the poll cycle, Unix seconds.
    pub cycle: UnixSeconds,
    /// Length of the poll cycle in seconds.
    pub interval: u32,
    /// The names of the value columns.
    pub metrics: Vec<String>,
    pub records: Vec<Record>,
}

/// What the aggregator accepts, beyond the shape of the contract.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most records in one DTO; a collector splits a larger cycle into parts.
    pub max_records: usize,
    /// How far in the future a cycle may start, to catch collectors with a wrong clock.
    pub max_future_seconds: i64,
    /// How far in the past a cycle may start: data older than the raw retention would be
    /// expired at once, and would re-roll periods whose raw data is gone.
    pub max_age_seconds: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_records: 100_000, max_future_seconds: 3600, max_age_seconds: 35 * 86_400 }
    }
}

/// Why a DTO was refused: the field at fault (a path such as `records[3].values.in_bps`) and
/// the problem, both meant for the operator reading the 400 answer.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct DtoError {
    pub field: String,
    pub problem: String,
}

impl DtoError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> DtoError {
        DtoError { field: field.into(), problem: problem.into() }
    }
}

impl Dto {
    /// The window a record's timestamp must fall in: from the cycle's start to the end of the
    /// next cycle, since a poll that starts late in its cycle may finish in the next one.
    pub fn ts_window(cycle: UnixSeconds, interval: u32) -> (UnixSeconds, UnixSeconds) {
        (cycle, cycle + 2 * i64::from(interval))
    }

    /// A fingerprint of the DTO's content, the same whichever codec carried it and in whatever
    /// order its metrics were written: an id sent again with other content is refused (409),
    /// not silently dropped. SHA-256 of a canonical form, cut to 128 bits.
    pub fn digest(&self) -> Digest {
        use sha2::{Digest as _, Sha256};
        // The canonical form: the header, the names of the columns that hold a value (sorted),
        // then per record its names, time, a presence mask over those columns and the values'
        // bits. About 8 bytes hashed per value, so the loader can afford it for every DTO.
        let mut used: Vec<usize> =
            (0..self.metrics.len()).filter(|&c| self.records.iter().any(|r| r.values[c].is_some())).collect();
        used.sort_by(|&a, &b| self.metrics[a].cmp(&self.metrics[b]));
        let mut h = Sha256::new();
        let mut buf: Vec<u8> = Vec::with_capacity(256);
        let text = |buf: &mut Vec<u8>, s: &str| {
            buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
            buf.extend_from_slice(s.as_bytes());
        };
        text(&mut buf, &self.id);
        text(&mut buf, &self.collector);
        text(&mut buf, &self.family);
        buf.extend_from_slice(&self.cycle.to_le_bytes());
        buf.extend_from_slice(&self.interval.to_le_bytes());
        buf.extend_from_slice(&(used.len() as u64).to_le_bytes());
        for &c in &used {
            text(&mut buf, &self.metrics[c]);
        }
        buf.extend_from_slice(&(self.records.len() as u64).to_le_bytes());
        h.update(&buf);
        for record in &self.records {
            buf.clear();
            text(&mut buf, &record.device);
            text(&mut buf, &record.item);
            buf.extend_from_slice(&record.ts.to_le_bytes());
            let mut present = 0u64;
            for (bit, &c) in used.iter().enumerate() {
                if record.values[c].is_some() {
                    present |= 1 << bit;
                }
            }
            buf.extend_from_slice(&present.to_le_bytes());
            for &c in &used {
                if let Some(v) = record.values[c] {
                    buf.extend_from_slice(&v.to_bits().to_le_bytes());
                }
            }
            h.update(&buf);
        }
        let full = h.finalize();
        Digest(full[..16].try_into().expect("16 of 32 bytes"))
    }

    /// Total number of values (non-empty cells) in the DTO.
    pub fn value_count(&self) -> usize {
        self.records.iter().map(|r| r.values.iter().flatten().count()).sum()
    }

    /// Checks everything the contract requires of a DTO against the families in `catalog`, with
    /// `now` the receiver's clock. `path_id` is the id in the request path, when there is one.
    pub fn validate(&self, catalog: &Catalog, limits: &Limits, now: UnixSeconds) -> Result<(), DtoError> {
        DtoId::parse(&self.id)?;
        check_name("collector", &self.collector)?;
        let family = catalog.get(&self.family).ok_or_else(|| unknown_family(catalog, &self.family))?;
        for (i, name) in self.metrics.iter().enumerate() {
            if family.metric(name).is_none() {
                return Err(DtoError::new(
                    format!("metrics[{i}]"),
                    format!("family {} has no metric {name:?}", family.name),
                ));
            }
            if self.metrics[..i].contains(name) {
                return Err(DtoError::new(format!("metrics[{i}]"), format!("{name:?} appears twice")));
            }
        }
        if self.interval == 0 || self.interval > MAX_INTERVAL {
            return Err(DtoError::new("interval", format!("must be 1 to {MAX_INTERVAL} seconds")));
        }
        if self.cycle < 0 {
            return Err(DtoError::new("cycle", "must be Unix seconds, not negative"));
        }
        if self.cycle > now + limits.max_future_seconds {
            return Err(DtoError::new(
                "cycle",
                format!(
                    "{} is more than {}s ahead of this aggregator's clock ({now})",
                    self.cycle, limits.max_future_seconds
                ),
            ));
        }
        if self.cycle < now - limits.max_age_seconds {
            return Err(DtoError::new(
                "cycle",
                format!("{} is older than the raw retention ({}s) allows", self.cycle, limits.max_age_seconds),
            ));
        }
        if self.records.len() > limits.max_records {
            return Err(DtoError::new(
                "records",
                format!(
                    "{} records, more than the limit of {}: split the cycle into parts",
                    self.records.len(),
                    limits.max_records
                ),
            ));
        }
        let (from, to) = Dto::ts_window(self.cycle, self.interval);
        let mut seen = HashSet::with_capacity(self.records.len());
        for (i, record) in self.records.iter().enumerate() {
            let field = |key: &str| format!("records[{i}].{key}");
            check_name(&field("device"), &record.device)?;
            check_name(&field("item"), &record.item)?;
            if record.ts < from || record.ts >= to {
                return Err(DtoError::new(
                    field("ts"),
                    format!("{} is outside the cycle's window [{from}, {to})", record.ts),
                ));
            }
            if record.values.len() != self.metrics.len() {
                return Err(DtoError::new(field("values"), "does not match the DTO's metric columns"));
            }
            if record.values.iter().all(Option::is_none) {
                return Err(DtoError::new(field("values"), "has no value"));
            }
            for (value, name) in record.values.iter().zip(&self.metrics) {
                if let Some(v) = value {
                    if !v.is_finite() {
                        return Err(DtoError::new(format!("records[{i}].values.{name}"), "must be a finite number"));
                    }
                }
            }
            if !seen.insert((record.device.as_str(), record.item.as_str())) {
                return Err(DtoError::new(
                    field("item"),
                    format!("device {:?} item {:?} appears twice in one cycle", record.device, record.item),
                ));
            }
        }
        Ok(())
    }
}

pub(crate) fn unknown_family(catalog: &Catalog, name: &str) -> DtoError {
    let known: Vec<&str> = catalog.iter().map(|f| f.name.as_str()).collect();
    DtoError::new("family", format!("unknown family {name:?} (known: {})", known.join(", ")))
}

fn check_name(field: &str, name: &str) -> Result<(), DtoError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(DtoError::new(field, format!("must be 1 to {MAX_NAME_LEN} bytes long")));
    }
    if name.chars().any(char::is_control) {
        return Err(DtoError::new(field, "must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Dto {
        Dto {
            id: "dc1.Interface.1763830800.0".into(),
            collector: "dc1".into(),
            family: "Interface".into(),
            cycle: 1_763_830_800,
            interval: 300,
            metrics: vec!["in_bps".into(), "out_bps".into(), "in_util".into()],
            records: vec![Record {
                device: "core-rtr-1".into(),
                item: "ge-0/0/1".into(),
                ts: 1_763_830_812,
                values: vec![Some(1_250_000.0), Some(340_000.0), Some(12.5)],
            }],
        }
    }

    fn check(dto: &Dto) -> Result<(), DtoError> {
        dto.validate(&Catalog::builtin(), &Limits::default(), 1_763_831_000)
    }

    #[test]
    fn the_contract_example_is_valid() {
        check(&sample()).unwrap();
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutation = Box<dyn Fn(&mut Dto)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("id", Box::new(|d| d.id = "a/b".into())),
            ("id", Box::new(|d| d.id = "x".repeat(201))),
            ("collector", Box::new(|d| d.collector = String::new())),
            ("family", Box::new(|d| d.family = "Nope".into())),
            ("metrics[1]", Box::new(|d| d.metrics[1] = "bogus".into())),
            ("interval", Box::new(|d| d.interval = 0)),
            ("cycle", Box::new(|d| d.cycle = -5)),
            ("cycle", Box::new(|d| d.cycle = 1_763_831_000 + 7200)),
            ("cycle", Box::new(|d| d.cycle = 1_763_831_000 - 36 * 86_400)),
            ("records[0].ts", Box::new(|d| d.records[0].ts = d.cycle - 1)),
            ("records[0].ts", Box::new(|d| d.records[0].ts = d.cycle + 600)),
            ("records[0].values.out_bps", Box::new(|d| d.records[0].values[1] = Some(f64::NAN))),
            ("records[0].values", Box::new(|d| d.records[0].values = vec![None; 3])),
            ("records[0].device", Box::new(|d| d.records[0].device = "a\nb".into())),
            ("records[1].item", Box::new(|d| d.records.push(d.records[0].clone()))),
        ];
        for (field, mutate) in cases {
            let mut dto = sample();
            mutate(&mut dto);
            assert_eq!(check(&dto).unwrap_err().field, field);
        }
    }

    #[test]
    fn the_digest_is_the_content_whatever_the_column_order() {
        let dto = sample();
        let mut reordered = dto.clone();
        reordered.metrics.swap(0, 2);
        reordered.records[0].values.swap(0, 2);
        assert_eq!(dto.digest(), reordered.digest());
        let mut widened = dto.clone();
        widened.metrics.push("out_util".into());
        widened.records[0].values.push(None);
        assert_eq!(dto.digest(), widened.digest(), "an empty column is no content");
        let mut other = dto.clone();
        other.records[0].values[1] = Some(340_000.000_000_1);
        assert_ne!(dto.digest(), other.digest());
        let mut moved = dto.clone();
        moved.records[0].item = "ge-0/0/2".into();
        assert_ne!(dto.digest(), moved.digest());
    }

    #[test]
    fn too_many_records_is_refused() {
        let mut dto = sample();
        let limits = Limits { max_records: 1, ..Limits::default() };
        dto.records.push(Record { item: "ge-0/0/2".into(), ..dto.records[0].clone() });
        let err = dto.validate(&Catalog::builtin(), &limits, 1_763_831_000).unwrap_err();
        assert_eq!(err.field, "records");
    }
}
