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

use crate::dto::{Dto, DtoError, Record};
use serde::de::{MapAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;

#[derive(Deserialize)]
struct WireDto<'a> {
    id: String,
    collector: String,
    family: String,
    cycle: i64,
    interval: u32,
    #[serde(borrow)]
    records: Vec<WireRecord<'a>>,
}

#[derive(Deserialize)]
struct WireRecord<'a> {
    device: String,
    item: String,
    ts: i64,
    #[serde(borrow)]
    values: WireValues<'a>,
}

/// A record's values in the order they were written, without building a map per record. Metric
/// names borrow from the input where they can (no escapes), which saves an allocation per value.
struct WireValues<'a>(Vec<(Cow<'a, str>, Option<f64>)>);

impl<'de: 'a, 'a> Deserialize<'de> for WireValues<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ValuesVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for ValuesVisitor<'a> {
            type Value = WireValues<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of metric name to number")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireValues<'a>, A::Error> {
                let mut values = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(name) = map.next_key::<BorrowedName<'a>>()? {
                    values.push((name.0, map.next_value::<Option<f64>>()?));
                }
                Ok(WireValues(values))
            }
        }
        d.deserialize_map(ValuesVisitor(std::marker::PhantomData))
    }
}

/// A map key borrowed from the input when it has no escapes, owned otherwise.
struct BorrowedName<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for BorrowedName<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NameVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for NameVisitor<'a> {
            type Value = BorrowedName<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a metric name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(BorrowedName(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BorrowedName(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(BorrowedName(Cow::Owned(v)))
            }
        }
        d.deserialize_str(NameVisitor(std::marker::PhantomData))
    }
}

/// Decodes a DTO from the contract's JSON. Shape errors name the JSON path.
///
/// The fast path parses without tracking where it is; only a body that fails is parsed again
/// with the path tracked, to name the field in the error.
pub fn decode(bytes: &[u8]) -> Result<Dto, DtoError> {
    match serde_json::from_slice::<WireDto<'_>>(bytes) {
        Ok(wire) => from_wire(wire),
        Err(_) => {
            let de = &mut serde_json::Deserializer::from_slice(bytes);
            let err = match serde_path_to_error::deserialize::<_, WireDto<'_>>(de) {
                Ok(wire) => return from_wire(wire),
                Err(e) => e,
            };
            let path = err.path().to_string();
            let field = if path == "." { "body".to_owned() } else { path };
            Err(DtoError::new(field, err.into_inner().to_string()))
        }
    }
}

fn from_wire(wire: WireDto<'_>) -> Result<Dto, DtoError> {
    let mut metrics: Vec<String> = Vec::new();
    for record in &wire.records {
        for (name, _) in &record.values.0 {
            if !metrics.iter().any(|m| m == name) {
                metrics.push(name.to_string());
            }
        }
    }
    let mut records = Vec::with_capacity(wire.records.len());
    for (i, record) in wire.records.into_iter().enumerate() {
        let mut values = vec![None; metrics.len()];
        for (name, value) in record.values.0 {
            let column = metrics.iter().position(|m| *m == name).expect("collected above");
            if values[column].is_some() {
                return Err(DtoError::new(format!("records[{i}].values.{name}"), "appears twice"));
            }
            values[column] = value;
        }
        records.push(Record { device: record.device, item: record.item, ts: record.ts, values });
    }
    Ok(Dto {
        id: wire.id,
        collector: wire.collector,
        family: wire.family,
        cycle: wire.cycle,
        interval: wire.interval,
        metrics,
        records,
    })
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

    #[test]
    fn decodes_the_contract_example_into_columns() {
        let dto = decode(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(dto.metrics, ["in_bps", "out_bps", "in_util", "in_errors"]);
        assert_eq!(dto.records[0].values, [Some(1_250_000.0), Some(340_000.0), Some(12.5), None]);
        assert_eq!(dto.records[1].values, [None, Some(1.0), None, Some(0.0)]);
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
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"{}[]\":,.-+eE0123456789 nulltruefalse\\u\xff\x00";
        for _ in 0..5000 {
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
