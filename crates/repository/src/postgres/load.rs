//! Loading DTOs: the data, the registry entry, the pending rollups and the threshold
//! evaluation in one transaction.

use super::alerts::{self, PgAlerts};
use super::{FamilyTables, ItemCache, PostgresRepository, WriterState, DAY, LOAD_STATEMENT_TIMEOUT};
use crate::alerting::{self, Overlay};
use crate::{Epoch, LoadReport, RepoError, Result};
use pollux_model::{Dto, Resolution};
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use postgres::Transaction;
use std::collections::{BTreeSet, HashMap, HashSet};

/// What a transaction created: it joins the writer's caches only if it commits.
#[derive(Default)]
struct Created {
    items: ItemCache,
    partitions: Vec<(i64, i64)>,
}

/// DTOs per load transaction at most. Each DTO's COPY runs under a savepoint, which takes a
/// subtransaction id; past 64 in one transaction PostgreSQL overflows its cache of them and every
/// snapshot on the server has to look them up on disk. A larger batch commits in parts, each
/// part whole (a DTO is never split).
const MAX_DTOS_PER_TRANSACTION: usize = 32;

impl PostgresRepository {
    pub(crate) fn load_batch(&self, epoch: Epoch, dtos: &[Dto], now: i64) -> Result<LoadReport> {
        let mut total = LoadReport::default();
        for part in dtos.chunks(MAX_DTOS_PER_TRANSACTION) {
            let report = self.load_part(epoch, part, now)?;
            total.loaded += report.loaded;
            total.transitions += report.transitions;
            total.late += report.late;
            total.already_loaded += report.already_loaded;
            total.values += report.values;
            total.replaced += report.replaced;
        }
        Ok(total)
    }

