//! Metric families: named sets of metrics polled together for one kind of item.
//!
//! The four built-in families (Interface, CPU, Memory, Availability) ship with the binary; their
//! names and metric names are part of the external contract. Operators add customized families
//! as TOML files in `<shared>/metric-families/`, one family per file:
//!
//! ```toml
//! name = "Temperature"
//! description = "Chassis temperature sensors"
//! table = "1.3.6.1.4.1.9.9.13.1.3.1"       # SNMP table walked for the items (optional)
//!
//! [[metric]]
//! name = "celsius"
//! unit = "C"
//! type = "gauge"                            # gauge, counter32 or counter64
//! oid = "1.3.6.1.4.1.9.9.13.1.3.1.3"
//! ```
//!
//! Family and metric names become SQL table and column names in the repository, so they are
//! restricted to a safe identifier alphabet here, once, for every consumer.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// At most this many metrics in one family: the binary codec keeps a 64-bit presence mask.
pub const MAX_METRICS: usize = 64;
/// Longest family or metric name.
pub const MAX_NAME_LEN: usize = 48;
/// Column names the repository uses for its own purposes, so no metric may take them.
const RESERVED_METRIC_NAMES: [&str; 5] = ["item_id", "ts", "cycle", "period", "epoch"];

/// How the raw SNMP object behind a metric behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    /// A value that is stored as read (after its expression).
    Gauge,
    /// A 32-bit counter turned into a per-second rate, with wrap handling.
    Counter32,
    /// A 64-bit counter turned into a per-second rate.
    Counter64,
}

/// One metric of a family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metric {
    pub name: String,
    #[serde(default)]
    pub unit: String,
    #[serde(rename = "type", default = "default_kind")]
    pub kind: MetricKind,
    /// The SNMP object polled for this metric (a column of `table`, or a scalar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oid: Option<String>,
    /// How the raw value becomes the stored one (e.g. `"value * 8"`); `None` stores it as read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expr: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

fn default_kind() -> MetricKind {
    MetricKind::Gauge
}

/// A named set of metrics polled together for one kind of item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricFamily {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// What identifies an item of this family within a device.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub item_key: String,
    /// The SNMP table walked to find the items, for table-based families.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// True for the families that ship with the binary.
    #[serde(default)]
    pub builtin: bool,
    #[serde(rename = "metric", alias = "metrics")]
    pub metrics: Vec<Metric>,
}

/// Why a family definition was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FamilyError {
    #[error("{0}")]
    Syntax(String),
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
}

impl MetricFamily {
    pub fn metric(&self, name: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.name == name)
    }

    /// Parses and validates a customized family from its TOML text.
    pub fn from_toml(text: &str) -> Result<MetricFamily, FamilyError> {
        let family: MetricFamily =
            toml::from_str(text).map_err(|e| FamilyError::Syntax(e.to_string().trim().replace('\n', " ")))?;
        if family.builtin {
            return Err(invalid("builtin", "only the families that ship with Pollux are built in"));
        }
        family.validate()?;
        Ok(family)
    }

    /// Checks names, sizes and OIDs. Built-in families pass it too (a unit test says so).
    pub fn validate(&self) -> Result<(), FamilyError> {
        if !is_identifier(&self.name, true) {
            return Err(invalid(
                "name",
                format!(
                    "{:?} must start with a letter and hold only letters, digits and '_' (at most {MAX_NAME_LEN})",
                    self.name
                ),
            ));
        }
        if self.metrics.is_empty() {
            return Err(invalid("metric", "a family needs at least one [[metric]]"));
        }
        if self.metrics.len() > MAX_METRICS {
            return Err(invalid("metric", format!("at most {MAX_METRICS} metrics per family")));
        }
        if let Some(table) = &self.table {
            check_oid("table", table)?;
        }
        for (i, metric) in self.metrics.iter().enumerate() {
            let field = |key: &str| format!("metric[{i}].{key}");
            if !is_identifier(&metric.name, false) {
                return Err(invalid(
                    &field("name"),
                    format!(
                        "{:?} must start with a lower-case letter and hold only a-z, 0-9 and '_' (at most {MAX_NAME_LEN})",
                        metric.name
                    ),
                ));
            }
            if RESERVED_METRIC_NAMES.contains(&metric.name.as_str()) {
                return Err(invalid(&field("name"), format!("{:?} is reserved", metric.name)));
            }
            if self.metrics[..i].iter().any(|m| m.name == metric.name) {
                return Err(invalid(&field("name"), format!("{:?} appears twice", metric.name)));
            }
            if let Some(oid) = &metric.oid {
                check_oid(&field("oid"), oid)?;
            }
            if let Some(expr) = &metric.expr {
                crate::expr::Expr::parse(expr).map_err(|e| invalid(&field("expr"), e.to_string()))?;
            }
        }
        Ok(())
    }
}

