//! What every role's configuration shares: TOML parsing whose errors name the line and key,
//! and the one-line [`ConfigError`] that stops a process with status 64.

use serde::de::DeserializeOwned;

/// A configuration problem: the file (or "command line") and the key, in one line.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {key}: {problem}")]
pub struct ConfigError {
    pub source_name: String,
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(source_name: impl Into<String>, key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError { source_name: source_name.into(), key: key.into(), problem: problem.into() }
    }
}

/// Reads and parses a TOML configuration file; an error names the file, and the line and key.
pub fn read_file<T: DeserializeOwned>(path: &std::path::Path) -> Result<T, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::new(&name, "-", format!("cannot read: {e}")))?;
    from_toml(&text).map_err(|(key, problem)| ConfigError::new(&name, key, problem))
}

/// Parses a TOML configuration; an error is `(key, problem)`, the key as `line N table.key`.
pub fn from_toml<T: DeserializeOwned>(text: &str) -> Result<T, (String, String)> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let problem = e.message().trim().replace('\n', " ");
        let key = match e.span() {
            Some(span) => key_at(text, span.start),
            None => "-".to_owned(),
        };
        (key, problem)
    })
}

/// Names the key on the line holding byte `offset` of a TOML text, with its table
/// (`retention.raw`) and the line number, for error messages.
fn key_at(text: &str, offset: usize) -> String {
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_no = text[..offset].matches('\n').count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line.split('=').next().unwrap_or("").trim();
    let table = text[..line_start]
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix('[').and_then(|l| l.strip_suffix(']')))
        // `[[device]]`, an array of tables, names its table like `[retention]` does.
        .map(|t| format!("{}.", t.trim_matches(|c| c == '[' || c == ']').trim()))
        .unwrap_or_default();
    format!("line {line_no} {table}{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        a: u32,
        #[serde(default)]
        t: Option<Table>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Table {
        b: u32,
    }

    #[test]
    fn errors_name_the_line_and_key() {
        assert_eq!(from_toml::<Sample>("a = 1\nz = 2").unwrap_err().0, "line 2 z");
        assert_eq!(from_toml::<Sample>("a = \"x\"").unwrap_err().0, "line 1 a");
        assert_eq!(from_toml::<Sample>("a = 1\n[t]\nb = -1").unwrap_err().0, "line 3 t.b");
    }
}
