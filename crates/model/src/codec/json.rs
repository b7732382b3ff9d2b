//! The JSON form of a DTO, as the external contract writes it:
//!
//! ```json
//! {"id": "dc1.Interface.1763830800.0", "collector": "dc1", "family": "Interface",
//!  "cycle": 1763830800, "interval": 300,
//!  "records": [{"device": "core-rtr-1", "item": "ge-0/0/1", "ts": 1763830812,
//!               "values": {"in_bps": 1250000.0, "out_bps": 340000.0}}]}
//! ```
//!
//! Decoding names the path of the first bad field (`records[3].values.in_bps: invalid type ...`)
//! so a 400 answer tells the sender exactly what to fix. A `null` value means "no value". Unknown
//! fields are ignored, so a newer collector can talk to an older aggregator.

use crate::dto::{Dto, DtoError, Limits, Record};
use crate::family::{Catalog, MetricFamily};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use std::fmt;

/// The DTO's head; `records` is kept as raw text until the family is known, whatever order the
/// sender wrote the keys in.
#[derive(Deserialize)]
struct WireHead<'a> {
    id: String,
    collector: String,
    family: String,
    cycle: i64,
    interval: u32,
    #[serde(borrow)]
    records: &'a RawValue,
}

/// Decodes a DTO from the contract's JSON against the families in `catalog`.
///
/// Cost is linear in the body, and memory a small multiple of it: the head is read first (the
/// records only checked for syntax), then each record's values go straight into the columns of
/// the family, so the first name that is not a metric of the family, the first repeated name
/// and the first record past `limits.max_records` stop decoding at once. Errors name the path
/// of the field at fault (`records[3].values.in_bps: ...`) so a 400 tells the sender what to
/// fix; the fast path does not track the path, a failing body is parsed again with tracking.
///
/// Numbers are parsed exactly: the stored double is the one nearest the decimal sent (serde_json
/// with `float_roundtrip`).
pub fn decode(bytes: &[u8], catalog: &Catalog, limits: &Limits) -> Result<Dto, DtoError> {
    let head: WireHead<'_> = match serde_json::from_slice(bytes) {
        Ok(head) => head,
        Err(_) => {
            let de = &mut serde_json::Deserializer::from_slice(bytes);
            return Err(match serde_path_to_error::deserialize::<_, WireHead<'_>>(de) {
                Ok(_) => DtoError::new("body", "not a DTO"),
                Err(e) => path_error("", e),
            });
        }
    };
    let family = catalog.get(&head.family).ok_or_else(|| crate::dto::unknown_family(catalog, &head.family))?;
    let seed = RecordsSeed { family, max_records: limits.max_records };
    let text = head.records.get();
    let records = match seed.deserialize(&mut serde_json::Deserializer::from_str(text)) {
        Ok(records) => records,
        Err(_) => {
            let seed = RecordsSeed { family, max_records: limits.max_records };
            let mut track = serde_path_to_error::Track::new();
            let de = &mut serde_json::Deserializer::from_str(text);
            return Err(match seed.deserialize(serde_path_to_error::Deserializer::new(de, &mut track)) {
                Ok(_) => DtoError::new("records", "not valid"),
                Err(e) => path_error("records", serde_path_to_error::Error::new(track.path(), e)),
            });
        }
    };
    let (metrics, records) = used_columns(family, records);
    Ok(Dto {
        id: head.id,
        collector: head.collector,
        family: head.family,
        cycle: head.cycle,
        interval: head.interval,
        metrics,
        records,
    })
}

fn path_error(prefix: &str, err: serde_path_to_error::Error<serde_json::Error>) -> DtoError {
    let path = err.path().to_string();
    let field = match (prefix, path.as_str()) {
        ("", ".") => "body".to_owned(),
        (p, ".") => p.to_owned(),
        (p, path) => format!("{p}{path}"),
    };
    DtoError::new(field, err.into_inner().to_string())
}

/// Keeps only the family's columns that some record has a value for, in the family's order.
fn used_columns(family: &MetricFamily, mut records: Vec<Record>) -> (Vec<String>, Vec<Record>) {
    let mut used = vec![false; family.metrics.len()];
    for record in &records {
        for (u, v) in used.iter_mut().zip(&record.values) {
            *u |= v.is_some();
        }
    }
    let metrics = family.metrics.iter().zip(&used).filter(|(_, u)| **u).map(|(m, _)| m.name.clone()).collect();
    if used.iter().any(|u| !u) {
        for record in &mut records {
            let mut column = 0;
            record.values.retain(|_| {
                column += 1;
                used[column - 1]
            });
            record.values.shrink_to_fit();
        }
    }
    (metrics, records)
}

