//! Read-only queries, on a pooled read connection.

use super::FamilyTables;
use crate::{
    DeviceInfo, Epoch, ItemFilter, ItemInfo, LoadedDto, RepoError, Result, RollupPoint, Series, SeriesQuery, TopEntry,
    TopQuery,
};
use pollux_model::Digest;
use pollux_model::Resolution;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

const REGISTRY_COLUMNS: &str = "id, epoch, family, collector, cycle, records, loaded_at, digest, seq";

fn registry_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<LoadedDto> {
    Ok(LoadedDto {
        id: r.get(0)?,
        epoch: r.get::<_, i64>(1)? as Epoch,
        family: r.get(2)?,
        collector: r.get(3)?,
        cycle: r.get(4)?,
        records: r.get::<_, i64>(5)? as u64,
        loaded_at: r.get(6)?,
        digest: r.get::<_, Option<Vec<u8>>>(7)?.and_then(|d| Some(Digest(d.try_into().ok()?))),
    })
}

pub(crate) fn loaded_dto(c: &Connection, id: &str) -> Result<Option<LoadedDto>> {
    Ok(c.prepare_cached(&format!("SELECT {REGISTRY_COLUMNS} FROM loaded_dtos WHERE id = ?1"))?
        .query_row([id], registry_entry)
        .optional()?)
}

