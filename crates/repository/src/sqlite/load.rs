//! Loading DTOs: the data, the registry entry and the pending rollups in one transaction.

use super::alerts::{self, SqliteAlerts};
use super::{check_epoch, FamilyTables, ItemCache, SqliteRepository};
use crate::alerting::{self as alerting, Overlay};
use crate::{Epoch, LoadReport, RepoError, Result};
use pollux_model::{Dto, Resolution};
use rusqlite::{OptionalExtension, Transaction};
use std::collections::{BTreeSet, HashMap};

/// Item ids this transaction created: they join the cache only if it commits.
type NewItems = Vec<(String, String, String, i64)>;

impl SqliteRepository {
    pub(crate) fn load_batch(&self, epoch: Epoch, dtos: &[Dto], now: i64) -> Result<LoadReport> {
        let families: Vec<_> = dtos.iter().map(|d| self.family(&d.family)).collect::<Result<_>>()?;
        let mut writer = self.writer();
        let writer = &mut *writer;
        let tx = writer.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        check_epoch(&tx, epoch)?;
        let mut report = LoadReport::default();
        let mut new_items = NewItems::new();
        let mut overlay = Overlay::default();
        for (dto, family) in dtos.iter().zip(&families) {
            let known: Option<i64> =
                tx.query_row("SELECT seq FROM loaded_dtos WHERE id = ?1", [&dto.id], |r| r.get(0)).optional()?;
            if known.is_some() {
                report.already_loaded += 1;
                continue;
            }
            let inserted = insert_dto(&tx, family, dto, &writer.items, &mut new_items, now)?;
            report.values += inserted.values;
            report.replaced += inserted.replaced;
            let mut store = SqliteAlerts { tx: &tx, family };
            writer.alerting.refresh(&mut store)?;
            alerting::evaluate_dto(
                &mut store,
                &mut writer.alerting,
                &mut overlay,
                &family.columns,
                dto,
                &inserted.rows,
                epoch,
                &mut report,
            )?;
            tx.execute(
                "INSERT INTO loaded_dtos (id, epoch, family, collector, cycle, records, loaded_at, digest)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                rusqlite::params![
                    dto.id,
                    epoch as i64,
                    dto.family,
                    dto.collector,
                    dto.cycle,
                    dto.records.len() as i64,
                    now,
                    &dto.digest().0[..]
                ],
            )?;
            report.loaded += 1;
        }
        if report.replaced > 0 {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('replaced_records', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
                [report.replaced as i64],
            )?;
        }
        if report.transitions > 0 {
            alerts::bound_outbox(&tx, self.options.outbox_max)?;
        }
        if pollux_failpoint::hit("repository.load.before_commit") {
            return Err(RepoError::Injected("repository.load.before_commit"));
        }
        tx.commit()?;
        writer.alerting.commit(overlay);
        for (family, device, item, id) in new_items {
            cache_item(&mut writer.items, family, device, item, id);
        }
        Ok(report)
    }
}

fn cache_item(cache: &mut ItemCache, family: String, device: String, item: String, id: i64) {
    cache.entry(family).or_default().entry(device).or_default().insert(item, id);
}

/// What [`insert_dto`] wrote.
struct Inserted {
    values: usize,
    /// Records that replaced one already stored for the same item and cycle.
    replaced: usize,
    /// Each record's `(item_id, index)`, in item order.
    rows: Vec<(i64, usize)>,
}