/// The `records` array, decoded against a family.
struct RecordsSeed<'f> {
    family: &'f MetricFamily,
    max_records: usize,
}

impl<'de> DeserializeSeed<'de> for RecordsSeed<'_> {
    type Value = Vec<Record>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Record>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RecordsSeed<'_> {
    type Value = Vec<Record>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of records")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Record>, A::Error> {
        let mut records = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max_records).min(4096));
        while let Some(record) = seq.next_element_seed(RecordSeed(self.family))? {
            if records.len() == self.max_records {
                return Err(serde::de::Error::custom(format!(
                    "more than the limit of {} records: split the cycle into parts",
                    self.max_records
                )));
            }
            records.push(record);
        }
        Ok(records)
    }
}

/// One record; unknown keys are ignored (a newer collector may send more).
struct RecordSeed<'f>(&'f MetricFamily);

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = Record;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Record, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = Record;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a record {device, item, ts, values}")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Record, A::Error> {
        use serde::de::Error;
        let (mut device, mut item, mut ts, mut values) = (None, None, None, None);
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let twice = match key.0 {
                Name::Borrowed("device") => device.replace(map.next_value::<String>()?).is_some(),
                Name::Borrowed("item") => item.replace(map.next_value::<String>()?).is_some(),
                Name::Borrowed("ts") => ts.replace(map.next_value::<i64>()?).is_some(),
                Name::Borrowed("values") => values.replace(map.next_value_seed(ValuesSeed(self.0))?).is_some(),
                Name::Borrowed(_) | Name::Escaped => {
                    map.next_value::<IgnoredAny>()?;
                    false
                }
            };
            if twice {
                return Err(A::Error::custom(format!("{:?} appears twice in this record", key_name(key.0))));
            }
        }
        Ok(Record {
            device: device.ok_or_else(|| A::Error::missing_field("device"))?,
            item: item.ok_or_else(|| A::Error::missing_field("item"))?,
            ts: ts.ok_or_else(|| A::Error::missing_field("ts"))?,
            values: values.ok_or_else(|| A::Error::missing_field("values"))?,
        })
    }
}

fn key_name(name: Name<'_>) -> &str {
    match name {
        Name::Borrowed(name) => name,
        Name::Escaped => "a key with escapes",
    }
}

/// A record's values, one slot per metric of the family, in the family's order.
struct ValuesSeed<'f>(&'f MetricFamily);

impl<'de> DeserializeSeed<'de> for ValuesSeed<'_> {
    type Value = Vec<Option<f64>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ValuesSeed<'_> {
    type Value = Vec<Option<f64>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of metric name to number")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let family = self.0;
        let mut values = vec![None; family.metrics.len()];
        let mut seen = 0u64;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let column = match key.0 {
                Name::Borrowed(name) => family.metrics.iter().position(|m| m.name == name),
                // Metric names are [a-z0-9_]: a name written with escapes is none of them.
                Name::Escaped => None,
            };
            let Some(column) = column else {
                let name = match key.0 {
                    Name::Borrowed(name) => format!("{name:?}"),
                    Name::Escaped => "a name with escapes".to_owned(),
                };
                return map.next_value_seed(Refuse(format!("family {} has no metric {name}", family.name)));
            };
            if seen & (1 << column) != 0 {
                return map.next_value_seed(Refuse("appears twice".to_owned()));
            }
            seen |= 1 << column;
            values[column] = map.next_value::<Option<f64>>()?;
        }
        Ok(values)
    }
}

/// Refuses the value under the key just read, so the error's path names that key.
struct Refuse(String);

impl<'de> DeserializeSeed<'de> for Refuse {
    type Value = Vec<Option<f64>>;
    fn deserialize<D: Deserializer<'de>>(self, _: D) -> Result<Self::Value, D::Error> {
        Err(serde::de::Error::custom(self.0))
    }
}

/// A map key: borrowed from the input when it has no escapes (every valid name), else only
/// known to be escaped, so no key of any length costs an allocation.
struct Key<'a>(Name<'a>);

#[derive(Clone, Copy)]
enum Name<'a> {
    Borrowed(&'a str),
    Escaped,
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Name::Borrowed(v)))
            }
            fn visit_str<E>(self, _: &str) -> Result<Key<'de>, E> {
                Ok(Key(Name::Escaped))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Encodes a DTO as the contract's JSON.
pub fn encode(dto: &Dto) -> Vec<u8> {
    serde_json::to_vec(&JsonDto(dto)).expect("a DTO always serializes")
}

