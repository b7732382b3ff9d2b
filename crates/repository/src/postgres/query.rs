//! Read-only queries, on a pooled read connection.

use super::{floats, FamilyTables};
use crate::{
    DeviceInfo, Epoch, ItemFilter, ItemInfo, LoadedDto, RepoError, Result, RollupPoint, Series, SeriesQuery, TopEntry,
    TopQuery,
};
use pollux_model::{Digest, Resolution};
use postgres::types::ToSql;
use postgres::Client;

const REGISTRY_COLUMNS: &str = "id, epoch, family, collector, cycle, records, loaded_at, digest, seq";

fn registry_entry(r: &postgres::Row) -> LoadedDto {
    LoadedDto {
        id: r.get(0),
        epoch: r.get::<_, i64>(1) as Epoch,
        family: r.get(2),
        collector: r.get(3),
        cycle: r.get(4),
        records: r.get::<_, i64>(5) as u64,
        loaded_at: r.get(6),
        digest: r.get::<_, Option<Vec<u8>>>(7).and_then(|d| Some(Digest(d.try_into().ok()?))),
    }
}

pub(crate) fn loaded_dto(c: &mut Client, id: &str) -> Result<Option<LoadedDto>> {
    let row = c.query_opt(&format!("SELECT {REGISTRY_COLUMNS} FROM loaded_dtos WHERE id = $1"), &[&id])?;
    Ok(row.as_ref().map(registry_entry))
}

pub(crate) fn registry(c: &mut Client, after: i64, limit: usize) -> Result<Vec<(i64, LoadedDto)>> {
    let rows = c.query(
        &format!("SELECT {REGISTRY_COLUMNS} FROM loaded_dtos WHERE seq > $1 ORDER BY seq LIMIT $2"),
        &[&after, &(limit as i64)],
    )?;
    Ok(rows.iter().map(|r| (r.get(8), registry_entry(r))).collect())
}

pub(crate) fn claims(c: &mut Client) -> Result<Vec<crate::Claim>> {
    let rows = c.query("SELECT epoch, node, claimed_at, after_seq FROM epochs ORDER BY epoch", &[])?;
    Ok(rows
        .iter()
        .map(|r| crate::Claim {
            epoch: r.get::<_, i64>(0) as Epoch,
            node: r.get(1),
            claimed_at: r.get(2),
            after_seq: r.get(3),
        })
        .collect())
}

pub(crate) fn raw_records(c: &mut Client, family: &FamilyTables, each: &mut dyn FnMut(crate::RawRecord)) -> Result<()> {
    use postgres::fallible_iterator::FallibleIterator;
    let cols: String = family.columns.iter().map(|c| format!(", r.\"{c}\"")).collect();
    let sql = format!(
        "SELECT i.device, i.item, r.cycle, r.ts{cols} FROM {raw} r JOIN items i ON i.id = r.item_id",
        raw = family.raw()
    );
    let mut rows = c.query_raw(&sql, std::iter::empty::<i64>())?;
    while let Some(r) = rows.next()? {
        let values = (0..family.columns.len()).map(|i| r.get(4 + i)).collect();
        each(crate::RawRecord { device: r.get(0), item: r.get(1), cycle: r.get(2), ts: r.get(3), values });
    }
    Ok(())
}

pub(crate) fn devices(c: &mut Client) -> Result<Vec<DeviceInfo>> {
    let rows = c.query(
        "SELECT device, count(*), array_agg(DISTINCT family ORDER BY family) FROM items GROUP BY device ORDER BY device",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|r| DeviceInfo { name: r.get(0), items: r.get::<_, i64>(1) as u64, families: r.get(2) })
        .collect())
}

pub(crate) fn items(c: &mut Client, filter: &ItemFilter) -> Result<Vec<ItemInfo>> {
    let rows = c.query(
        "SELECT device, family, item, first_seen FROM items
         WHERE ($1::text IS NULL OR device = $1) AND ($2::text IS NULL OR family = $2)
         ORDER BY device, family, item LIMIT $3 OFFSET $4",
        &[&filter.device, &filter.family, &(filter.limit as i64), &(filter.offset as i64)],
    )?;
    Ok(rows
        .iter()
        .map(|r| ItemInfo { device: r.get(0), family: r.get(1), item: r.get(2), first_seen: r.get(3) })
        .collect())
}

