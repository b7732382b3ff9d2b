//! Walking several columns of one table together with GETBULK, the way `snmptable` does.
//!
//! One request carries the cursor of every column still being walked, so a device with ten
//! interfaces answers a dozen Interface columns in one or two round trips instead of one walk
//! per column. [`TableWalk`] is the pure part: it says what to ask next and files each answer
//! under its column and row index; [`crate::poll`] does the asking.
//!
//! A response is read repetition by repetition: binding `k` belongs to the `k mod n`-th column
//! asked for. A column ends when its next object leaves the column (or is endOfMibView). An
//! agent that does not advance (answers an object not after the one asked for) ends the walk
//! with an error, as does a walk past [`MAX_ROWS`], rather than looping forever.

use crate::snmp::{Binding, SnmpValue};
use std::collections::BTreeMap;

/// Most rows accepted from one table of one device.
pub const MAX_ROWS: usize = 100_000;

/// A row index (the arcs after the column's OID) and one value per column.
pub type Rows = BTreeMap<Vec<u32>, Vec<Option<SnmpValue>>>;

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum WalkError {
    #[error("the agent answered {0} for a column it had already passed")]
    NotIncreasing(String),
    #[error("the response holds no binding")]
    Empty,
    #[error("more than {MAX_ROWS} rows")]
    TooManyRows,
}

pub struct TableWalk {
    columns: Vec<Vec<u32>>,
    /// Per column, where the walk stands, or `None` once it has ended.
    cursors: Vec<Option<Vec<u32>>>,
    rows: Rows,
}

impl TableWalk {
    pub fn new(columns: Vec<Vec<u32>>) -> TableWalk {
        let cursors = columns.iter().cloned().map(Some).collect();
        TableWalk { columns, cursors, rows: Rows::new() }
    }

    /// The objects to ask for next (GETBULK repeaters), or `None` when every column ended.
    pub fn next_request(&self) -> Option<Vec<Vec<u32>>> {
        let request: Vec<Vec<u32>> = self.cursors.iter().flatten().cloned().collect();
        (!request.is_empty()).then_some(request)
    }

    /// Files a GETBULK response to [`TableWalk::next_request`].
    pub fn feed(&mut self, bindings: &[Binding]) -> Result<(), WalkError> {
        let active: Vec<usize> = (0..self.columns.len()).filter(|&c| self.cursors[c].is_some()).collect();
        if bindings.is_empty() {
            return Err(WalkError::Empty);
        }
        for (k, binding) in bindings.iter().enumerate() {
            let column = active[k % active.len()];
            let Some(cursor) = &self.cursors[column] else { continue };
            let prefix = &self.columns[column];
            if binding.value == SnmpValue::Missing
                || !binding.oid.starts_with(prefix)
                || binding.oid.len() == prefix.len()
            {
                self.cursors[column] = None;
                continue;
            }
            if binding.oid <= *cursor {
                return Err(WalkError::NotIncreasing(dotted(&binding.oid)));
            }
            let index = binding.oid[prefix.len()..].to_vec();
            if !self.rows.contains_key(&index) && self.rows.len() >= MAX_ROWS {
                return Err(WalkError::TooManyRows);
            }
            let width = self.columns.len();
            self.rows.entry(index).or_insert_with(|| vec![None; width])[column] = Some(binding.value.clone());
            self.cursors[column] = Some(binding.oid.clone());
        }
        Ok(())
    }

    pub fn into_rows(self) -> Rows {
        self.rows
    }
}

/// An OID in dotted form.
pub fn dotted(oid: &[u32]) -> String {
    oid.iter().map(u32::to_string).collect::<Vec<_>>().join(".")
}

/// Parses a dotted OID (a leading dot allowed).
pub fn parse_oid(text: &str) -> Option<Vec<u32>> {
    let text = text.strip_prefix('.').unwrap_or(text);
    text.split('.').map(|arc| arc.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(oid: &[u32], value: SnmpValue) -> Binding {
        Binding { oid: oid.to_vec(), value }
    }

    #[test]
    fn walks_columns_together_until_each_leaves_its_column() {
        let mut walk = TableWalk::new(vec![vec![1, 1], vec![1, 2]]);
        assert_eq!(walk.next_request().unwrap(), vec![vec![1, 1], vec![1, 2]]);
        walk.feed(&[
            b(&[1, 1, 1], SnmpValue::Integer(10)),
            b(&[1, 2, 1], SnmpValue::Integer(20)),
            b(&[1, 1, 2], SnmpValue::Integer(11)),
            b(&[1, 2, 2], SnmpValue::Integer(21)),
        ])
        .unwrap();
        assert_eq!(walk.next_request().unwrap(), vec![vec![1, 1, 2], vec![1, 2, 2]]);
        // Column 1 ends (its next object is in column 2); column 2 has one more row.
        walk.feed(&[b(&[1, 2, 1], SnmpValue::Integer(20)), b(&[1, 2, 3], SnmpValue::Integer(22))]).unwrap();
        assert_eq!(walk.next_request().unwrap(), vec![vec![1, 2, 3]]);
        walk.feed(&[b(&[1, 3, 1], SnmpValue::Integer(0))]).unwrap();
        assert_eq!(walk.next_request(), None);
        let rows = walk.into_rows();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[&vec![3]], vec![None, Some(SnmpValue::Integer(22))]);
    }

    #[test]
    fn end_of_mib_and_loops() {
        let mut walk = TableWalk::new(vec![vec![1, 1]]);
        walk.feed(&[b(&[1, 1, 5], SnmpValue::Integer(1)), b(&[1, 1, 5], SnmpValue::Missing)]).unwrap();
        assert_eq!(walk.next_request(), None);
        let mut walk = TableWalk::new(vec![vec![1, 1]]);
        walk.feed(&[b(&[1, 1, 5], SnmpValue::Integer(1))]).unwrap();
        assert!(matches!(walk.feed(&[b(&[1, 1, 4], SnmpValue::Integer(1))]), Err(WalkError::NotIncreasing(_))));
        assert_eq!(walk.feed(&[]), Err(WalkError::Empty));
    }

    #[test]
    fn oids_parse_and_print() {
        assert_eq!(parse_oid(".1.3.6"), Some(vec![1, 3, 6]));
        assert_eq!(parse_oid("1.x"), None);
        assert_eq!(dotted(&[1, 3, 6]), "1.3.6");
    }
}