fn invalid(field: &str, problem: impl Into<String>) -> FamilyError {
    FamilyError::Invalid { field: field.to_owned(), problem: problem.into() }
}

fn is_identifier(name: &str, allow_upper: bool) -> bool {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || (allow_upper && c.is_ascii_uppercase()));
    first_ok
        && name.len() <= MAX_NAME_LEN
        && chars.all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || (allow_upper && c.is_ascii_uppercase())
        })
}

fn check_oid(field: &str, oid: &str) -> Result<(), FamilyError> {
    let oid = oid.strip_prefix('.').unwrap_or(oid);
    let parts: Vec<&str> = oid.split('.').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty() || p.parse::<u32>().is_err()) {
        return Err(invalid(field, format!("{oid:?} is not a numeric OID such as 1.3.6.1.2.1.1.3.0")));
    }
    Ok(())
}

fn metric(name: &str, unit: &str, kind: MetricKind, oid: Option<&str>, description: &str) -> Metric {
    Metric {
        name: name.to_owned(),
        unit: unit.to_owned(),
        kind,
        oid: oid.map(str::to_owned),
        expr: None,
        description: description.to_owned(),
    }
}

/// The families that ship with Pollux. Their names and metric names are part of the contract.
pub fn builtin_families() -> Vec<MetricFamily> {
    use MetricKind::*;
    let family = |name: &str, description: &str, item_key: &str, table: Option<&str>, metrics| MetricFamily {
        name: name.to_owned(),
        description: description.to_owned(),
        item_key: item_key.to_owned(),
        table: table.map(str::to_owned),
        builtin: true,
        metrics,
    };
    vec![
        family(
            "Interface",
            "Network interfaces (IF-MIB ifTable and ifXTable)",
            "ifName (ifDescr where ifName is absent)",
            Some("1.3.6.1.2.1.31.1.1"),
            vec![
                metric("in_bps", "bit/s", Counter64, Some("1.3.6.1.2.1.31.1.1.1.6"), "ifHCInOctets x 8 per second"),
                metric("out_bps", "bit/s", Counter64, Some("1.3.6.1.2.1.31.1.1.1.10"), "ifHCOutOctets x 8 per second"),
                metric("in_pps", "packet/s", Counter64, Some("1.3.6.1.2.1.31.1.1.1.7"), "ifHCInUcastPkts per second"),
                metric(
                    "out_pps",
                    "packet/s",
                    Counter64,
                    Some("1.3.6.1.2.1.31.1.1.1.11"),
                    "ifHCOutUcastPkts per second",
                ),
                metric("in_errors", "error/s", Counter32, Some("1.3.6.1.2.1.2.2.1.14"), "ifInErrors per second"),
                metric("out_errors", "error/s", Counter32, Some("1.3.6.1.2.1.2.2.1.20"), "ifOutErrors per second"),
                metric("in_discards", "packet/s", Counter32, Some("1.3.6.1.2.1.2.2.1.13"), "ifInDiscards per second"),
                metric("out_discards", "packet/s", Counter32, Some("1.3.6.1.2.1.2.2.1.19"), "ifOutDiscards per second"),
                metric("in_util", "%", Gauge, None, "in_bps as a percentage of ifHighSpeed"),
                metric("out_util", "%", Gauge, None, "out_bps as a percentage of ifHighSpeed"),
            ],
        ),
        family(
            "CPU",
            "Processors (HOST-RESOURCES-MIB hrProcessorTable)",
            "hrDeviceIndex of the processor",
            Some("1.3.6.1.2.1.25.3.3"),
            vec![metric("util", "%", Gauge, Some("1.3.6.1.2.1.25.3.3.1.2"), "hrProcessorLoad")],
        ),
        family(
            "Memory",
            "Physical memory (HOST-RESOURCES-MIB hrStorageTable, hrStorageRam)",
            "hrStorageIndex of the RAM entry",
            Some("1.3.6.1.2.1.25.2.3"),
            vec![
                metric("used_pct", "%", Gauge, None, "used_bytes as a percentage of total_bytes"),
                metric(
                    "used_bytes",
                    "byte",
                    Gauge,
                    Some("1.3.6.1.2.1.25.2.3.1.6"),
                    "hrStorageUsed x hrStorageAllocationUnits",
                ),
                metric(
                    "total_bytes",
                    "byte",
                    Gauge,
                    Some("1.3.6.1.2.1.25.2.3.1.5"),
                    "hrStorageSize x hrStorageAllocationUnits",
                ),
            ],
        ),
        family(
            "Availability",
            "Whether the device answers SNMP, and how fast",
            "the device itself",
            None,
            vec![
                metric("reachable", "", Gauge, Some("1.3.6.1.2.1.1.3.0"), "1 when sysUpTime answered, else 0"),
                metric("response_ms", "ms", Gauge, None, "time to answer the sysUpTime request"),
            ],
        ),
    ]
}

