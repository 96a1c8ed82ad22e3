//! The auditor's view of the fleet: for every device, the version it runs, since when,
//! through which rollout and release, and who created and approved that rollout. One query,
//! paged by device id; served as JSON or CSV.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};
use serde::Serialize;

/// One device's line.
#[derive(Clone, Debug, Serialize, FromQueryResult, utoipa::ToSchema)]
pub struct DeviceLine {
    /// Device id.
    pub device: String,
    /// Hardware id.
    pub hardware: String,
    /// The version it reports running.
    pub version: Option<String>,
    /// When its last successful install of that version ended.
    pub since: Option<DateTime<Utc>>,
    /// The job that installed it.
    pub job: Option<String>,
    /// The release installed.
    pub release: Option<String>,
    /// The rollout, if the job belonged to one.
    pub rollout: Option<String>,
    /// The rollout's name.
    pub rollout_name: Option<String>,
    /// Token id that created the rollout (or the job).
    pub created_by: Option<String>,
    /// That token's name.
    pub created_by_name: Option<String>,
    /// Token id that approved the device's wave, when it was gated.
    pub approved_by: Option<String>,
    /// That token's name.
    pub approved_by_name: Option<String>,
}

/// Up to `limit` devices after `after` (by id), each with the install that put its version
/// there.
pub async fn lines(
    db: &impl ConnectionTrait,
    after: Option<&str>,
    limit: u64,
) -> Result<Vec<DeviceLine>, DbErr> {
    let backend = db.get_database_backend();
    let sql = "SELECT d.id AS device, d.hardware AS hardware, d.firmware_version AS version, \
         e.updated_at AS since, e.job_id AS job, j.release_id AS release, r.id AS rollout, \
         r.name AS rollout_name, j.created_by AS created_by, ct.name AS created_by_name, \
         w.approved_by AS approved_by, apr.name AS approved_by_name \
         FROM devices d \
         LEFT JOIN job_executions e ON e.device_id = d.id AND e.state = 'SUCCEEDED' \
           AND e.updated_at = (SELECT max(e2.updated_at) FROM job_executions e2 \
                               WHERE e2.device_id = d.id AND e2.state = 'SUCCEEDED') \
         LEFT JOIN jobs j ON j.id = e.job_id \
         LEFT JOIN rollouts r ON r.id = j.rollout_id \
         LEFT JOIN rollout_waves w ON w.rollout_id = r.id AND w.wave = e.wave \
         LEFT JOIN api_tokens ct ON ct.id = j.created_by \
         LEFT JOIN api_tokens apr ON apr.id = w.approved_by \
         WHERE d.id > $1 ORDER BY d.id LIMIT $2";
    DeviceLine::find_by_statement(crate::db::statement(
        backend,
        sql,
        vec![
            after.unwrap_or("").to_owned().into(),
            i64::try_from(limit).unwrap_or(i64::MAX).into(),
        ],
    ))
    .all(db)
    .await
}

/// `lines` as CSV with a header row (RFC 4180 quoting).
pub fn csv(lines: &[DeviceLine]) -> String {
    fn field(s: Option<&str>) -> String {
        let s = s.unwrap_or("");
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_owned()
        }
    }
    let mut out = String::from(
        "device,hardware,version,since,job,release,rollout,rollout_name,created_by,created_by_name,approved_by,approved_by_name\r\n",
    );
    for l in lines {
        let since = l.since.map(|t| t.to_rfc3339());
        let row = [
            Some(l.device.as_str()),
            Some(l.hardware.as_str()),
            l.version.as_deref(),
            since.as_deref(),
            l.job.as_deref(),
            l.release.as_deref(),
            l.rollout.as_deref(),
            l.rollout_name.as_deref(),
            l.created_by.as_deref(),
            l.created_by_name.as_deref(),
            l.approved_by.as_deref(),
            l.approved_by_name.as_deref(),
        ];
        out.push_str(&row.map(field).join(","));
        out.push_str("\r\n");
    }
    out
}