pub(crate) fn registry(c: &Connection, after: i64, limit: usize) -> Result<Vec<(i64, LoadedDto)>> {
    let mut stmt =
        c.prepare_cached(&format!("SELECT {REGISTRY_COLUMNS} FROM loaded_dtos WHERE seq > ?1 ORDER BY seq LIMIT ?2"))?;
    let rows = stmt.query_map(params![after, limit as i64], |r| Ok((r.get(8)?, registry_entry(r)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn claims(c: &Connection) -> Result<Vec<crate::Claim>> {
    let mut stmt = c.prepare("SELECT epoch, node, claimed_at, after_seq FROM epochs ORDER BY epoch")?;
    let rows = stmt.query_map([], |r| {
        Ok(crate::Claim {
            epoch: r.get::<_, i64>(0)? as Epoch,
            node: r.get(1)?,
            claimed_at: r.get(2)?,
            after_seq: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn raw_records(c: &Connection, family: &FamilyTables, each: &mut dyn FnMut(crate::RawRecord)) -> Result<()> {
    let cols: String = family.columns.iter().map(|c| format!(", \"{c}\"")).collect();
    let mut stmt = c.prepare(&format!(
        "SELECT i.device, i.item, r.cycle, r.ts{cols} FROM (
            SELECT item_id, cycle, ts{cols} FROM {recent} UNION ALL SELECT item_id, cycle, ts{cols} FROM {raw}) r
         JOIN items i ON i.id = r.item_id",
        recent = family.recent(),
        raw = family.raw()
    ))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let values = (0..family.columns.len()).map(|i| r.get(4 + i)).collect::<rusqlite::Result<_>>()?;
        each(crate::RawRecord { device: r.get(0)?, item: r.get(1)?, cycle: r.get(2)?, ts: r.get(3)?, values });
    }
    Ok(())
}

pub(crate) fn devices(c: &Connection) -> Result<Vec<DeviceInfo>> {
    let mut stmt =
        c.prepare("SELECT device, count(*), group_concat(DISTINCT family) FROM items GROUP BY device ORDER BY device")?;
    let rows = stmt.query_map([], |r| {
        let families: String = r.get(2)?;
        let mut families: Vec<String> = families.split(',').map(str::to_owned).collect();
        families.sort();
        Ok(DeviceInfo { name: r.get(0)?, items: r.get::<_, i64>(1)? as u64, families })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub(crate) fn items(c: &Connection, filter: &ItemFilter) -> Result<Vec<ItemInfo>> {
    let mut stmt = c.prepare_cached(
        "SELECT device, family, item, first_seen FROM items
         WHERE (?1 IS NULL OR device = ?1) AND (?2 IS NULL OR family = ?2)
         ORDER BY device, family, item LIMIT ?3 OFFSET ?4",
    )?;
    let rows = stmt
        .query_map(params![filter.device, filter.family, filter.limit as i64, filter.offset as i64], |r| {
            Ok(ItemInfo { device: r.get(0)?, family: r.get(1)?, item: r.get(2)?, first_seen: r.get(3)? })
        })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn item_id(c: &Connection, family: &str, device: &str, item: &str) -> Result<Option<i64>> {
    Ok(c.prepare_cached("SELECT id FROM items WHERE family = ?1 AND device = ?2 AND item = ?3")?
        .query_row([family, device, item], |r| r.get(0))
        .optional()?)
}

pub(crate) fn series(c: &Connection, family: &FamilyTables, q: &SeriesQuery) -> Result<Series> {
    let column = family.column(&q.metric)?;
    let Some(item) = item_id(c, &family.name, &q.device, &q.item)? else {
        return Ok(match q.resolution {
            Resolution::Raw => Series::Raw(Vec::new()),
            _ => Series::Rollup(Vec::new()),
        });
    };
    match q.resolution {
        Resolution::Raw => raw_series(c, family, column, item, q.from, q.to).map(Series::Raw),
        resolution => rollup_series(c, family, column, item, resolution, q.from, q.to).map(Series::Rollup),
    }
}

fn raw_series(
    c: &Connection,
    family: &FamilyTables,
    column: &str,
    item: i64,
    from: i64,
    to: i64,
) -> Result<Vec<(i64, f64)>> {
    let max_interval: i64 =
        c.query_row("SELECT max_interval FROM family_state WHERE family = ?1", [&family.name], |r| r.get(0))?;
    // The recent table is clustered by cycle: look the item up in each recent cycle that can
    // hold records in range, rather than scanning the cycles.
    let sql = format!(
        "SELECT ts, \"{column}\" FROM {raw}
         WHERE item_id = ?1 AND cycle > ?2 - ?5 AND cycle < ?3 AND ts >= ?2 AND ts < ?3 AND \"{column}\" IS NOT NULL
         UNION ALL
         SELECT ts, \"{column}\" FROM {recent}
         WHERE cycle IN (SELECT cycle FROM recent_cycles WHERE family = ?4 AND cycle > ?2 - ?5 AND cycle < ?3)
           AND item_id = ?1 AND ts >= ?2 AND ts < ?3 AND \"{column}\" IS NOT NULL
         ORDER BY 1",
        raw = family.raw(),
        recent = family.recent()
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let rows =
        stmt.query_map(params![item, from, to, family.name, 2 * max_interval], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn rollup_series(
    c: &Connection,
    family: &FamilyTables,
    column: &str,
    item: i64,
    resolution: Resolution,
    from: i64,
    to: i64,
) -> Result<Vec<RollupPoint>> {
    let length = resolution.length().expect("rollups have periods");
    let first = resolution.period_start(from);
    let periods = (to - first + length - 1) / length;
    if periods > 100_000 {
        return Err(RepoError::BadQuery(format!(
            "{periods} {} periods requested; narrow the range or choose a coarser resolution",
            resolution.name()
        )));
    }
    // The rollup tables are clustered by (period, item): walk the periods and look the item up
    // in each, one primary-key probe per point.
    let sql = format!(
        "WITH RECURSIVE p(x) AS (SELECT ?2 UNION ALL SELECT x + ?4 FROM p WHERE x + ?4 < ?3)
         SELECT period, \"{column}_min\", \"{column}_max\", \"{column}_sum\", \"{column}_count\"
         FROM p JOIN {table} ON period = p.x AND item_id = ?1
         WHERE \"{column}_count\" > 0 ORDER BY period",
        table = family.rollup(resolution)
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![item, first, to, length], |r| {
        // SQLite stores NaN (a sum of +inf and -inf) as NULL.
        let sum = r.get::<_, Option<f64>>(3)?.unwrap_or(f64::NAN);
        let count: i64 = r.get(4)?;
        Ok(RollupPoint {
            period: r.get(0)?,
            min: r.get(1)?,
            max: r.get(2)?,
            avg: sum / count as f64,
            count: count as u64,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub(crate) fn top(c: &Connection, family: &FamilyTables, q: &TopQuery) -> Result<Vec<TopEntry>> {
    let column = family.column(&q.metric)?;
    let hour = 3600;
    let aligned = q.from % hour == 0 && q.to % hour == 0;
    // Hourly rollups answer exactly when the range is whole hours none of which is waiting to be
    // (re)computed: every load marks its hours pending until they are rolled again.
    let rolled = aligned
        && {
            let pending: i64 = c.query_row(
            "SELECT count(*) FROM rollup_pending WHERE resolution = 'hour' AND family = ?1 AND period >= ?2 AND period < ?3",
            params![family.name, q.from, q.to],
            |r| r.get(0),
        )?;
            pending == 0
        };
    let single_period = q.to - q.from == hour;
    // The history part of the raw form names the family as ?4.
    let mut family_param = false;
    let sql = if rolled && single_period {
        // One period: no grouping, a scan of the period's rows into a top-n sorter.
        format!(
            "SELECT item_id, \"{column}_sum\" / \"{column}_count\" AS avg, \"{column}_min\", \"{column}_max\",
                    \"{column}_count\"
             FROM {table} WHERE period >= ?1 AND period < ?2 AND \"{column}_count\" > 0
             ORDER BY avg DESC NULLS LAST LIMIT ?3",
            table = family.rollup(Resolution::Hour)
        )
    } else if rolled {
        format!(
            "SELECT item_id, sum(\"{column}_sum\") / sum(\"{column}_count\") AS avg, min(\"{column}_min\"),
                    max(\"{column}_max\"), sum(\"{column}_count\")
             FROM {table} WHERE period >= ?1 AND period < ?2 AND \"{column}_count\" > 0
             GROUP BY item_id ORDER BY avg DESC NULLS LAST LIMIT ?3",
            table = family.rollup(Resolution::Hour)
        )
    } else {
        let (watermark, max_interval): (i64, i64) =
            c.query_row("SELECT watermark, max_interval FROM family_state WHERE family = ?1", [&family.name], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let span = 2 * max_interval;
        // The item-ordered history is read only when part of the range was compacted into it:
        // scanning it costs a seek per item, seconds on 100,000 items, for nothing otherwise.
        let history = if watermark > q.from - span {
            family_param = true;
            format!(
                "UNION ALL
                 SELECT item_id, \"{column}\" FROM {raw}
                 WHERE item_id IN (SELECT id FROM items WHERE family = ?4)
                   AND cycle > ?1 - {span} AND cycle < ?2 AND ts >= ?1 AND ts < ?2",
                raw = family.raw()
            )
        } else {
            String::new()
        };
        format!(
            "SELECT item_id, avg(v) AS avg, min(v), max(v), count(v) FROM (
                SELECT item_id, \"{column}\" AS v FROM {recent}
                WHERE cycle > ?1 - {span} AND cycle < ?2 AND ts >= ?1 AND ts < ?2
                {history})
             WHERE v IS NOT NULL GROUP BY item_id ORDER BY avg DESC NULLS LAST LIMIT ?3",
            recent = family.recent(),
        )
    };
    let mut stmt = c.prepare_cached(&sql)?;
    let n = q.n as i64;
    let mut args: Vec<&dyn rusqlite::ToSql> = vec![&q.from, &q.to, &n];
    if family_param {
        args.push(&family.name);
    }
    // An average of +inf and -inf is NaN, which SQLite stores as NULL: it ranks last.
    let rows: Vec<(i64, Option<f64>, f64, f64, i64)> = stmt
        .query_map(params_from_iter(args), |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
        .collect::<Result<_, _>>()?;
    let mut names = c.prepare_cached("SELECT device, item FROM items WHERE id = ?1")?;
    rows.into_iter()
        .map(|(id, avg, min, max, count)| {
            let (device, item) = names.query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(TopEntry { device, item, avg: avg.unwrap_or(f64::NAN), min, max, count: count as u64 })
        })
        .collect()
}