/// The families a node knows: the built-ins and the customized ones, by name.
#[derive(Clone, Debug)]
pub struct Catalog {
    families: BTreeMap<String, Arc<MetricFamily>>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Catalog {
    /// The built-in families alone.
    pub fn builtin() -> Catalog {
        let families = builtin_families().into_iter().map(|f| (f.name.clone(), Arc::new(f))).collect();
        Catalog { families }
    }

    /// Adds a customized family. It may not take a name the catalog already has, nor one that
    /// differs from another family's only by letter case (`interface` beside `Interface`): two
    /// such names would read as one family to every operator.
    pub fn add_custom(&mut self, family: MetricFamily) -> Result<(), FamilyError> {
        family.validate()?;
        if let Some(other) = self.families.values().find(|f| f.name.eq_ignore_ascii_case(&family.name)) {
            let what = if other.builtin { "the built-in family" } else { "the customized family" };
            let problem = if other.name == family.name {
                format!("{:?} is already {what} of that name", family.name)
            } else {
                format!("{:?} differs from {what} {:?} only by letter case", family.name, other.name)
            };
            return Err(invalid("name", problem));
        }
        self.families.insert(family.name.clone(), Arc::new(family));
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Arc<MetricFamily>> {
        self.families.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<MetricFamily>> {
        self.families.values()
    }

    pub fn len(&self) -> usize {
        self.families.len()
    }

    pub fn is_empty(&self) -> bool {
        self.families.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_families_are_valid_and_match_the_contract() {
        let catalog = Catalog::builtin();
        for family in catalog.iter() {
            family.validate().unwrap();
        }
        let names: Vec<&str> = catalog.get("Interface").unwrap().metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "in_bps",
                "out_bps",
                "in_pps",
                "out_pps",
                "in_errors",
                "out_errors",
                "in_discards",
                "out_discards",
                "in_util",
                "out_util"
            ]
        );
        assert!(catalog.get("CPU").unwrap().metric("util").is_some());
        assert!(catalog.get("Memory").unwrap().metric("used_pct").is_some());
        assert!(catalog.get("Availability").unwrap().metric("response_ms").is_some());
    }

    #[test]
    fn custom_family_from_toml() {
        let family = MetricFamily::from_toml(
            r#"
            name = "Temperature"
            table = "1.3.6.1.4.1.9.9.13.1.3.1"
            [[metric]]
            name = "celsius"
            unit = "C"
            oid = "1.3.6.1.4.1.9.9.13.1.3.1.3"
            "#,
        )
        .unwrap();
        assert_eq!(family.metrics[0].kind, MetricKind::Gauge);
        let mut catalog = Catalog::builtin();
        catalog.add_custom(family).unwrap();
        assert!(catalog.get("Temperature").is_some());
    }

    #[test]
    fn bad_custom_families_name_the_field() {
        let cases = [
            ("name = \"x y\"\n[[metric]]\nname = \"a\"", "name"),
            ("name = \"T\"\n[[metric]]\nname = \"Bad\"", "metric[0].name"),
            ("name = \"T\"\n[[metric]]\nname = \"ts\"", "metric[0].name"),
            ("name = \"T\"\n[[metric]]\nname = \"a\"\n[[metric]]\nname = \"a\"", "metric[1].name"),
            ("name = \"T\"\n[[metric]]\nname = \"a\"\noid = \"1.x.3\"", "metric[0].oid"),
            ("name = \"T\"\nmetric = []", "metric"),
            ("name = \"T\"\n[[metric]]\nname = \"a\"\nexpr = \"value *\"", "metric[0].expr"),
        ];
        for (text, field) in cases {
            match MetricFamily::from_toml(text) {
                Err(FamilyError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            MetricFamily::from_toml("name = \"T\"\nsurprise = 1\n[[metric]]\nname = \"a\""),
            Err(FamilyError::Syntax(_))
        ));
        let mut catalog = Catalog::builtin();
        for name in ["CPU", "cpu", "INTERFACE", "availability"] {
            let shadow = MetricFamily::from_toml(&format!("name = \"{name}\"\n[[metric]]\nname = \"a\"")).unwrap();
            let err = catalog.add_custom(shadow).unwrap_err().to_string();
            assert!(err.starts_with("name: ") && err.contains("built-in"), "{err}");
        }
        let temp =
            |name: &str| MetricFamily::from_toml(&format!("name = \"{name}\"\n[[metric]]\nname = \"a\"")).unwrap();
        catalog.add_custom(temp("Temp")).unwrap();
        assert!(catalog.add_custom(temp("Temp")).unwrap_err().to_string().contains("already"));
        assert!(catalog.add_custom(temp("TEMP")).unwrap_err().to_string().contains("letter case"));
    }
}