pub(crate) fn series(c: &mut Client, family: &FamilyTables, q: &SeriesQuery) -> Result<Series> {
    let column = family.column(&q.metric)?;
    let item: Option<i64> = c
        .query_opt(
            "SELECT id FROM items WHERE family = $1 AND device = $2 AND item = $3",
            &[&family.name, &q.device, &q.item],
        )?
        .map(|r| r.get(0));
    let Some(item) = item else {
        return Ok(match q.resolution {
            Resolution::Raw => Series::Raw(Vec::new()),
            _ => Series::Rollup(Vec::new()),
        });
    };
    if q.resolution == Resolution::Raw {
        let span = 2 * max_interval(c, family)?;
        let rows = c.query(
            &format!(
                "SELECT ts, \"{column}\" FROM {raw}
                 WHERE item_id = $1 AND cycle > $2::bigint - $4::bigint AND cycle < $3 AND ts >= $2 AND ts < $3
                   AND \"{column}\" IS NOT NULL ORDER BY ts",
                raw = family.raw()
            ),
            &[&item, &q.from, &q.to, &span],
        )?;
        return Ok(Series::Raw(rows.iter().map(|r| (r.get(0), r.get(1))).collect()));
    }
    let length = q.resolution.length().expect("rollups have periods");
    let first = q.resolution.period_start(q.from);
    let periods = (q.to - first + length - 1) / length;
    if periods > 100_000 {
        return Err(RepoError::BadQuery(format!(
            "{periods} {} periods requested; narrow the range or choose a coarser resolution",
            q.resolution.name()
        )));
    }
    let rows = c.query(
        &format!(
            "SELECT period, \"{column}_min\", \"{column}_max\", \"{column}_sum\", \"{column}_count\" FROM {table}
             WHERE item_id = $1 AND period >= $2 AND period < $3 AND \"{column}_count\" > 0 ORDER BY period",
            table = family.rollup(q.resolution)
        ),
        &[&item, &first, &q.to],
    )?;
    Ok(Series::Rollup(
        rows.iter()
            .map(|r| {
                // A sum of +inf and -inf is NaN (NULL in a repository copied from SQLite).
                let (sum, count): (Option<f64>, i64) = (r.get(3), r.get(4));
                let sum = sum.unwrap_or(f64::NAN);
                RollupPoint {
                    period: r.get(0),
                    min: r.get(1),
                    max: r.get(2),
                    avg: sum / count as f64,
                    count: count as u64,
                }
            })
            .collect(),
    ))
}

fn max_interval(c: &mut Client, family: &FamilyTables) -> Result<i64> {
    Ok(c.query_one("SELECT max_interval FROM family_state WHERE family = $1", &[&family.name])?.get(0))
}

pub(crate) fn top(c: &mut Client, family: &FamilyTables, q: &TopQuery) -> Result<Vec<TopEntry>> {
    let column = family.column(&q.metric)?;
    let hour = 3600;
    // Hourly rollups answer exactly when the range is whole hours none of which is waiting to
    // be (re)computed.
    let rolled = q.from % hour == 0
        && q.to % hour == 0
        && c.query_one(
            "SELECT count(*) FROM rollup_pending
             WHERE resolution = 'hour' AND family = $1 AND period >= $2 AND period < $3",
            &[&family.name, &q.from, &q.to],
        )?
        .get::<_, i64>(0)
            == 0;
    let n = q.n as i64;
    // Averages are computed so that no value raises (see `floats`): a sum beyond the range is an
    // infinity, +inf and -inf together NaN, which ranks last (NULL here), as in SQLite.
    let ranked = |sum: &str, count: &str| format!("NULLIF({}, 'NaN'::float8)", floats::quotient(sum, count));
    let (sql, params): (String, Vec<&(dyn ToSql + Sync)>) = if rolled && q.to - q.from == hour {
        // One period: no grouping, the period's rows into a top-n sort.
        (
            format!(
                "SELECT item_id, {avg} AS avg, \"{column}_min\", \"{column}_max\", \"{column}_count\"
                 FROM {table} WHERE period = $1 AND \"{column}_count\" > 0 ORDER BY avg DESC NULLS LAST LIMIT $2",
                avg = ranked(&format!("\"{column}_sum\""), &format!("\"{column}_count\"")),
                table = family.rollup(Resolution::Hour)
            ),
            vec![&q.from, &n],
        )
    } else if rolled {
        (
            format!(
                "SELECT item_id, {avg} AS avg, lo, hi, n FROM (
                     SELECT item_id, {sum}, min(\"{column}_min\") AS lo, max(\"{column}_max\") AS hi,
                            sum(\"{column}_count\")::bigint AS n
                     FROM {table} WHERE period >= $1 AND period < $2 AND \"{column}_count\" > 0
                     GROUP BY item_id) parts
                 ORDER BY avg DESC NULLS LAST LIMIT $3",
                avg = ranked(&floats::sum_of("v"), "n"),
                sum = floats::sum_parts(&format!("\"{column}_sum\""), "v"),
                table = family.rollup(Resolution::Hour)
            ),
            vec![&q.from, &q.to, &n],
        )
    } else {
        let span = 2 * max_interval(c, family)?;
        (
            format!(
                "SELECT item_id, {avg} AS avg, lo, hi, n FROM (
                     SELECT item_id, {sum}, min(\"{column}\") AS lo, max(\"{column}\") AS hi, count(\"{column}\") AS n
                     FROM {raw} WHERE cycle > $1::bigint - {span} AND cycle < $2::bigint AND ts >= $1 AND ts < $2
                       AND \"{column}\" IS NOT NULL
                     GROUP BY item_id) parts
                 ORDER BY avg DESC NULLS LAST LIMIT $3",
                avg = ranked(&floats::sum_of("v"), "n"),
                sum = floats::sum_parts(&format!("\"{column}\""), "v"),
                raw = family.raw()
            ),
            vec![&q.from, &q.to, &n],
        )
    };
    let rows = c.query(
        &format!(
            "SELECT i.device, i.item, t.* FROM ({sql}) t JOIN items i ON i.id = t.item_id
             ORDER BY t.avg DESC NULLS LAST"
        ),
        &params,
    )?;
    Ok(rows
        .iter()
        .map(|r| TopEntry {
            device: r.get(0),
            item: r.get(1),
            avg: r.get::<_, Option<f64>>(3).unwrap_or(f64::NAN),
            min: r.get(4),
            max: r.get(5),
            count: r.get::<_, i64>(6) as u64,
        })
        .collect())
}