struct JsonDto<'a>(&'a Dto);
struct JsonRecords<'a>(&'a Dto);
struct JsonRecord<'a>(&'a Dto, &'a Record);
struct JsonValues<'a>(&'a [String], &'a [Option<f64>]);

impl Serialize for JsonDto<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let dto = self.0;
        let mut map = s.serialize_map(Some(6))?;
        map.serialize_entry("id", &dto.id)?;
        map.serialize_entry("collector", &dto.collector)?;
        map.serialize_entry("family", &dto.family)?;
        map.serialize_entry("cycle", &dto.cycle)?;
        map.serialize_entry("interval", &dto.interval)?;
        map.serialize_entry("records", &JsonRecords(dto))?;
        map.end()
    }
}

impl Serialize for JsonRecords<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.records.len()))?;
        for record in &self.0.records {
            seq.serialize_element(&JsonRecord(self.0, record))?;
        }
        seq.end()
    }
}

impl Serialize for JsonRecord<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let record = self.1;
        let mut map = s.serialize_map(Some(4))?;
        map.serialize_entry("device", &record.device)?;
        map.serialize_entry("item", &record.item)?;
        map.serialize_entry("ts", &record.ts)?;
        map.serialize_entry("values", &JsonValues(&self.0.metrics, &record.values))?;
        map.end()
    }
}