/// Inserts one DTO's records.
fn insert_dto(
    tx: &Transaction<'_>,
    family: &FamilyTables,
    dto: &Dto,
    cache: &ItemCache,
    new_items: &mut NewItems,
    now: i64,
) -> Result<Inserted> {
    let columns: Vec<&str> = dto.metrics.iter().map(|m| family.column(m)).collect::<Result<_>>()?;
    let (watermark, max_interval): (i64, i64) =
        tx.query_row("SELECT watermark, max_interval FROM family_state WHERE family = ?1", [&family.name], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    // Resolve every record's item id first, then insert in item order: within a cycle the
    // recent table's key is (cycle, item_id), so sorted inserts append to the B-tree.
    let family_cache = cache.get(&family.name);
    let mut rows: Vec<(i64, usize)> = Vec::with_capacity(dto.records.len());
    let mut created: HashMap<(&str, &str), i64> = HashMap::new();
    for (index, record) in dto.records.iter().enumerate() {
        let cached = family_cache
            .and_then(|devices| devices.get(&record.device))
            .and_then(|items| items.get(&record.item))
            .copied();
        let id = match cached {
            Some(id) => id,
            None => match created.get(&(record.device.as_str(), record.item.as_str())) {
                Some(id) => *id,
                None => {
                    let id = item_id(tx, &family.name, &record.device, &record.item, now)?;
                    created.insert((&record.device, &record.item), id);
                    new_items.push((family.name.clone(), record.device.clone(), record.item.clone(), id));
                    id
                }
            },
        };
        rows.push((id, index));
    }
    rows.sort_unstable();

    let into_history = dto.cycle < watermark;
    let column_list: String = columns.iter().map(|c| format!(", \"{c}\"")).collect();
    let placeholders: String = ", ?".repeat(columns.len());
    // Both raw tables take (cycle, item_id, ts, metrics...): only the clustering differs.
    let table = if into_history { family.raw() } else { family.recent() };
    // A record for an item and cycle already stored came under another DTO id: the insert
    // is ignored, counted, and the record then replaces the stored one (the later one wins, as
    // a re-poll would), so a duplicate never passes unseen.
    let insert =
        format!("INSERT OR IGNORE INTO {table} (cycle, item_id, ts{column_list}) VALUES (?, ?, ?{placeholders})");
    let replace =
        format!("INSERT OR REPLACE INTO {table} (cycle, item_id, ts{column_list}) VALUES (?, ?, ?{placeholders})");
    let mut stmt = tx.prepare_cached(&insert)?;
    let mut replaced = 0;
    let mut values = 0;
    let mut hours = BTreeSet::new();
    for &(item_id, index) in &rows {
        let record = &dto.records[index];
        if record.values.len() != columns.len() {
            return Err(RepoError::Db(format!("DTO {}: a record's values do not match its columns", dto.id)));
        }
        stmt.raw_bind_parameter(1, dto.cycle)?;
        stmt.raw_bind_parameter(2, item_id)?;
        stmt.raw_bind_parameter(3, record.ts)?;
        for (c, value) in record.values.iter().enumerate() {
            stmt.raw_bind_parameter(4 + c, *value)?;
            values += usize::from(value.is_some());
        }
        if stmt.raw_execute()? == 0 {
            let mut again = tx.prepare_cached(&replace)?;
            let params: Vec<&dyn rusqlite::ToSql> = [&dto.cycle as &dyn rusqlite::ToSql, &item_id, &record.ts]
                .into_iter()
                .chain(record.values.iter().map(|v| v as &dyn rusqlite::ToSql))
                .collect();
            again.execute(params.as_slice())?;
            replaced += 1;
        }
        hours.insert(Resolution::Hour.period_start(record.ts));
    }
    drop(stmt);

    if !into_history {
        tx.prepare_cached("INSERT OR IGNORE INTO recent_cycles (family, cycle) VALUES (?1, ?2)")?
            .execute(rusqlite::params![family.name, dto.cycle])?;
    }
    if i64::from(dto.interval) > max_interval {
        tx.execute(
            "UPDATE family_state SET max_interval = ?2 WHERE family = ?1",
            rusqlite::params![family.name, i64::from(dto.interval)],
        )?;
    }
    let mut pending = tx.prepare_cached(
        "INSERT INTO rollup_pending (resolution, family, period, marked_at, touched_at) VALUES ('hour', ?1, ?2, ?3, ?3)
         ON CONFLICT DO UPDATE SET touched_at = excluded.touched_at",
    )?;
    for hour in hours {
        pending.execute(rusqlite::params![family.name, hour, now])?;
    }
    Ok(Inserted { values, replaced, rows })
}

fn item_id(tx: &Transaction<'_>, family: &str, device: &str, item: &str, now: i64) -> Result<i64> {
    let existing: Option<i64> = tx
        .prepare_cached("SELECT id FROM items WHERE family = ?1 AND device = ?2 AND item = ?3")?
        .query_row([family, device, item], |r| r.get(0))
        .optional()?;
    if let Some(id) = existing {
        return Ok(id);
    }
    tx.prepare_cached("INSERT INTO items (family, device, item, first_seen) VALUES (?1, ?2, ?3, ?4)")?
        .execute(rusqlite::params![family, device, item, now])?;
    Ok(tx.last_insert_rowid())
}