    fn load_part(&self, epoch: Epoch, dtos: &[Dto], now: i64) -> Result<LoadReport> {
        let families: Vec<_> = dtos.iter().map(|d| self.family(&d.family)).collect::<Result<_>>()?;
        let outbox_max = self.options.outbox_max;
        self.write_then(
            epoch,
            |tx, state| {
                let mut created = Created::default();
                let mut overlay = Overlay::default();
                tx.batch_execute(&format!("SET LOCAL statement_timeout = {}", LOAD_STATEMENT_TIMEOUT.as_millis()))?;
                let ids: Vec<&str> = dtos.iter().map(|d| d.id.as_str()).collect();
                let mut seen: HashSet<String> = tx
                    .query("SELECT id FROM loaded_dtos WHERE id = ANY($1)", &[&ids])?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let mut report = LoadReport::default();
                if let Some(family) = families.first() {
                    state.alerting.refresh(&mut PgAlerts { tx: &mut *tx, family })?;
                }
                let register = state.prepared(
                    tx,
                    "INSERT INTO loaded_dtos (id, epoch, family, collector, cycle, records, loaded_at, digest)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )?;
                for (dto, family) in dtos.iter().zip(&families) {
                    if !seen.insert(dto.id.clone()) {
                        report.already_loaded += 1;
                        continue;
                    }
                    let rows = insert_dto(tx, state, family, dto, &mut created, now, &mut report)?;
                    let mut store = PgAlerts { tx: &mut *tx, family };
                    alerting::evaluate_dto(
                        &mut store,
                        state.alerting,
                        &mut overlay,
                        &family.columns,
                        dto,
                        &rows,
                        epoch,
                        &mut report,
                    )?;
                    tx.execute(
                        &register,
                        &[
                            &dto.id,
                            &(epoch as i64),
                            &dto.family,
                            &dto.collector,
                            &dto.cycle,
                            &(dto.records.len() as i64),
                            &now,
                            &&dto.digest().0[..],
                        ],
                    )?;
                    report.loaded += 1;
                }
                if report.replaced > 0 {
                    tx.execute(
                        "UPDATE meta SET value = value + $1 WHERE key = 'replaced_records'",
                        &[&(report.replaced as i64)],
                    )?;
                }
                if report.transitions > 0 {
                    alerts::bound_outbox(tx, outbox_max)?;
                }
                if pollux_failpoint::hit("repository.load.before_commit") {
                    return Err(RepoError::Injected("repository.load.before_commit"));
                }
                Ok((report, created, overlay))
            },
            // Caches learn only what committed.
            |state, (report, created, overlay)| {
                state.alerting.commit(overlay);
                for (family, devices) in created.items {
                    let known = state.items.entry(family).or_default();
                    for (device, items) in devices {
                        known.entry(device).or_default().extend(items);
                    }
                }
                state.partitions.extend(created.partitions);
                report
            },
        )
    }
}

/// Inserts one DTO's records; returns each record's `(item_id, index)` in item order.
#[allow(clippy::too_many_arguments)]
fn insert_dto(
    tx: &mut Transaction<'_>,
    state: &mut WriterState<'_>,
    family: &FamilyTables,
    dto: &Dto,
    created: &mut Created,
    now: i64,
    report: &mut LoadReport,
) -> Result<Vec<(i64, usize)>> {
    let columns: Vec<&str> = dto.metrics.iter().map(|m| family.column(m)).collect::<Result<_>>()?;
    let ids = item_ids(tx, family, dto, state.items, created, now)?;
    // One record per item and cycle: a repeat within the DTO replaces the earlier one.
    let mut by_item: HashMap<i64, usize> = HashMap::with_capacity(dto.records.len());
    for (index, id) in ids.iter().enumerate() {
        if by_item.insert(*id, index).is_some() {
            report.replaced += 1;
        }
    }
    let mut rows: Vec<(i64, usize)> = by_item.into_iter().collect();
    rows.sort_unstable();
    for &(_, index) in &rows {
        if dto.records[index].values.len() != columns.len() {
            return Err(RepoError::Db(format!("DTO {}: a record's values do not match its columns", dto.id)));
        }
    }

    let day = dto.cycle.div_euclid(DAY);
    let partition = family.raw_day(day);
    if !state.partitions.contains(&(family.number, day)) && !created.partitions.contains(&(family.number, day)) {
        super::create_partition(tx, family, day)?;
        created.partitions.push((family.number, day));
    }
    // Optimistically, nothing of this DTO is stored yet (the rule: a record comes once per
    // item and cycle): one COPY under a savepoint. Should the key refuse a row, the records
    // already stored are looked up, the COPY takes the others and the stored ones are replaced.
    let column_list: String = columns.iter().map(|c| format!(", \"{c}\"")).collect();
    let copy_sql =
        state.prepared(tx, &format!("COPY {partition} (item_id, cycle, ts{column_list}) FROM STDIN BINARY"))?;
    let types: Vec<Type> = [Type::INT8; 3].into_iter().chain(columns.iter().map(|_| Type::FLOAT8)).collect();
    let all = HashSet::new();
    let mut savepoint = tx.savepoint("records")?;
    let stored: HashSet<i64> = match copy_records(&mut savepoint, &copy_sql, &types, dto, &rows, &all) {
        Ok(()) => {
            savepoint.commit()?;
            all
        }
        Err(e) if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) => {
            drop(savepoint);
            let wanted: Vec<i64> = rows.iter().map(|r| r.0).collect();
            let stored: HashSet<i64> = tx
                .query(
                    &format!("SELECT item_id FROM {partition} WHERE cycle = $1 AND item_id = ANY($2)"),
                    &[&dto.cycle, &wanted],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            copy_records(tx, &copy_sql, &types, dto, &rows, &stored)?;
            stored
        }
        Err(e) => return Err(e.into()),
    };
    let mut values = 0;
    let mut hours = BTreeSet::new();
    for (item_id, index) in &rows {
        if !stored.contains(item_id) {
            let record = &dto.records[*index];
            values += record.values.iter().filter(|v| v.is_some()).count();
            hours.insert(Resolution::Hour.period_start(record.ts));
        }
    }
    if !stored.is_empty() {
        // Sent before under another DTO id: the later record wins, as a re-poll would, counted.
        let sets: String = columns.iter().enumerate().map(|(i, c)| format!(", \"{c}\" = ${}", i + 4)).collect();
        let update = tx.prepare(&format!("UPDATE {partition} SET ts = $3{sets} WHERE item_id = $1 AND cycle = $2"))?;
        for (item_id, index) in rows.iter().filter(|(id, _)| stored.contains(id)) {
            let record = &dto.records[*index];
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![item_id, &dto.cycle, &record.ts];
            params.extend(record.values.iter().map(|v| v as &(dyn ToSql + Sync)));
            tx.execute(&update, &params)?;
            values += record.values.iter().filter(|v| v.is_some()).count();
            hours.insert(Resolution::Hour.period_start(record.ts));
            report.replaced += 1;
        }
    }
    report.values += values;

    let widen =
        state.prepared(tx, "UPDATE family_state SET max_interval = $2 WHERE family = $1 AND max_interval < $2")?;
    tx.execute(&widen, &[&family.name, &i64::from(dto.interval)])?;
    let hours: Vec<i64> = hours.into_iter().collect();
    let pending = state.prepared(
        tx,
        "INSERT INTO rollup_pending (resolution, family, period, marked_at, touched_at)
         SELECT 'hour', $1, h, $3, $3 FROM unnest($2::bigint[]) AS h
         ON CONFLICT (resolution, period, family) DO UPDATE SET touched_at = excluded.touched_at",
    )?;
    tx.execute(&pending, &[&family.name, &hours, &now])?;
    Ok(rows)
}

/// Writes the records of `rows` not in `skip` with one binary COPY.
fn copy_records(
    tx: &mut Transaction<'_>,
    sql: &postgres::Statement,
    types: &[Type],
    dto: &Dto,
    rows: &[(i64, usize)],
    skip: &HashSet<i64>,
) -> Result<(), postgres::Error> {
    let mut copy = BinaryCopyInWriter::new(tx.copy_in(sql)?, types);
    let mut fields: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(types.len());
    for (item_id, index) in rows.iter().filter(|(id, _)| !skip.contains(id)) {
        let record = &dto.records[*index];
        fields.clear();
        fields.extend([item_id as &(dyn ToSql + Sync), &dto.cycle, &record.ts]);
        fields.extend(record.values.iter().map(|v| v as &(dyn ToSql + Sync)));
        copy.write(&fields)?;
    }
    copy.finish()?;
    Ok(())
}

/// Each record's item id, creating the items not seen before.
fn item_ids(
    tx: &mut Transaction<'_>,
    family: &FamilyTables,
    dto: &Dto,
    cache: &ItemCache,
    created: &mut Created,
    now: i64,
) -> Result<Vec<i64>> {
    let lookup = |cache: Option<&HashMap<String, HashMap<String, i64>>>, device: &str, item: &str| {
        cache.and_then(|d| d.get(device)).and_then(|i| i.get(item)).copied()
    };
    let (committed, ours) = (cache.get(&family.name), created.items.get(&family.name));
    let known = |device: &str, item: &str| lookup(committed, device, item).or_else(|| lookup(ours, device, item));
    let mut ids: Vec<Option<i64>> = dto.records.iter().map(|r| known(&r.device, &r.item)).collect();
    let missing: Vec<usize> = (0..ids.len()).filter(|&i| ids[i].is_none()).collect();
    if !missing.is_empty() {
        let devices: Vec<&str> = missing.iter().map(|&i| dto.records[i].device.as_str()).collect();
        let items: Vec<&str> = missing.iter().map(|&i| dto.records[i].item.as_str()).collect();
        tx.execute(
            "INSERT INTO items (family, device, item, first_seen)
             SELECT $1, d, i, $4 FROM unnest($2::text[], $3::text[]) AS n (d, i) ON CONFLICT DO NOTHING",
            &[&family.name, &devices, &items, &now],
        )?;
        let found = tx.query(
            "SELECT id, device, item FROM items
             WHERE family = $1 AND (device, item) IN (SELECT * FROM unnest($2::text[], $3::text[]))",
            &[&family.name, &devices, &items],
        )?;
        let mut by_name: HashMap<(String, String), i64> = HashMap::with_capacity(found.len());
        for row in found {
            by_name.insert((row.get(1), row.get(2)), row.get(0));
        }
        for i in missing {
            let record = &dto.records[i];
            let key = (record.device.clone(), record.item.clone());
            let id = *by_name.get(&key).ok_or_else(|| RepoError::Db(format!("item {key:?} was not created")))?;
            created.items.entry(family.name.clone()).or_default().entry(key.0).or_default().insert(key.1, id);
            ids[i] = Some(id);
        }
    }
    Ok(ids.into_iter().map(|id| id.expect("every id resolved")).collect())
}