impl Serialize for JsonValues<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (name, value) in self.0.iter().zip(self.1) {
            if let Some(v) = value {
                map.serialize_entry(name, v)?;
            }
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
      "id": "dc1.Interface.1763830800.0", "collector": "dc1", "family": "Interface",
      "cycle": 1763830800, "interval": 300,
      "records": [
        {"device": "core-rtr-1", "item": "ge-0/0/1", "ts": 1763830812,
         "values": {"in_bps": 1250000.0, "out_bps": 340000.0, "in_util": 12.5}},
        {"device": "core-rtr-1", "item": "ge-0/0/2", "ts": 1763830813,
         "values": {"out_bps": 1.0, "in_errors": 0, "in_util": null}}
      ]
    }"#;

    /// A small deterministic generator of random-looking numbers for the tests.
    fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }

    fn decode(bytes: &[u8]) -> Result<Dto, DtoError> {
        super::decode(bytes, &Catalog::builtin(), &Limits::default())
    }

    #[test]
    fn decodes_the_contract_example_into_the_family_columns() {
        let dto = decode(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(dto.metrics, ["in_bps", "out_bps", "in_errors", "in_util"]);
        assert_eq!(dto.records[0].values, [Some(1_250_000.0), Some(340_000.0), None, Some(12.5)]);
        assert_eq!(dto.records[1].values, [None, Some(1.0), Some(0.0), None]);
        // Key order does not matter: the family may come after the records.
        let late = r#"{"records": [{"values": {"util": 5}, "ts": 1763830812, "item": "1", "device": "r"}],
                       "interval": 300, "cycle": 1763830800, "family": "CPU", "collector": "dc1", "id": "x"}"#;
        let dto = decode(late.as_bytes()).unwrap();
        assert_eq!((dto.metrics, dto.records[0].values.clone()), (vec!["util".to_owned()], vec![Some(5.0)]));
    }

    /// Every double, written as its shortest decimal or with 17 significant digits, decodes to
    /// exactly the same bits (finding 9 of the hardening issue: 7.9 % of such values were one
    /// unit in the last place off).
    #[test]
    fn numbers_are_decoded_exactly() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        let mut checked = 0;
        while checked < 20_000 {
            let v = f64::from_bits(next());
            if !v.is_finite() {
                continue;
            }
            // Counter-derived rates: 16-17 significant digits, magnitudes from 1e-3 to 1e12.
            let rate = (next() % 1_000_000_000_000_000) as f64 / 10f64.powi((next() % 18) as i32);
            for v in [v, rate] {
                for text in [format!("{v:?}"), format!("{v:.16e}"), format!("{v:e}")] {
                    let body = EXAMPLE.replace("1250000.0", &text);
                    let dto = decode(body.as_bytes()).unwrap();
                    let expected: f64 = text.parse().unwrap();
                    let got = dto.records[0].values[0].unwrap();
                    assert_eq!(got.to_bits(), expected.to_bits(), "{text} decoded as {got:?}");
                    // ...and the JSON written back carries the same double.
                    let again = decode(&encode(&dto)).unwrap();
                    assert_eq!(again.records[0].values[0].unwrap().to_bits(), expected.to_bits());
                }
            }
            checked += 1;
        }
    }

    /// A body whose records each name another metric, or one record with thousands of keys,
    /// costs no more than its size: decoding stops at the first name the family does not have.
    #[test]
    fn unknown_names_and_too_many_records_stop_decoding_at_once() {
        let mut body = String::from(r#"{"id":"x","collector":"c","family":"CPU","cycle":0,"interval":300,"records":["#);
        for i in 0..50_000 {
            body.push_str(&format!(r#"{{"device":"d","item":"{i}","ts":0,"values":{{"m{i}":1}}}},"#));
        }
        body.push_str("{}]}");
        let started = std::time::Instant::now();
        let err = decode(body.as_bytes()).unwrap_err();
        assert_eq!(err.field, "records[0].values.m0", "{err}");
        assert!(err.problem.contains("has no metric"), "{err}");
        let keys: String = (0..60_000).map(|i| format!(r#""k{i}":1,"#)).collect();
        let wide = EXAMPLE.replace(r#""in_bps": 1250000.0,"#, &keys);
        assert_eq!(decode(wide.as_bytes()).unwrap_err().field, "records[0].values.k0");
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "took {:?}", started.elapsed());

        let limits = Limits { max_records: 1, ..Limits::default() };
        let err = super::decode(EXAMPLE.as_bytes(), &Catalog::builtin(), &limits).unwrap_err();
        assert_eq!(err.field, "records", "{err}");
        assert!(err.problem.contains("limit of 1 records"), "{err}");
    }

    #[test]
    fn round_trips() {
        let dto = decode(EXAMPLE.as_bytes()).unwrap();
        let again = decode(&encode(&dto)).unwrap();
        // Columns holding only nulls vanish on the way out; the values are the same.
        assert_eq!(again.records[0].values[..3], dto.records[0].values[..3]);
        assert_eq!(again.records[1].ts, dto.records[1].ts);
    }

    #[test]
    fn errors_name_the_path() {
        let bad = EXAMPLE.replace("340000.0", "\"fast\"");
        assert_eq!(decode(bad.as_bytes()).unwrap_err().field, "records[0].values.out_bps");
        let bad = EXAMPLE.replace("\"ts\": 1763830813", "\"ts\": \"noon\"");
        assert_eq!(decode(bad.as_bytes()).unwrap_err().field, "records[1].ts");
        let bad = EXAMPLE.replace("\"interval\": 300,", "");
        assert!(decode(bad.as_bytes()).unwrap_err().problem.contains("interval"));
        let bad = EXAMPLE.replace("\"family\": \"Interface\"", "\"family\": \"Nope\"");
        assert_eq!(decode(bad.as_bytes()).unwrap_err().field, "family");
        let bad = EXAMPLE.replace("\"out_bps\": 1.0", "\"bogus\": 1.0");
        assert_eq!(decode(bad.as_bytes()).unwrap_err().field, "records[1].values.bogus");
        assert!(decode(b"{\"id\": ").is_err());
        assert!(decode(b"[]").is_err());
        let huge = EXAMPLE.replace("12.5", "1e999");
        assert_eq!(decode(huge.as_bytes()).unwrap_err().field, "records[0].values.in_util");
        let twice = EXAMPLE.replace("\"in_util\": 12.5", "\"in_util\": 12.5, \"in_util\": 1");
        assert_eq!(decode(twice.as_bytes()).unwrap_err().field, "records[0].values.in_util");
    }

    /// Fuzz-like: thousands of random mutations of a valid body never panic the decoder or the
    /// validator; each is either a DTO or an error naming a field.
    #[test]
    fn random_mutations_never_panic() {
        let catalog = crate::Catalog::builtin();
        let limits = crate::Limits::default();
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        let alphabet = b"{}[]\":,.-+eE0123456789 nulltruefalse\\u\xff\x00";
        for _ in 0..20_000 {
            let mut bytes = EXAMPLE.as_bytes().to_vec();
            for _ in 0..1 + next() % 4 {
                let pos = (next() as usize) % bytes.len();
                match next() % 3 {
                    0 => bytes[pos] = alphabet[(next() as usize) % alphabet.len()],
                    1 => bytes.insert(pos, alphabet[(next() as usize) % alphabet.len()]),
                    _ => bytes.truncate(pos.max(1)),
                }
            }
            match decode(&bytes) {
                Ok(dto) => {
                    let _ = dto.validate(&catalog, &limits, 1_763_831_000);
                }
                Err(e) => assert!(!e.field.is_empty() && !e.problem.is_empty()),
            }
        }
    }
}
